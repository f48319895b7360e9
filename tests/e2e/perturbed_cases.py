"""PAG's and SEG's cases every host runs (A1111: test_e2e_perturbed.py; the Forge family:
forge/test_forge_perturbed.py, which import them): the case contract, dict arguments with a batch, img2img
and inpainting, CFG 1, their rows in the webui's own UNet call against a call of their own, the 422s and
blocks the model lacks."""
from __future__ import annotations

import numpy as np
import pytest

from e2e.neighbours.neighbourhood import gradient
from e2e.sag_api import BASE, OFF, PAG, SEG, TITLE, LogWatch, check_sag_case, generate, inpaint_mask
from harness.server import WebUIError

PAG_ON = [True, 3.0]
SEG_ON = [{"scale": 3.0, "blur_sigma": -1}]
BOTH = {PAG: PAG_ON, SEG: SEG_ON}
#: the methods the GPU contracts check in half precision (SEG at the two sigmas of the paper)
HALF_PRECISION_METHODS = pytest.mark.parametrize(
    "methods", [{PAG: PAG_ON}, {SEG: [{"blur_sigma": -1}]}, {SEG: [{"blur_sigma": 10}]}, {PAG: PAG_ON, SEG: [True, 3.0]}],
    ids=["pag", "seg", "seg_sigma_10", "pag_seg"])


@pytest.mark.parametrize("methods", [{PAG: PAG_ON}, {SEG: SEG_ON}, {SEG: [True, 3.0, 0.0, 1.0, "same", 3.0, "m0,u0", 0.0, "full", 1.0]},
                                     BOTH, {TITLE: [True, 0.8], **BOTH}],
                         ids=["pag", "seg", "seg_sigma_1_two_blocks", "pag_seg", "sag_pag_seg"])
def test_contract(webui, methods):
    check_sag_case(webui, "txt2img", BASE, on_args=methods)


def test_batch_of_two_with_dict_arguments(webui):
    check_sag_case(webui, "txt2img", {**BASE, "batch_size": 2}, images_expected=2,
                   on_args={PAG: [{"scale": 2.0, "start": 0.25, "rescale": 0.5}], SEG: [{"layers": "m0,u1"}]})


def test_img2img_and_inpaint(webui):
    img2img = {**BASE, "init_images": [gradient()], "denoising_strength": 0.7}
    check_sag_case(webui, "img2img", img2img, on_args=BOTH)
    check_sag_case(webui, "img2img", {**img2img, "mask": inpaint_mask()}, on_args={PAG: PAG_ON})


def test_cfg_1_still_guided(webui):
    """PAG and SEG need no negative-prompt pass: at CFG 1 they still guide, as the references do."""
    check_sag_case(webui, "txt2img", {**BASE, "cfg_scale": 1}, on_args=BOTH)


def in_call_against_separate(webui, case, record_property, label, half_precision=False):
    """PAG+SEG with their rows in the webui's own UNet call and (the setting off) in a call of their own: the
    same images but for float rounding in a larger batch. In half precision the larger batch rounds the
    host's own rows differently too, and random-weight models carry that on to whole images: the control
    there is the same call with the rows at a negligible scale, against off. The mean differences (of 255)
    are recorded and printed."""
    def run(scale, in_call=True):
        methods = {PAG: [{"scale": scale}], SEG: [{"scale": scale}]} if scale else {}
        settings = {"override_settings": {"pag_in_webui_call": in_call}, "override_settings_restore_afterwards": True}
        return np.stack(generate(webui, "txt2img", {**case, **settings}, methods)[0])

    off = run(0)
    watch = LogWatch(webui)
    in_call = run(3.0)
    log = watch.new_text()
    assert "could not carry" not in log and "Traceback" not in log, log[-3000:]
    separate = run(3.0, in_call=False)
    difference, effect = (float(np.abs(in_call - other).mean()) for other in (separate, off))
    rounding = float(np.abs(run(1e-4) - off).mean()) if half_precision else 0.0
    for name, value in (("in_call_vs_separate", difference), ("effect", effect), ("batch_rounding", rounding)):
        record_property(f"mean_abs_{name}_{label}", value)
    print(f"\nPAG+SEG, {label}: mean |in call - separate| = {difference:.4f}, |on - off| = {effect:.4f}"
          + (f", |rows at scale 1e-4 - off| = {rounding:.4f}" if half_precision else "") + " (of 255)")
    assert effect > 0
    assert difference < max(0.1 * effect, 2 * rounding) if half_precision else difference <= 0.01 * effect


@pytest.mark.parametrize("batch", [1, 2])
def test_rows_in_the_webui_call_give_the_separate_pass_image(webui, batch, record_property):
    in_call_against_separate(webui, {**BASE, "width": 256, "height": 256, "batch_size": batch}, record_property,
                             f"batch {batch}")


@pytest.mark.parametrize("title,args,field", [(PAG, [{"layers": "q1"}], "layers"), (SEG, [{"blur_sigma": "x"}], "blur_sigma"),
                                              (PAG, [{"rescale_mode": "half"}], "rescale_mode")])
def test_bad_arguments_answer_422(webui, title, args, field):
    with pytest.raises(WebUIError) as error:
        generate(webui, "txt2img", BASE, args, title)
    assert "422" in str(error.value) and field in str(error.value)


def test_layers_the_model_lacks_step_aside_with_one_line(webui):
    off, _ = generate(webui, "txt2img", BASE, OFF)
    watch = LogWatch(webui)
    on, infotexts = generate(webui, "txt2img", BASE, [{"layers": "d9"}], PAG)
    log = watch.new_text()
    np.testing.assert_array_equal(on[0], off[0])
    assert log.count("[PAG]") == 1 and "d9: this model has" in log and "PAG Scale" not in infotexts[0]
