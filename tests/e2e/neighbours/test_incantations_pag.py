"""Perturbed-Attention Guidance and Smoothed Energy Guidance from Incantations (v0xie/sd-webui-incantations)."""
from __future__ import annotations

import numpy as np
import pytest

from e2e.neighbours.neighbourhood import BOTH_ORDERS, assert_load_order, check_alongside, needs, with_script
from e2e.sag_api import BASE, OFF, ON, PAG, SEG, TITLE, LogWatch, generate


pytestmark = pytest.mark.e2e

INCANTATIONS_TITLE = "Incantations"
# Incantations is one always-on script whose arguments are those of its submodules, in order: Smoothed
# Energy Guidance [active, blur_sigma, start_step, end_step], Self-guided CFG [active, scale, rate_min,
# rate_max, rate_clamp, start_step, end_step, r], then PAG [active, scale, start_step, end_step,
# cfg_interval_enable, cfg_schedule, cfg_interval_low, cfg_interval_high, sanf]; the rest (T2I-Zero,
# Incantations itself) keep their UI defaults. PAG at scale 3 on every step.
PAG_ARGS = [False, 11.0, 0, 150,
            False, 1.0, 0.8, 3.0, 0.0, 0, 150, 4,
            True, 3.0, 0, 150, False, "Constant", 0.0, 100.0, False]


@BOTH_ORDERS
@needs("incantations")
def test_incantations_pag(neighbourhood):
    """Perturbed-Attention Guidance (Incantations): PAG adds a third, perturbed pass of the cond batch in
    cfg_denoiser and replaces, with forward hooks, the output of the very middle-block `attn1` SAG hooks
    (self-attention swapped for identity, i.e. its `to_v`) while that pass runs."""
    webui = neighbourhood
    assert_load_order(webui, INCANTATIONS_TITLE)
    check_alongside(webui, "PAG", BASE, with_script(BASE, INCANTATIONS_TITLE, PAG_ARGS),
                    infotext_has=["PAG Active: True", "PAG Scale: 3"])


@BOTH_ORDERS
@needs("incantations")
def test_ours_step_aside_for_incantations_pag_and_seg(neighbourhood):
    """Incantations' PAG and SEG on with ours: never twice, and its SEG blurs the query of the second half of
    every UNet call's rows in a step, our passes' too: each of ours steps aside with one line, the image is
    Incantations' alone, its infotext keys (PAG Scale, SEG Blur Sigma: ours by name) left as it wrote them."""
    webui = neighbourhood
    theirs = with_script(BASE, INCANTATIONS_TITLE, [True, 3.0, 0, 150] + PAG_ARGS[4:])  # their SEG on too
    alone, _ = generate(webui, "txt2img", theirs, OFF)
    watch = LogWatch(webui)
    both, infotexts = generate(webui, "txt2img", theirs, {TITLE: ON, PAG: [True, 3.0], SEG: [{"scale": 3.0}]})
    log = watch.new_text()
    np.testing.assert_array_equal(both[0], alone[0])
    assert [log.count(f"[{tag}]") for tag in ("SAG", "PAG", "SEG")] == [1, 1, 1], log[-3000:]
    assert log.count("sd-webui-incantations is on as well") == 3 and "Traceback" not in log
    assert "PAG Scale: 3" in infotexts[0] and "SEG Blur Sigma: 3" in infotexts[0]
    assert "SAG Scale" not in infotexts[0] and "SEG Scale" not in infotexts[0]
