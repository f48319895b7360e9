"""The webui experience: infotext paste-back, X/Y/Z axes, the validated API, step range, hires control, preview."""
import asyncio
import json

import pytest
import torch
from PIL import Image

import xyz_grid
from modules import infotext_utils, scripts, ui_loadsave
from sag_ext import generation, ui
from sag_ext.ui import api, settings, xyz
from sag_ext.core.params import SagParams, parse_script_args
from sag_ext.core.preview import overlay
from script_loader import load_script_module
from test_host_standin import make_p


@pytest.fixture
def script(host):
    return load_script_module().SelfAttentionGuidanceScript()


# ---- infotext ------------------------------------------------------------------------------------

ROUTES = [infotext_utils.paste_values, infotext_utils.api_values]  # paste button / PNG Info, and the API's `infotext`


def written(params: SagParams, has_hires_pass: bool = True) -> dict:
    """SAG's part of an infotext as the webui writes and parses it back: values as text."""
    return {key: str(value) for key, value in params.infotext(has_hires_pass).items()}


def pasted_args(script, route, infotext: dict) -> list:
    """The panel's values after pasting `infotext` on `route` (None: left as it was)."""
    script.ui(False)
    return route(script.infotext_fields, dict(infotext))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("params", [
    SagParams(enabled=True),
    SagParams(enabled=True, scale=-0.7, blur_sigma=3.5, threshold=1.3, start=0.1, end=0.8, hires="own", hires_scale=0.2),
    SagParams(enabled=True, scale=1.25, hires="off"),
])
def test_infotext_round_trip(script, route, params):
    got, _, _ = parse_script_args(pasted_args(script, route, written(params)))
    assert got == params


@pytest.mark.parametrize("route", ROUTES)
def test_infotext_without_sag_switches_the_panel_off(script, route):
    assert pasted_args(script, route, {"Steps": "20"}) == [False] + [None] * 7


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("infotext,want", [
    ({"SAG Guidance Scale": "0.75", "SAG Mask Threshold": "1.1"}, SagParams(True, 0.75, 2.0, 1.1)),  # the old extension
    ({"SAG Guidance Scale": "8"}, SagParams(True, 5.0)),  # its range went to 10: clamped
    ({"sag_enabled": "True", "sag_scale": "0.6", "sag_blur_sigma": "1.5", "sag_threshold": "0.9"}, SagParams(True, 0.6, 1.5, 0.9)),  # Forge
])
def test_other_implementations_keys_paste_right(script, route, infotext, want):
    got, _, _ = parse_script_args(pasted_args(script, route, infotext))
    assert got == want


def test_unreadable_sag_values_leave_the_panel_as_it_is(script):
    assert pasted_args(script, infotext_utils.api_values, {"SAG Scale": "strong"}) == [None] * 8


def test_send_to_img2img_copies_every_control(script):
    controls = script.ui(False)
    assert infotext_utils.send_to_fields(script.infotext_fields, script.paste_field_names) == controls


def test_hires_entries_only_for_a_generation_with_a_hires_pass(host, script):
    params = SagParams(enabled=True, hires="own", hires_scale=0.3)
    assert written(params, has_hires_pass=False) == {"SAG Scale": "0.5", "SAG Blur Sigma": "2.0"}
    assert written(params, has_hires_pass=True) == {"SAG Scale": "0.5", "SAG Blur Sigma": "2.0", "SAG Hires": "own",
                                                   "SAG Hires Scale": "0.3"}
    for enable_hr in (False, True):
        p = make_p(enable_hr=enable_hr)
        script.process(p, True, 0.5, 2.0, 1.0, 0.0, 1.0, "own", 0.3)
        assert ("SAG Hires Scale" in p.extra_generation_params) == enable_hr
        script.postprocess(p, None)


# ---- settings ------------------------------------------------------------------------------------

def test_settings_defaults_reach_the_panel_over_ui_config(host, script):
    """ui-config.json records the panel's values at the webui's first start and puts them back later;
    the defaults chosen in Settings must win over it, and the API's defaults (the values of a fresh
    `ui()`) must agree with the panel."""
    ui_config = {}

    def start_webui():
        controls = script.ui(False)
        loadsave = ui_loadsave.UiLoadsave(ui_config)
        for control in controls:
            loadsave.add_component(f"customscript/sag.py/txt2img/{getattr(control, 'label', '')}", control)
        return controls

    start_webui()
    host.opts.sag_default_scale, host.opts.sag_default_hires = 0.7, "off"
    shown = start_webui()
    assert (shown[1].value, shown[6].value) == (0.7, "off")
    api_defaults = [control.value for control in script.ui(False)]
    assert [control.value for control in shown] == api_defaults


def test_settings_are_with_the_sampler_parameters(host):
    settings.on_ui_settings()
    ours = {key: info for key, info in host.opts.data_labels.items() if key.startswith("sag_")}
    assert len(ours) == 6
    assert all(info.section == ("sag", "Self-Attention Guidance") and info.category_id == "sd" for info in ours.values())


# ---- X/Y/Z -------------------------------------------------------------------------------------

@pytest.fixture
def xyz_module(host):
    scripts.scripts_data[:] = [scripts.ScriptClassData(xyz_grid.Script, "xyz_grid.py", "", xyz_grid)]
    yield xyz_grid
    scripts.scripts_data.clear()
    xyz_grid.axis_options[:] = xyz_grid.axis_options[:1]


def test_axes_are_added_once(xyz_module):
    xyz.add_axes_to_script()
    ui.register_callbacks()
    load_script_module()
    labels = [option.label for option in xyz_module.axis_options]
    assert labels[1:] == ["[SAG] Enabled", "[SAG] Scale", "[SAG] Blur sigma", "[SAG] Threshold", "[SAG] Start", "[SAG] End",
                          "[PAG] Enabled", "[PAG] Scale", "[PAG] Start", "[PAG] End", "[PAG] Layers", "[PAG] CFG rescale",
                          "[SEG] Enabled", "[SEG] Scale", "[SEG] Blur sigma", "[SEG] Start", "[SEG] End", "[SEG] Layers",
                          "[SEG] CFG rescale"]
    assert xyz_module.axis_options[1].choices() == ["False", "True"]


def test_axis_values_override_the_panel_and_imply_enabled(xyz_module):
    xyz.add_axes_to_script()
    options = {option.label: option for option in xyz_module.axis_options}
    p = make_p()
    options["[SAG] Scale"].apply(p, 1.5, [1.5])
    options["[SAG] Start"].apply(p, 0.25, [0.25])
    params, _ = generation.generation_params(p, [False, 0.5, 2.0, 1.0])
    assert (params.enabled, params.scale, params.start) == (True, 1.5, 0.25)
    options["[SAG] Enabled"].apply(p, "False", ["True", "False"])
    assert generation.generation_params(p, [True])[0].enabled is False


# ---- API -----------------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ([{"scael": 0.5}], "unknown key 'scael'"),
    ([{"scale": "0.5"}], "scale must be a number, got '0.5'"),
    ([{"scale": float("nan")}], "scale must be finite"),
    ([{"blur_sigma": 11}], "blur_sigma must be within 0.0..10.0, got 11.0"),
    ([{"threshold": -1}], "threshold must be within 0.0..4.0"),
    ([{"enabled": "yes"}], "enabled must be true or false"),
    ([{"hires": "twice"}], "hires must be one of same, off, own"),
    ([{"start": 0.8, "end": 0.2}], "start (0.8) must not be after end (0.2)"),
    ([{"preview": 1}], "preview must be true or false"),
    ([True, 9.0], "scale must be within -2.0..5.0, got 9.0"),
    ([True, 0.5, 2.0, 1.0, 0.0, 1.0, "same", 0.5, "extra"], "at most 8 arguments"),
]


@pytest.mark.parametrize("args,message", BAD_ARGUMENTS)
def test_bad_api_arguments_are_named(args, message):
    body = json.dumps({"prompt": "x", "alwayson_scripts": {"Self-Attention Guidance": {"args": args}}}, allow_nan=True)
    error = api.request_error(body.encode())
    assert error is not None and message in error and error.startswith("alwayson_scripts['Self-Attention Guidance']")


@pytest.mark.parametrize("body", [
    {"prompt": "x"},
    {"alwayson_scripts": {"self-attention guidance": {"args": [True, 0.5]}}},
    {"alwayson_scripts": {"self-attention guidance": {"args": [{"scale": 0.3, "hires": "own", "preview": True}]}}},
    {"alwayson_scripts": {"other script": {"args": [{"anything": 1}]}}},
])
def test_good_api_requests_pass(body):
    assert api.request_error(json.dumps(body).encode()) is None


def run_middleware(body: bytes):
    received, sent = [], []

    async def app(scope, receive, send):
        received.append(await receive())
        received.append(await receive())  # a streaming response waits for the disconnect like this
        await send({"type": "http.response.start", "status": 200, "headers": []})

    client = iter([{"type": "http.request", "body": body, "more_body": False}, {"type": "http.disconnect"}])

    async def receive():
        return next(client)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/sdapi/v1/txt2img"}
    asyncio.run(api.ArgumentValidation(app)(scope, receive, send))
    return received, sent


def test_middleware_answers_422_before_the_endpoint_runs():
    body = json.dumps({"alwayson_scripts": {"self-attention guidance": {"args": [{"scale": 99}]}}}).encode()
    received, sent = run_middleware(body)
    assert received == [] and sent[0]["status"] == 422
    assert "scale must be within" in json.loads(sent[1]["body"])["detail"]


def test_middleware_hands_good_bodies_on_unchanged():
    body = json.dumps({"alwayson_scripts": {"self-attention guidance": {"args": [True]}}}).encode()
    received, sent = run_middleware(body)
    assert received[0]["body"] == body and received[1]["type"] == "http.disconnect" and sent[0]["status"] == 200


def test_dict_argument_reaches_the_generation(host, script):
    p = make_p()
    script.process(p, {"scale": 0.3, "threshold": 1.2})
    assert p._sag_session.params == SagParams(enabled=True, scale=0.3, threshold=1.2)
    script.postprocess(p, None)


def test_dict_argument_ignores_the_panel_defaults_the_api_appends(host, script):
    """The webui's API fills the script's remaining argument slots with the panel's defaults."""
    p = make_p()
    script.process(p, {"scale": 0.3, "preview": True}, 0.5, 2.0, 1.0, 0.0, 1.0, "same", 0.5)
    assert p._sag_session.params == SagParams(enabled=True, scale=0.3)
    script.postprocess(p, None)


def test_invalid_dict_in_a_hook_turns_sag_off_without_raising(host, script):
    p = make_p()
    script.process(p, {"scale": "high"})
    assert getattr(p, "_sag_session", None) is None


# ---- step range and hires pass -----------------------------------------------------------------------

@pytest.mark.parametrize("start,end,steps_inside", [(0.0, 1.0, 8), (0.0, 0.5, 4), (0.25, 0.75, 4), (0.5, 1.0, 4), (0.9, 1.0, 0)])
def test_degraded_passes_run_only_inside_the_range(host, script, start, end, steps_inside):
    p = make_p(timesteps=tuple(range(999, 0, -125)))  # 8 steps, progress 0, 1/8, ... 7/8
    script.process(p, True, 0.5, 2.0, 1.0, start, end)
    p.sample()
    assert p._sag_session.degraded_passes == steps_inside
    assert host.sd_model.calls.count(2) == steps_inside  # the B=2 uncond-only passes
    script.postprocess(p, None)


@pytest.mark.parametrize("hires,hires_scale,passes", [("same", 0.5, 4), ("off", 0.5, 0), ("own", 0.0, 0), ("own", 0.3, 4)])
def test_hires_pass_control(host, script, hires, hires_scale, passes):
    p = make_p()
    p.is_hr_pass = True
    script.process(p, True, 0.5, 2.0, 1.0, 0.0, 1.0, hires, hires_scale)
    p.sample()
    assert p._sag_session.degraded_passes == passes
    script.postprocess(p, None)


def test_hires_own_scale_is_used_on_the_hires_pass_only():
    params = SagParams(enabled=True, scale=0.5, hires="own", hires_scale=0.2)
    assert (params.scale_for(False), params.scale_for(True)) == (0.5, 0.2)


# ---- mask preview ----------------------------------------------------------------------------------

def test_preview_accumulates_the_mask_over_the_steps(host, script):
    from sag_ext.core.session import SagSession

    p = make_p(latent_size=(32, 24))
    script.process(p, True)
    session = p._sag_session = SagSession(SagParams(enabled=True), collect_preview=True)
    p.sample()
    share = session.take_preview()
    assert share.shape == (2, 32, 24)
    assert 0 <= share.min() and share.max() <= 1 and share.max() > 0
    steps = torch.tensor([1, 2, 3, 4]) / 4
    assert all(any(torch.isclose(value, steps).tolist()) or value == 0 for value in share.unique())
    script.postprocess(p, None)


def test_preview_picture_has_the_image_size_and_shows_the_mask():
    image = Image.new("RGB", (64, 48), (0, 0, 255))
    share = torch.zeros(6, 8)
    share[:, :4] = 1.0  # left half blurred in every step
    picture = overlay(image, share)
    assert picture.size == (64, 48)
    left, right = picture.getpixel((5, 5)), picture.getpixel((60, 40))
    assert right == (0, 0, 255) and left[0] > 100 and left[2] < 255


def test_api_preview_only_when_asked(host, script):
    p = make_p()
    p.is_api = True
    script.process(p, True)
    assert not p._sag_session.collect_preview
    script.postprocess(p, None)
    script.process(p, {"preview": True})
    assert p._sag_session.collect_preview
    script.postprocess(p, None)


def test_settings_defaults_fill_what_a_dict_leaves_out(host, script):
    host.opts.sag_default_scale, host.opts.sag_default_hires = 0.3, "off"
    p = make_p()
    script.process(p, {"blur_sigma": 1.0})
    assert p._sag_session.params == SagParams(enabled=True, scale=0.3, blur_sigma=1.0, hires="off")
    script.postprocess(p, None)
