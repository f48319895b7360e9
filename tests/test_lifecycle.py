"""Hooks and callbacks over a generation's life: success, SAG's own errors, interrupts, foreign errors, reloads."""
import logging

import pytest
import torch

from script_loader import load_script_module
from modules import processing, script_callbacks, shared
from test_host_standin import OFF, ON, hooks_on, make_p


@pytest.fixture
def script(host):
    return load_script_module().SelfAttentionGuidanceScript()


@pytest.fixture
def fresh(host, script):
    """Images of a fresh host, to compare later generations with."""
    return {"on": processing.process_images(make_p(), script, ON), "off": processing.process_images(make_p(), script, OFF)}


def fail_calls(host, should_fail):
    """Makes apply_model raise on the calls `should_fail(call_index, batch)` picks."""
    original, counter = host.sd_model.apply_model, iter(range(10 ** 6))

    def apply_model(x, t, cond):
        if should_fail(next(counter), x.shape[0]):
            raise RuntimeError("injected failure")
        return original(x, t, cond)

    host.sd_model.apply_model = apply_model
    return lambda: setattr(host.sd_model, "apply_model", original)


def test_error_in_the_degraded_pass_stops_sag_for_that_generation_only(host, script, fresh, caplog):
    restore = fail_calls(host, lambda index, batch: batch == 2)  # the first degraded pass (B = 2 rows)
    p = make_p()
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        image = processing.process_images(p, script, ON)
    restore()
    assert torch.equal(image, fresh["off"])  # it failed before any correction: the SAG-off image
    assert "SAG Scale" not in p.infotext  # ... so its infotext does not claim SAG either
    assert caplog.text.count("off for this generation") == 1 and "injected failure" in caplog.text
    assert hooks_on(host) == 0 and not script_callbacks.reported_errors
    assert torch.equal(processing.process_images(make_p(), script, ON), fresh["on"])


def test_degraded_pass_answered_with_other_rows_steps_aside(host, script, caplog):
    """As ControlNet's inpaint_only does: it blends every UNet output with latents it cached at the CFG
    batch's size, so SAG's pass over the one uncond row comes back with two rows, which would broadcast
    into the correction and double the batch. SAG must stop before using it."""
    original = host.sd_model.apply_model

    def apply_model(x, t, cond):
        out = original(x, t, cond)
        return out.repeat(2, 1, 1, 1) if x.shape[0] == 1 else out  # one image: SAG's pass has 1 row

    off = processing.process_images(make_p(batch=1), script, OFF)
    host.sd_model.apply_model = apply_model
    p = make_p(batch=1)
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        image = processing.process_images(p, script, ON)
    host.sd_model.apply_model = original
    assert torch.equal(image, off) and "SAG Scale" not in p.infotext
    assert caplog.text.count("off for this generation") == 1 and "UnexpectedPassOutput" in caplog.text
    assert hooks_on(host) == 0 and not script_callbacks.reported_errors


def corrupt_passes(host, should_corrupt):
    """Makes the degraded passes (calls of 2 rows) that `should_corrupt(pass_index)` picks return inf and NaN."""
    original, passes = host.sd_model.apply_model, iter(range(10 ** 6))

    def apply_model(x, t, cond):
        out = original(x, t, cond)
        if x.shape[0] == 2 and should_corrupt(next(passes)):
            out = out.clone()
            out[0], out[1, 0] = float("inf"), float("nan")
        return out

    host.sd_model.apply_model = apply_model
    return lambda: setattr(host.sd_model, "apply_model", original)


def test_non_finite_first_pass_gives_exactly_the_off_image(host, script, fresh, caplog):
    restore = corrupt_passes(host, lambda index: True)
    p = make_p()
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        image = processing.process_images(p, script, ON)
    restore()
    assert torch.equal(image, fresh["off"]) and "SAG Scale" not in p.infotext
    assert caplog.text.count("[SAG]") == 1 and "NonFiniteCorrection" in caplog.text
    assert hooks_on(host) == 0 and not script_callbacks.reported_errors


@pytest.mark.parametrize("bad_pass", [1, 3])  # a middle step, the last step
def test_non_finite_later_pass_leaves_that_step_and_the_later_ones_uncorrected(host, script, caplog, bad_pass):
    """Decided on the device, without a host sync: the image is exactly that of SAG ending before the bad step."""
    ending_before = processing.process_images(make_p(), script, ON + [0.0, bad_pass / len(make_p().timesteps)])
    restore = corrupt_passes(host, lambda index: index == bad_pass)
    p = make_p()
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        image = processing.process_images(p, script, ON)
    restore()
    assert torch.equal(image, ending_before) and p.infotext["SAG Scale"] == ON[1]
    assert caplog.text.count("[SAG]") == 1 and "NonFiniteCorrection" in caplog.text


def test_error_after_some_corrections_keeps_the_infotext(host, script):
    restore = fail_calls(host, lambda index, batch: index == 5)  # the third step's degraded pass
    p = make_p()
    processing.process_images(p, script, ON)
    restore()
    assert p._sag_session is None and p.infotext["SAG Scale"] == ON[1]  # steps 1-2 were guided
    assert hooks_on(host) == 0


def test_interrupt_removes_the_hooks(host, script, fresh):
    def interrupt_after_second_step(params):
        if params.sampling_step == 1:
            shared.state.interrupted = True

    script_callbacks.on_cfg_after_cfg(interrupt_after_second_step)
    processing.process_images(make_p(), script, ON)
    script_callbacks.remove_callbacks_for_function(interrupt_after_second_step)
    shared.state.interrupted = False
    assert hooks_on(host) == 0
    assert torch.equal(processing.process_images(make_p(), script, ON), fresh["on"])


@pytest.mark.parametrize("next_args", [ON, OFF])
def test_foreign_error_skipping_postprocess_is_cleaned_up_by_the_next_generation(host, script, fresh, next_args):
    restore = fail_calls(host, lambda index, batch: index == 2)  # the host's own UNet call of the second step
    with pytest.raises(RuntimeError, match="injected"):
        processing.process_images(make_p(), script, ON)
    restore()
    assert hooks_on(host) == 4  # postprocess never ran: the webui does not call it after an exception
    image = processing.process_images(make_p(), script, next_args)
    assert torch.equal(image, fresh["on" if next_args[0] else "off"])
    assert hooks_on(host) == 0


def test_script_unload_removes_leftover_hooks(host, script):
    restore = fail_calls(host, lambda index, batch: index == 2)
    with pytest.raises(RuntimeError):
        processing.process_images(make_p(), script, ON)
    restore()
    script_callbacks.script_unloaded_callback()
    assert hooks_on(host) == 0


def test_callbacks_are_registered_once_per_process(host):
    for _ in range(3):  # "Reload custom script bodies" re-executes the script file
        load_script_module()
    for kind in ("cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "script_unloaded"):
        assert len(script_callbacks.callback_map[kind]) == 1, kind


def test_both_tabs_add_the_correction_once(host, fresh):
    module = load_script_module()
    txt2img, img2img = module.SelfAttentionGuidanceScript(), module.SelfAttentionGuidanceScript()
    processing.process_images(make_p(), img2img, ON)
    assert torch.equal(processing.process_images(make_p(), txt2img, ON), fresh["on"])


def test_infotext_only_when_enabled(host, script):
    p = make_p()
    processing.process_images(p, script, [True, 0.5, 2.0, 1.0])
    assert p.extra_generation_params == {"SAG Scale": 0.5, "SAG Blur Sigma": 2.0}
    processing.process_images(p, script, [True, 0.7, 3.0, 0.9])
    assert p.extra_generation_params == {"SAG Scale": 0.7, "SAG Blur Sigma": 3.0, "SAG Threshold": 0.9}
    processing.process_images(p, script, OFF)  # an X/Y/Z cell reuses the same dict
    assert p.extra_generation_params == {}


def test_short_api_argument_list_takes_the_defaults(host, script):
    from sag_ext.core.params import DEFAULTS

    p = make_p()
    script.process(p, True)
    assert p._sag_session.params == DEFAULTS.__class__(enabled=True)
    script.postprocess(p, None, True)


def test_bad_arguments_are_clamped_or_refused_with_a_message(host, script, caplog):
    p = make_p()
    with caplog.at_level(logging.WARNING, logger="sd_webui_sag"):
        script.process(p, True, 9.0, -1.0, 1.0)
        assert (p._sag_session.params.scale, p._sag_session.params.blur_sigma) == (5.0, 0.0)
        script.postprocess(p, None)
        script.process(p, True, "strong")
    assert "scale 9.0 is outside -2.0..5.0, using 5.0" in caplog.text
    assert "scale must be a number" in caplog.text and p._sag_session is None


def test_the_script_file_declares_one_script_per_method(host):
    """The webui registers every Script subclass in the file's namespace: a shared base class that were one
    would be a second "Self-Attention Guidance", which the API's script name reaches instead of SAG's."""
    from modules import scripts

    classes = scripts.script_classes(load_script_module())
    assert sorted(cls().title() for cls in classes) == ["Perturbed-Attention Guidance", "Self-Attention Guidance",
                                                        "Smoothed Energy Guidance"]


def test_console_lines_show_where_the_host_silences_warnings(capsys):
    """A host that sets the root logger to ERROR (Forge Neo 6e1e0d5's default) still shows a method's line."""
    import logging

    from sag_ext.core import console
    from sag_ext.core.params import SagParams

    root = logging.getLogger()
    handler = logging.StreamHandler()  # writes to the current sys.stderr, which capsys holds
    saved = root.level, root.handlers[:]
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR)
    try:
        console.report_off(SagParams.METHOD, "a reason")
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    assert "[SAG] Self-Attention Guidance is off for this generation: a reason" in capsys.readouterr().err
