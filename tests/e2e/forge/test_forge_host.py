"""SAG in a real Forge-family webui: the case contract on its samplers and modes, CFG 1, hires fix, the
built-in SAG (side by side, and on together with ours), PAG, paste and the X/Y/Z plot."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from e2e.sag_api import (BASE, OFF, ON, TITLE, LogWatch, check_sag_case, check_unchanged_with_one_line, decode,
                         encode, generate, inpaint_mask, options)
from harness.server import WebUIError
from e2e.test_e2e_ux import script_info

# Forge's API needs the hires pass's modules named (without them: HTTP 500 in processing.py), and its hires
# CFG defaults to 1 (no negative-prompt pass there, so nothing for SAG to do)
HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6,
         "hr_second_pass_steps": 3, "hr_additional_modules": ["Use same choices"], "hr_cfg": 5}
CHANGED_NOTHING = "[SAG] Self-Attention Guidance changed nothing in this generation"


def find_builtin(webui, prefix, img2img=False):
    """(alwayson key, number of arguments) of the host's built-in script (of txt2img, or of img2img) whose
    title starts with `prefix`, or None."""
    for info in webui.get("/sdapi/v1/script-info"):
        if info["name"].startswith(prefix) and info["is_img2img"] == img2img:
            return info["name"], len(info["args"])
    return None


def builtin(webui, prefix, img2img=False):
    """`find_builtin`, the test skipped where the host has no such script."""
    found = find_builtin(webui, prefix, img2img)
    if found is None:
        pytest.skip(f"this host has no built-in {prefix!r}")
    return found


def with_scripts(payload, scripts: dict):
    payload = dict(payload)
    payload["alwayson_scripts"] = {name: {"args": args} for name, args in scripts.items()}
    return payload


def images_of(webui, payload):
    result = webui.post("/sdapi/v1/txt2img", payload)
    return [decode(image) for image in result["images"]], json.loads(result["info"])["infotexts"]


def ours_beside_the_builtin(webui, case, record_property, label="", on=ON):
    """SAG off, ours and the host's built-in SAG at the same seed and parameters (`case`, SAG's arguments
    `on`): the mean |ours - built-in| and |ours - off| over the images (of 255), recorded and printed, and the
    built-in's infotexts."""
    name, count = builtin(webui, "selfattentionguidance")
    off, _ = images_of(webui, with_scripts(case, {}))
    ours, _ = images_of(webui, with_scripts(case, {TITLE: on}))
    theirs, infotexts = images_of(webui, with_scripts(case, {name: on[:count]}))
    ours_vs_theirs, ours_vs_off = (float(np.mean([np.abs(a - b).mean() for a, b in zip(ours, other)]))
                                   for other in (theirs, off))
    record_property("mean_abs_ours_vs_builtin", ours_vs_theirs)
    record_property("mean_abs_ours_vs_off", ours_vs_off)
    print(f"\n{label}mean |ours - built-in| = {ours_vs_theirs:.4f}, |ours - off| = {ours_vs_off:.4f} (of 255)")
    return ours_vs_theirs, ours_vs_off, infotexts


# ---- the contract -------------------------------------------------------------------------------

SAMPLERS = ["Euler a", "DPM++ 2M", "DDIM", "UniPC"]
# Samplers with an adaptive step size choose their own number of model calls, and SAG's mask, a threshold
# that positions cross between two nearby latents, multiplies them (ours as the built-in SAG); on the CPU at
# these sizes that is over 10 minutes a generation: test_forge_gpu.py runs them on a GPU. reForge's ODE
# samplers are adaptive too (up to 250 solver steps).
ADAPTIVE_SAMPLERS = ["DPM adaptive", "ODE (Bosh3)", "ODE (Fehlberg2)", "ODE (Adaptive Heun)", "ODE (Dopri5)",
                     "ODE Custom"]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_txt2img_contract_on_the_hosts_samplers(webui, sampler):
    check_sag_case(webui, "txt2img", {**BASE, "sampler_name": sampler})


def test_txt2img_contract_on_every_other_sampler_the_host_lists(webui, record_property):
    contract_on_every_other_sampler(webui, record_property, ON)


def contract_on_every_other_sampler(webui, record_property, on_args):
    """The contract of the methods `on_args` on each sampler of the host's own list beyond SAMPLERS (one test,
    since the list comes from the running host), without the off generation after on, which the cases of
    SAMPLERS check; a sampler that fails with the methods off too (an error, or a flat image from NaN
    latents) is the host's and is only named."""
    names = [sampler["name"] for sampler in webui.get("/sdapi/v1/samplers")
             if sampler["name"] not in SAMPLERS + ADAPTIVE_SAMPLERS]
    failures, failing_without_us = {}, []
    for name in names:
        case = {**BASE, "sampler_name": name}
        try:
            check_sag_case(webui, "txt2img", case, on_args=on_args, off_after_on=False)
        except TimeoutError as error:  # the webui still works on it: no other request for this sampler
            failures[name] = f"no answer within the API's limit ({error})"
        except (AssertionError, WebUIError) as error:
            try:
                off, _ = generate(webui, "txt2img", case, OFF)
            except WebUIError:
                off = None
            if off is None or off[0].std() == 0:  # an error, or a flat image (NaN latents) without the methods
                failing_without_us.append(name)
                continue
            failures[name] = str(error)[:400]
    record_property("samplers", names)
    record_property("failing_without_the_methods", failing_without_us)
    print(f"\n{len(names) - len(failures) - len(failing_without_us)} of {len(names)} further samplers passed; "
          f"failing with the methods off too (the host's): {failing_without_us or 'none'}")
    assert not failures, "\n".join(f"{name}: {error}" for name, error in failures.items())


def test_batch_of_two_with_a_step_range(webui):
    check_sag_case(webui, "txt2img", {**BASE, "batch_size": 2}, images_expected=2,
                   on_args=[True, 0.8, 2.0, 1.0, 0.25, 1.0])


@pytest.mark.parametrize("hires,hires_scale", [("same", 0.0), ("own", 0.3)])
def test_hires_fix(webui, hires, hires_scale):
    on, _ = check_sag_case(webui, "txt2img", {**BASE, **HIRES}, on_args=[True, 0.8, 2.0, 1.0, 0.0, 1.0, hires, hires_scale])
    assert on[0].shape[:2] == (192, 192)


def test_hires_pass_off_changes_only_the_base_pass(webui):
    off, _ = generate(webui, "txt2img", {**BASE, **HIRES}, OFF)
    base_only, infos = generate(webui, "txt2img", {**BASE, **HIRES}, [True, 0.8, 2.0, 1.0, 0.0, 1.0, "off"])
    both, _ = generate(webui, "txt2img", {**BASE, **HIRES}, ON)
    assert "SAG Hires: off" in infos[0]
    assert np.abs(base_only[0] - off[0]).max() > 0 and np.abs(base_only[0] - both[0]).max() > 0


def gradient(size=128):
    from PIL import Image
    return Image.fromarray((np.indices((size, size)).sum(0) % 256).astype(np.uint8)).convert("RGB")


def test_img2img(webui):
    check_sag_case(webui, "img2img", {**BASE, "init_images": [encode(gradient())], "denoising_strength": 0.7})


def test_inpaint(webui):
    check_sag_case(webui, "img2img", {**BASE, "init_images": [encode(gradient())], "mask": inpaint_mask(),
                                      "denoising_strength": 0.8})


def beside_a_builtin_that_may_refuse_cfg_1(webui, case, record_property, label, on=ON):
    """Ours beside the built-in SAG at a CFG of 1: reForge's built-in (ComfyUI's node) runs the uncond pass
    there as ours does, and the images agree; Forge's refuses that pass (its console line "requires CFG >
    1"), which is only printed."""
    if find_builtin(webui, "selfattentionguidance") is None:
        return
    watch = LogWatch(webui)
    ours_vs_theirs, ours_vs_off, _ = ours_beside_the_builtin(webui, case, record_property, label, on=on)
    refusal = re.search(r"Self Attention Guidance.*requires .*CFG > 1", watch.new_text())
    if refusal:
        print(f"{label}the built-in SAG refused: {refusal.group(0)}")
        return
    assert ours_vs_theirs < 0.05 * ours_vs_off


# Forge's console line ("Skipping unconditional conditioning when CFG = 1. Negative Prompts are ignored."), or
# newer Forge Neo's ("Negative Prompts are Ignored when CFG = 1.0"), lower-cased
DROPS_THE_NEGATIVE_PROMPT = "negative prompts are ignored"


def test_cfg_1_guided_as_the_reference(webui, record_property):
    """At CFG 1 SAG has the host run the negative-prompt pass, as ComfyUI's node does: the contract, and
    the built-in SAG's image where it acts at CFG 1 (reForge). A host that drops the negative prompt's
    conditioning at CFG 1 (Forge) leaves SAG nothing to work from: the image unchanged, one line."""
    case = {**BASE, "cfg_scale": 1}
    watch = LogWatch(webui)
    generate(webui, "txt2img", case, OFF)
    if DROPS_THE_NEGATIVE_PROMPT in watch.new_text().lower():
        log = check_unchanged_with_one_line(webui, "txt2img", case)
        assert CHANGED_NOTHING in log and "CFG 1" in log
        return
    check_sag_case(webui, "txt2img", case)
    beside_a_builtin_that_may_refuse_cfg_1(webui, case, record_property, "CFG 1: ")


def test_skip_early_cfg_steps_stay_skipped_and_unguided(webui):
    """Skip early CFG turns every step of a CFG-5 pass into CFG 1: the user's skip stands (no negative-prompt
    pass), so SAG corrects nothing and says why once."""
    with options(webui, skip_early_cond=1.0):
        log = check_unchanged_with_one_line(webui, "txt2img", BASE)
    assert CHANGED_NOTHING in log and "CFG 1" in log


def test_hires_fix_at_the_apis_hires_cfg_beside_the_builtin_sag(webui, record_property):
    """256 px, hires x1.5 (Latent, 2 steps, denoise 0.6), with the API's default hires CFG (1 in these
    hosts), SAG 0.75: SAG acts in the hires pass too, as reForge's built-in SAG does."""
    case = {**BASE, "width": 256, "height": 256, **HIRES}
    case.pop("hr_cfg")
    beside_a_builtin_that_may_refuse_cfg_1(webui, case, record_property, "hires at CFG 1: ", on=[True, 0.75, 2.0, 1.0])


# ---- beside the host's own guidance ---------------------------------------------------------------

def test_ours_and_the_builtin_sag_side_by_side(webui, record_property):
    """Same seed and parameters, where both reshape the mask alike (SD1.5 at 128 px: a 2x2 grid, ratio 8):
    the images are (nearly) the same; the difference is recorded."""
    ours_vs_theirs, ours_vs_off, infotexts = ours_beside_the_builtin(webui, BASE, record_property)
    assert "sag_enabled: True" in infotexts[0]
    assert ours_vs_off > 1.0
    assert ours_vs_theirs < 0.05 * ours_vs_off


def test_builtin_sag_on_too_makes_ours_step_aside(webui):
    name, count = builtin(webui, "selfattentionguidance")
    theirs, _ = images_of(webui, with_scripts(BASE, {name: ON[:count]}))
    watch = LogWatch(webui)
    both, infotexts = images_of(webui, with_scripts(BASE, {name: ON[:count], TITLE: ON}))
    log = watch.new_text()
    np.testing.assert_array_equal(both[0], theirs[0])
    assert log.count("[SAG]") == 1 and "built-in Self-Attention Guidance is on as well" in log
    assert "SAG Scale" not in infotexts[0] and "sag_enabled: True" in infotexts[0]


def test_ours_with_the_builtin_pag(webui):
    """PAG replaces the middle block's attn1 in its own pass: ours still reads the host's q and k."""
    name, count = builtin(webui, "perturbedattentionguidance")
    pag = [True, 3.0, 0.0, 0.0, 1.0][:count]
    watch = LogWatch(webui)
    pag_only, _ = images_of(webui, with_scripts(BASE, {name: pag}))
    both, infotexts = images_of(webui, with_scripts(BASE, {name: pag, TITLE: ON}))
    log = watch.new_text()
    assert "Traceback" not in log and "[SAG]" not in log
    assert np.abs(both[0] - pag_only[0]).max() > 0 and "SAG Scale: 0.8" in infotexts[0]


# ---- paste and X/Y/Z ----------------------------------------------------------------------------

INFOTEXT_HEAD = "a photo of a cat\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, CFG scale: 5, Seed: 11, "


def pasted(ui_webui, keys: str) -> str:
    """The infotext of a txt2img request whose API `infotext` field holds `keys`."""
    result = ui_webui.post("/sdapi/v1/txt2img", {**BASE, "infotext": INFOTEXT_HEAD + keys})
    return json.loads(result["info"])["infotexts"][0]


def test_our_keys_paste_and_the_builtins_keys_stay_the_builtins(ui_webui):
    try:
        pasted(ui_webui, "Clip skip: 1")
    except WebUIError as error:  # Forge dfdcbab6: modules/api/api.py's get_field_value, isinstance on list[str]
        pytest.skip(f"this host's API `infotext` field fails without SAG too: {str(error)[:200]}")
    assert "SAG Scale: 0.7, SAG Blur Sigma: 1.5" in pasted(ui_webui, "SAG Scale: 0.7, SAG Blur Sigma: 1.5")
    assert "SAG Scale" not in pasted(ui_webui, "sag_enabled: True, sag_scale: 0.8")


def test_xyz_plot_with_a_sag_scale_axis(webui):
    xyz_args = script_info(webui, "x/y/z plot")["args"]
    choices = xyz_args[0]["choices"]
    assert {"[SAG] Enabled", "[SAG] Scale", "[SAG] Blur sigma", "[SAG] Threshold", "[SAG] Start", "[SAG] End"} <= set(choices)
    # the hosts order the later arguments differently: the axes first, then the others by their labels
    args = [choices.index("[SAG] Scale"), "0, 0.4, 0.8", [], 0, "", [], 0, "", []]
    later = {"Include Sub Images": True, "Draw legend": True}
    args += [later.get(arg["label"], arg["value"]) for arg in xyz_args[len(args):]]
    result = webui.post("/sdapi/v1/txt2img", {**BASE, "script_name": "x/y/z plot", "script_args": args})
    grid, *cells = [decode(image) for image in result["images"]]
    infotexts = json.loads(result["info"])["infotexts"][1:]
    assert len(cells) == 3
    assert np.abs(cells[0] - cells[1]).max() > 0 and np.abs(cells[1] - cells[2]).max() > 0
    assert [("SAG Scale: 0.4" in text, "SAG Scale: 0.8" in text) for text in infotexts] == [(False, False), (True, False), (False, True)]
