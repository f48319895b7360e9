"""The real UI in headless Chromium (Playwright driving Debian's `chromium`): the SAG panel in both tabs,
toggling and sliders, pasting an infotext, a generation with SAG on, SAG's settings page filed under
"Stable Diffusion" in the Settings tab; PAG's and SEG's panels, and pasting their keys then generating.
Screenshots go to artifacts/e2e/."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("SAG_E2E_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts" / "e2e"))
ID = "script_{tab}_selfattention_guidance_{name}"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INFOTEXT = ("a lighthouse at dusk\nSteps: 4, Sampler: Euler a, CFG scale: 5, Seed: 3, Size: 128x128, "
            "SAG Scale: 0.9, SAG Blur Sigma: 1.5, SAG Threshold: 0.9")  # 0.9 masks part of the 2x2 grid: SAG acts


@pytest.fixture(scope="module")
def page(ui_webui):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(ui_webui.base_url, timeout=300_000)
        page.wait_for_selector("#txt2img_generate", timeout=300_000)
        yield page
        browser.close()


def open_tab(page, tab):
    page.locator("#tabs > .tab-nav button", has_text=tab).first.click()
    page.wait_for_selector(f"#tab_{tab}", state="visible")


def number_input(page, tab, name):
    return page.locator(f"#{ID.format(tab=tab, name=name)} input[type=number]")


def enabled_box(page, tab):
    return page.locator(f"#{ID.format(tab=tab, name='enabled')}-visible-checkbox")


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_panel_in_both_tabs(page, tab):
    open_tab(page, tab)
    accordion = page.locator(f"#{ID.format(tab=tab, name='enabled')}")
    accordion.scroll_into_view_if_needed()
    assert accordion.is_visible() and "Self-Attention Guidance" in accordion.inner_text()
    assert not enabled_box(page, tab).is_checked()
    label = f"#{ID.format(tab=tab, name='scale')} span[data-testid=block-info]"
    page.wait_for_function(f"() => document.querySelector('{label}')?.title.includes('Strength of the guidance')",
                           timeout=10_000)  # javascript/sag_hints.js, applied by the webui's hints.js
    accordion.locator(".label-wrap").first.click()  # opening the accordion switches SAG on
    assert enabled_box(page, tab).is_checked()
    page.locator(f"#{ID.format(tab=tab, name='advanced')} .label-wrap").first.click()
    number_input(page, tab, "hires_scale").wait_for(state="visible")
    values = {name: float(number_input(page, tab, name).input_value())
              for name in ("scale", "blur_sigma", "threshold", "start", "end", "hires_scale")}
    assert values == {"scale": 0.5, "blur_sigma": 2.0, "threshold": 1.0, "start": 0.0, "end": 1.0, "hires_scale": 0.5}
    accordion.screenshot(path=str(ARTIFACTS / f"panel-{tab}.png"))  # the defaults (docs/panel.png is txt2img's)
    number_input(page, tab, "scale").fill("0.7")
    number_input(page, tab, "scale").press("Enter")
    assert float(number_input(page, tab, "scale").input_value()) == 0.7
    enabled_box(page, tab).click()  # the header's checkbox switches it off and leaves the panel open
    assert not enabled_box(page, tab).is_checked()


def test_paste_infotext_then_generate(page):
    tab = "txt2img"
    open_tab(page, tab)
    page.locator("#txt2img_prompt textarea").fill(INFOTEXT)
    page.locator("#txt2img_tools #paste").click()
    page.wait_for_function(f"() => document.querySelector('#{ID.format(tab=tab, name='scale')} input[type=number]').value == '0.9'",
                           timeout=30_000)
    assert enabled_box(page, tab).is_checked()
    assert float(number_input(page, tab, "blur_sigma").input_value()) == 1.5
    assert float(number_input(page, tab, "threshold").input_value()) == 0.9

    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => document.querySelector('#html_info_txt2img')?.innerText.includes('SAG Scale: 0.9')",
                           timeout=300_000)
    page.screenshot(path=str(ARTIFACTS / "txt2img-generated.png"), full_page=True)
    assert page.locator("#txt2img_gallery img").count() >= 1


# The Settings tab's side list: the webui's javascript/settings.js puts a <span class="settings-category"> before the
# first section button of each category (opts._categories, from Options.dumpjson); the sections that follow it, up to
# the next such span, are that category's. Each section button with the category heading it sits under:
SETTINGS_GROUPS = """() => {
    let category = null;
    return Array.from(document.querySelectorAll('#settings > div > button, #settings > div > span.settings-category'))
        .flatMap(x => x.tagName == 'SPAN' ? (category = x.textContent.trim(), []) : [[x.textContent.trim(), category]]);
}"""


def test_settings_section_under_stable_diffusion(page):
    """on_ui_settings registers SAG's settings with category_id="sd": its section is listed with the webui's
    own "Stable Diffusion" section under the "Stable Diffusion" category, not under "Uncategorized" at the end."""
    page.locator("#tabs > .tab-nav button", has_text="Settings").first.click()
    page.wait_for_selector("#tab_settings", state="visible")
    page.wait_for_selector("#settings span.settings-category", state="attached", timeout=30_000)
    groups = dict(page.evaluate(SETTINGS_GROUPS))
    assert groups.get("Stable Diffusion") == "Stable Diffusion", groups  # the layout is what this test reads
    assert groups.get("Self-Attention Guidance") == "Stable Diffusion", groups  # not "Uncategorized"
    button = page.locator("#settings > div > button", has_text="Self-Attention Guidance")
    button.click()
    page.wait_for_selector("#settings_sag", state="visible")
    assert page.locator("#settings_sag").get_by_text("shown in the panel").count() >= 1
    page.locator("#settings > div").first.screenshot(path=str(ARTIFACTS / "settings-categories.png"))


PERTURBED_IDS = {"PAG": "script_{tab}_perturbedattention_guidance_{name}", "SEG": "script_{tab}_smoothed_energy_guidance_{name}"}
PERTURBED_TITLES = {"PAG": "Perturbed-Attention Guidance", "SEG": "Smoothed Energy Guidance"}


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
@pytest.mark.parametrize("method", ["PAG", "SEG"])
def test_perturbed_panels_in_both_tabs(page, tab, method):
    """PAG's and SEG's panels: their accordions, off until opened, the defaults under Advanced (layers `m0`)."""
    open_tab(page, tab)
    element = PERTURBED_IDS[method].format

    accordion = page.locator(f"#{element(tab=tab, name='enabled')}")
    accordion.scroll_into_view_if_needed()
    assert accordion.is_visible() and PERTURBED_TITLES[method] in accordion.inner_text()
    box = page.locator(f"#{element(tab=tab, name='enabled')}-visible-checkbox")
    assert not box.is_checked()
    accordion.locator(".label-wrap").first.click()
    assert box.is_checked()
    page.locator(f"#{element(tab=tab, name='advanced')} .label-wrap").first.click()
    layers = page.locator(f"#{element(tab=tab, name='layers')} textarea, #{element(tab=tab, name='layers')} input").first
    layers.wait_for(state="visible")
    values = {name: float(page.locator(f"#{element(tab=tab, name=name)} input[type=number]").input_value())
              for name in ("scale", "start", "end", "hires_scale")}
    assert values == {"scale": 3.0, "start": 0.0, "end": 1.0, "hires_scale": 3.0} and layers.input_value() == "m0"
    accordion.screenshot(path=str(ARTIFACTS / f"panel-{method.lower()}-{tab}.png"))
    box.click()
    assert not box.is_checked()


def test_paste_pag_and_seg_then_generate(page):
    """An infotext with PAG's and SEG's keys switches both panels on with its values; the generation's
    infotext carries them."""
    open_tab(page, "txt2img")
    infotext = ("a lighthouse at dusk\nSteps: 4, Sampler: Euler a, CFG scale: 5, Seed: 3, Size: 128x128, "
                "PAG Scale: 2.5, SEG Scale: 2, SEG Blur Sigma: 10")
    page.locator("#txt2img_prompt textarea").fill(infotext)
    page.locator("#txt2img_tools #paste").click()
    pag, seg = (PERTURBED_IDS[method].format(tab="txt2img", name="{name}") for method in ("PAG", "SEG"))
    page.wait_for_function(f"() => document.querySelector('#{pag.format(name='scale')} input[type=number]').value == '2.5'",
                           timeout=30_000)
    assert page.locator(f"#{pag.format(name='enabled')}-visible-checkbox").is_checked()
    assert page.locator(f"#{seg.format(name='enabled')}-visible-checkbox").is_checked()
    assert float(page.locator(f"#{seg.format(name='blur_sigma')} input[type=number]").input_value()) == 10.0
    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => document.querySelector('#html_info_txt2img')?.innerText.includes('PAG Scale: 2.5')",
                           timeout=300_000)
    assert "SEG Scale: 2" in page.evaluate("() => document.querySelector('#html_info_txt2img').innerText")
    page.locator("#txt2img_prompt textarea").fill(infotext.split(", PAG")[0])  # without their keys: both off again
    page.locator("#txt2img_tools #paste").click()
    page.wait_for_function(f"() => !document.querySelector('#{pag.format(name='enabled')}-visible-checkbox').checked",
                           timeout=30_000)
    assert not page.locator(f"#{seg.format(name='enabled')}-visible-checkbox").is_checked()
