"""The app end to end in a real headless Chromium (issue 18): upload the demo's background and reference, paint
the region with the brush, run compose and wait for the output image and its stats.

Playwright's Python package drives Debian's `chromium` (`apt-get install chromium`; `.ci/run` installs it when
missing) through `executable_path`: `playwright install` (a browser download) is never needed.
"""
import os

import pytest

CHROMIUM = os.environ.get("ZEROEDIT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}: apt-get install "
                                "chromium (.ci/run does), or set ZEROEDIT_CHROMIUM to a Chromium binary")
pytest.importorskip("gradio", reason="the app needs gradio: pip install 'zeroedit[app]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (zeroedit[test])")

from zeroedit import runner  # noqa: E402


@pytest.fixture(scope="module")
def page(app_url):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(app_url)
            page.wait_for_selector("#compose-run", timeout=60_000)
            yield page
        finally:
            browser.close()


def paint(page, editor: str, width: int = 80, height: int = 60):
    """Two crossing brush strokes over the middle of an ImageEditor's canvas (the brush is the active tool after
    an upload); compose takes the painted mask's bounding box. Few mouse events: Chromium renders each one in
    software, which is slow on a busy CPU."""
    box = page.locator(f"{editor} canvas").last.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for sign in (1, -1):
        page.mouse.move(cx - width / 2, cy - sign * height / 2)
        page.mouse.down()
        page.mouse.move(cx + width / 2, cy + sign * height / 2, steps=3)
        page.mouse.up()


def test_compose_in_chromium(page):
    page.locator("#compose-background input[type=file]").set_input_files(str(runner.asset("background.png")))
    page.locator("#compose-reference input[type=file]").set_input_files(str(runner.asset("reference.png")))
    page.locator("#compose-background canvas").last.wait_for()
    paint(page, "#compose-background")
    page.locator("#compose-prompt textarea").fill("a red ball on a hill")
    page.locator("#compose-steps input").fill("3")
    page.locator("#compose-run").click()
    stats = page.locator("#compose-stats")
    stats.get_by_text("sample-evaluations").wait_for(timeout=90_000)
    image = page.locator("#compose-result img").first
    image.wait_for(timeout=30_000)
    assert "6 UNet calls" in stats.inner_text()  # 3 inversion + 3 sampling steps
    handle = image.element_handle()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=handle, timeout=30_000)
    assert page.evaluate("(img) => img.naturalWidth", handle) == 256
    files = page.locator("#compose-files").inner_text().replace("\n", "")
    assert "compose.png" in files and "compose.json" in files and ".zip" in files
    links = [a.get_attribute("href") for a in page.locator("#compose-files a").all()]
    sidecar = page.request.get(next(h for h in links if h and h.endswith("compose.json"))).json()
    assert sidecar["args"]["guidance_scale"] is None  # the empty "auto" field, not 0
    assert sidecar["stats"]["params"]["guidance_scale"] == 5.0 and sidecar["args"]["region"] == "region.png"


def test_bad_input_shows_the_message_not_a_traceback(page):
    page.locator("#translate-tab-button, button[role=tab]:has-text('translate')").first.click()
    page.locator("#translate-run").click()
    toast = page.get_by_text("image: upload an image (or paste one) first.")
    toast.first.wait_for(timeout=30_000)
    assert "Traceback" not in page.content()


def test_translate_as_the_form_starts(page):
    """The translate form as it starts, with only an image, a prompt and 3 steps typed: its empty "auto" fields
    reach the method as None, so it injects with its own defaults (0.8 and 0.5 of the steps, guidance 7.5, the
    reference negative prompt), not 0 or ''."""
    from zeroedit.methods.pnp import REFERENCE_NEGATIVE
    page.locator("#translate-tab-button, button[role=tab]:has-text('translate')").first.click()
    page.locator("#translate-image input[type=file]").set_input_files(str(runner.asset("cat.png")))
    page.locator("#translate-prompt textarea").fill("a dog")
    page.locator("#translate-steps textarea").fill("3")
    page.locator("#translate-run").click()
    page.locator("#translate-stats").get_by_text("sample-evaluations").wait_for(timeout=90_000)
    links = [a.get_attribute("href") for a in page.locator("#translate-files a").all()]
    params = page.request.get(next(h for h in links if h and h.endswith("translate.json"))).json()["stats"]["params"]
    assert (params["steps"], params["feature_steps"], params["attention_steps"]) == (3, 2, 1)
    assert params["guidance_scale"] == 7.5 and params["negative_prompt"] == REFERENCE_NEGATIVE
