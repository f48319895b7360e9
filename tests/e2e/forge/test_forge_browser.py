"""The real UI of a Forge-family webui in headless Chromium: tests/e2e's browser checks (the panels in both
tabs, pasting an infotext then generating, SAG's settings section), and pasting the built-in SAG's
`sag_*` keys, which leave ours off and its sliders as they were (in Forge they switch the built-in on;
reForge's built-in reads no pasted keys)."""
from __future__ import annotations

# in the order they run: the panels' defaults before pastes change them
from e2e.test_e2e_browser import (INFOTEXT, enabled_box, number_input, open_tab, page,  # noqa: F401
                                  test_panel_in_both_tabs, test_perturbed_panels_in_both_tabs,
                                  test_paste_infotext_then_generate, test_paste_pag_and_seg_then_generate,
                                  test_settings_section_under_stable_diffusion)

BUILTIN_INFOTEXT = ("a lighthouse at dusk\nSteps: 4, Sampler: Euler a, CFG scale: 5, Seed: 3, Size: 128x128, "
                    "sag_enabled: True, sag_scale: 0.8, sag_blur_sigma: 1.1, sag_threshold: 0.7")


def paste(page, infotext):
    """Paste `infotext` into txt2img and wait for its prompt to land (a prompt that differs from the one the
    webui holds: gradio 4 (Forge Neo) does not update a field with the value it already sent)."""
    prompt = infotext.splitlines()[0]
    page.locator("#txt2img_prompt textarea").fill(infotext)
    page.locator("#txt2img_tools #paste").click()
    page.wait_for_function(f"() => document.querySelector('#txt2img_prompt textarea').value == '{prompt}'",
                           timeout=30_000)


def test_pasting_the_builtin_sags_keys_leaves_ours_alone(page):
    tab = "txt2img"
    open_tab(page, tab)
    paste(page, INFOTEXT.replace("at dusk", "at dawn"))  # ours: on, scale 0.9
    page.wait_for_function("() => document.querySelector('#script_txt2img_selfattention_guidance_scale "
                           "input[type=number]').value == '0.9'", timeout=30_000)
    assert enabled_box(page, tab).is_checked()

    paste(page, BUILTIN_INFOTEXT)  # no key of ours: ours off, its sliders as they were
    page.wait_for_timeout(1000)  # the paste's outputs land together; the prompt is one of them
    assert not enabled_box(page, tab).is_checked()
    assert float(number_input(page, tab, "scale").input_value()) == 0.9
    assert float(number_input(page, tab, "blur_sigma").input_value()) == 1.5
