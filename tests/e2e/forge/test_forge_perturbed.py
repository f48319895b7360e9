"""PAG and SEG in a real Forge-family webui: the cases every host runs (e2e/perturbed_cases.py), every
sampler, hires fix, beside the host's built-in PAG (side by side, and on together with ours), MultiDiffusion
and pamparamm's."""
from __future__ import annotations

import numpy as np
import pytest

from e2e.conftest import kept_data_dir
from e2e.forge.test_forge_host import (HIRES, SAMPLERS, builtin, contract_on_every_other_sampler, find_builtin,
                                       images_of, with_scripts)
from e2e.neighbours.neighbourhood import NEIGHBOURS
from e2e.perturbed_cases import (BOTH, PAG_ON, SEG_ON, test_batch_of_two_with_dict_arguments,  # noqa: F401
                                 test_bad_arguments_answer_422, test_cfg_1_still_guided, test_contract,
                                 test_img2img_and_inpaint, test_layers_the_model_lacks_step_aside_with_one_line,
                                 test_rows_in_the_webui_call_give_the_separate_pass_image)
from e2e.sag_api import BASE, OFF, PAG, SEG, LogWatch, check_sag_case, generate
from harness.server import ForgeWebUI


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_both_on_the_hosts_samplers(webui, sampler):
    check_sag_case(webui, "txt2img", {**BASE, "sampler_name": sampler}, on_args=BOTH)


def test_both_on_every_other_sampler_the_host_lists(webui, record_property):
    contract_on_every_other_sampler(webui, record_property, BOTH)


def test_hires_fix_same_and_own(webui):
    on, _ = check_sag_case(webui, "txt2img", {**BASE, **HIRES}, on_args={PAG: [True, 3.0, 0.0, 1.0, "own", 1.0]})
    assert on[0].shape[:2] == (192, 192)


def test_ours_and_the_builtin_pag_side_by_side(webui, record_property):
    """Same seed and parameters as Forge's built-in PAG (middle block, scale 3, all steps), at 256 px (a 4x4
    middle grid, where PAG changes more than at 2x2): the images are the same but for float rounding; the
    difference is recorded."""
    name, count = builtin(webui, "perturbedattentionguidance")
    case = {**BASE, "width": 256, "height": 256}
    off, _ = images_of(webui, with_scripts(case, {}))
    ours, infotexts = images_of(webui, with_scripts(case, {PAG: PAG_ON}))
    theirs, _ = images_of(webui, with_scripts(case, {name: [True, 3.0, 0.0, 0.0, 1.0][:count]}))
    ours_vs_theirs, ours_vs_off = (float(np.abs(ours[0] - other[0]).mean()) for other in (theirs, off))
    record_property("mean_abs_ours_vs_builtin_pag", ours_vs_theirs)
    record_property("mean_abs_ours_vs_off", ours_vs_off)
    print(f"\nPAG: mean |ours - built-in| = {ours_vs_theirs:.4f}, |ours - off| = {ours_vs_off:.4f} (of 255)")
    assert "PAG Scale: 3.0" in infotexts[0]
    assert ours_vs_off > 0 and ours_vs_theirs <= 0.01 * ours_vs_off


def test_beside_multidiffusion_per_tile(webui, record_property):
    """MultiDiffusion Integrated (tiles of 128 px, 4 to a call) runs the UNet through a wrapper of its own, so
    PAG's and SEG's rows run in a call of their own, which it tiles as it tiles the host's: the methods guide
    each tile, and ours PAG gives the built-in PAG's image there (where the host has one)."""
    name, _ = builtin(webui, "multidiffusion")
    case = with_scripts({**BASE, "width": 256, "height": 128}, {name: [True, "MultiDiffusion", 128, 128, 32, 4]})
    check_sag_case(webui, "txt2img", case, on_args={PAG: PAG_ON, SEG: SEG_ON})
    found = find_builtin(webui, "perturbedattentionguidance")
    if found is None:
        return
    off, _ = generate(webui, "txt2img", case, OFF)
    ours, _ = generate(webui, "txt2img", case, {PAG: PAG_ON})
    theirs, _ = generate(webui, "txt2img", case, {found[0]: [True, 3.0, 0.0, 0.0, 1.0][:found[1]]})
    ours_vs_theirs, ours_vs_off = (float(np.abs(ours[0] - other[0]).mean()) for other in (theirs, off))
    record_property("mean_abs_ours_vs_builtin_pag_multidiffusion", ours_vs_theirs)
    print(f"\nPAG with MultiDiffusion: mean |ours - built-in| = {ours_vs_theirs:.4f}, |ours - off| = {ours_vs_off:.4f}")
    assert ours_vs_off > 0 and ours_vs_theirs <= 0.01 * ours_vs_off


def test_builtin_pag_on_too_makes_ours_step_aside(webui):
    name, count = builtin(webui, "perturbedattentionguidance")
    theirs_args = [True, 3.0, 0.0, 0.0, 1.0][:count]
    theirs, _ = images_of(webui, with_scripts(BASE, {name: theirs_args, SEG: SEG_ON}))
    watch = LogWatch(webui)
    both, infotexts = images_of(webui, with_scripts(BASE, {name: theirs_args, PAG: PAG_ON, SEG: SEG_ON}))
    log = watch.new_text()
    np.testing.assert_array_equal(both[0], theirs[0])
    assert log.count("[PAG]") == 1 and "built-in PerturbedAttentionGuidance Integrated is on as well" in log
    assert "[SEG]" not in log and "PAG Scale" not in infotexts[0] and "SEG Scale" in infotexts[0]


# ---- beside pamparamm's sd-perturbed-attention (reForge; its scripts have our titles: a webui of its own) ----

@pytest.fixture(scope="module")
def pamparamm_webui(checkpoint_cache):
    neighbour = NEIGHBOURS["perturbed_attention"]
    if neighbour.path() is None:
        pytest.skip(neighbour.skip_reason())
    with ForgeWebUI(checkpoint_cache=checkpoint_cache, with_extension=False, extra_extensions=[neighbour.path()],
                    data_dir=kept_data_dir("pamparamm")) as server:
        yield server


def pamparamm_args(scale, layers="", rescale=0.0, rescale_mode="full", blur_sigma=None):
    """Their scripts' positional arguments (PAG: adaptive scale where SEG has its blur sigma); no hires
    override, no sigma range."""
    fifth = 0.0 if blur_sigma is None else blur_sigma
    return [True, scale, rescale, rescale_mode, fifth, "middle", 0, layers, False, 7.0, scale, 0.0, "full", fifth,
            -1.0, -1.0]


SIDE_BY_SIDE = {  # ours {title: args}, theirs {title: args}, at 256 px (a 4x4 middle grid)
    "pag": ({PAG: [{"scale": 3.0}]}, {PAG: pamparamm_args(3.0)}),
    "pag_two_blocks_rescaled": ({PAG: [{"scale": 3.0, "layers": "m0,u1", "rescale": 0.5}]},
                                {PAG: pamparamm_args(3.0, "m0,u1", rescale=0.5)}),
    "seg": ({SEG: [{"scale": 3.0, "blur_sigma": -1}]}, {SEG: pamparamm_args(3.0, blur_sigma=-1.0)}),
    "seg_sigma_1_partial": ({SEG: [{"scale": 3.0, "blur_sigma": 1.0, "rescale": 0.7, "rescale_mode": "partial"}]},
                            {SEG: pamparamm_args(3.0, rescale=0.7, rescale_mode="partial", blur_sigma=1.0)}),
    "pag_seg": ({PAG: [{"scale": 2.0}], SEG: [{"scale": 2.0}]},
                {PAG: pamparamm_args(2.0), SEG: pamparamm_args(2.0, blur_sigma=-1.0)}),
}


@pytest.mark.parametrize("case", list(SIDE_BY_SIDE))
def test_ours_and_pamparamms_side_by_side(webui, pamparamm_webui, case, record_property):
    """The same seed, model and settings in two webuis of the same host: the SAG-off images are the same,
    and ours equals pamparamm's PAG and SEG but for float rounding (the difference is recorded)."""
    ours_args, theirs_args = SIDE_BY_SIDE[case]
    payload = {**BASE, "width": 256, "height": 256}
    off, _ = images_of(webui, with_scripts(payload, {}))
    their_off, _ = images_of(pamparamm_webui, with_scripts(payload, {}))
    np.testing.assert_array_equal(off[0], their_off[0])
    ours, _ = images_of(webui, with_scripts(payload, ours_args))
    theirs, infotexts = images_of(pamparamm_webui, with_scripts(payload, theirs_args))
    ours_vs_theirs, ours_vs_off = (float(np.abs(ours[0] - other[0]).mean()) for other in (theirs, off))
    record_property("mean_abs_ours_vs_pamparamm", ours_vs_theirs)
    record_property("mean_abs_ours_vs_off", ours_vs_off)
    print(f"\n{case}: mean |ours - pamparamm's| = {ours_vs_theirs:.4f}, |ours - off| = {ours_vs_off:.4f} (of 255)")
    assert any(key in infotexts[0] for key in ("pag_enabled", "seg_enabled"))
    # with random weights the middle block's perturbation changes little (0.02 to 2 of 255 here): the test
    # is that it changes the image, and that ours changes it as theirs
    assert ours_vs_off > 0 and ours_vs_theirs <= 0.01 * ours_vs_off
