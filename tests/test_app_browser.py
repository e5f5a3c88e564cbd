"""The app end to end in a real headless Chromium (issues 18, 26): upload the demo's background and reference, paint
the region with the brush, run compose and wait for the output image (whole, not cropped) and its stats; a bad
input or a text file named .png is zeroedit's message in the status line; Stop shows where the run stopped and
clears the previous result; a page closed mid-run stops its run.

Playwright's Python package drives Debian's `chromium` (`apt-get install chromium`; `.ci/run` installs it when
missing) through `executable_path`: `playwright install` (a browser download) is never needed.
"""
import logging
import os
import re

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
    assert page.locator("#compose-status").inner_text().startswith("Done")
    handle = image.element_handle()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=handle, timeout=30_000)
    assert page.evaluate("(img) => img.naturalWidth", handle) == 256
    assert page.evaluate("(img) => getComputedStyle(img).objectFit", handle) == "contain"  # the whole image
    files = page.locator("#compose-files").inner_text().replace("\n", "")
    assert "compose.png" in files and "compose.json" in files and ".zip" in files
    links = [a.get_attribute("href") for a in page.locator("#compose-files a").all()]
    sidecar = page.request.get(next(h for h in links if h and h.endswith("compose.json"))).json()
    assert sidecar["args"]["guidance_scale"] is None  # the empty "auto" field, not 0
    assert sidecar["stats"]["params"]["guidance_scale"] == 5.0 and sidecar["args"]["region"] == "region.png"


def translate_tab(page):
    page.locator("#translate-tab-button, button[role=tab]:has-text('translate')").first.click()


def test_bad_input_shows_the_message_not_a_traceback(page):
    """No image: zeroedit's message in the status line; no output panel shows Gradio's "Error"."""
    translate_tab(page)
    page.locator("#translate-run").click()
    status = page.locator("#translate-status")
    status.get_by_text("image: upload an image (or paste one) first.").wait_for(timeout=30_000)
    assert status.inner_text().startswith("Input error")
    assert "Traceback" not in page.content()
    for panel in ("#translate-result", "#translate-files", "#translate-picture"):
        assert "Error" not in page.locator(panel).inner_text()


def test_a_text_file_named_png_gets_zeroedits_message(page, tmp_path):
    translate_tab(page)
    (tmp_path / "notes.png").write_text("not a picture\n")
    page.locator("#translate-image input[type=file]").set_input_files(str(tmp_path / "notes.png"))
    page.locator("#translate-run").click()
    page.locator("#translate-status").get_by_text("'notes.png' is not a readable image").wait_for(timeout=30_000)
    assert "upstream app" not in page.content()
    page.locator("#translate-image button[aria-label='Remove Image']").click()

def test_translate_as_the_form_starts(page):
    """The translate form as it starts, with only an image, a prompt and 3 steps typed: its empty "auto" fields
    reach the method as None, so it injects with its own defaults (0.8 and 0.5 of the steps, guidance 7.5, the
    reference negative prompt), not 0 or ''."""
    from zeroedit.methods.pnp import REFERENCE_NEGATIVE
    translate_tab(page)
    page.locator("#translate-image input[type=file]").set_input_files(str(runner.asset("cat.png")))
    page.locator("#translate-prompt textarea").fill("a dog")
    page.locator("#translate-steps textarea").fill("3")
    page.locator("#translate-run").click()
    page.locator("#translate-stats").get_by_text("sample-evaluations").wait_for(timeout=90_000)
    links = [a.get_attribute("href") for a in page.locator("#translate-files a").all()]
    params = page.request.get(next(h for h in links if h and h.endswith("translate.json"))).json()["stats"]["params"]
    assert (params["steps"], params["feature_steps"], params["attention_steps"]) == (3, 2, 1)
    assert params["guidance_scale"] == 7.5 and params["negative_prompt"] == REFERENCE_NEGATIVE


def test_stop_shows_where_it_stopped_and_clears_the_previous_result(page):
    """After a finished run (its image, stats and files on show), a 150-step run stopped in its sampling: the
    status line says "Cancelled at step N of 150", the image, stats and files are gone (not the previous run's)."""
    translate_tab(page)
    page.locator("#translate-image input[type=file]").set_input_files(str(runner.asset("cat.png")))
    page.locator("#translate-prompt textarea").fill("a dog")
    page.locator("#translate-steps textarea").fill("2")
    page.locator("#translate-run").click()
    page.locator("#translate-stats").get_by_text("sample-evaluations").wait_for(timeout=90_000)
    assert page.locator("#translate-result img").count() > 0
    page.locator("#translate-steps textarea").fill("150")
    page.locator("#translate-run").click()
    page.get_by_text(re.compile(r"translate: step")).first.wait_for(timeout=120_000)  # the progress, sampling
    page.locator("#translate-stop").click()
    status = page.locator("#translate-status")
    status.get_by_text(re.compile(r"Cancelled at step \d+ of 150")).wait_for(timeout=60_000)
    assert "nothing was saved" in status.inner_text()
    assert page.locator("#translate-result img").count() == 0
    assert "sample-evaluations" not in page.locator("#translate-stats").inner_text()
    assert page.locator("#translate-files a").count() == 0


def test_a_page_closed_mid_run_stops_its_run(page, caplog):
    """A second user closes the page while their run is in its inversion: the run stops (the server logs why)
    and this page's next run goes through."""
    caplog.set_level(logging.INFO, logger="zeroedit.app")
    other = page.context.browser.new_page(viewport={"width": 1280, "height": 1600})  # another user
    other.goto(page.url)
    other.wait_for_selector("#compose-run", timeout=60_000)
    translate_tab(other)
    other.locator("#translate-image input[type=file]").set_input_files(str(runner.asset("cat.png")))
    other.locator("#translate-prompt textarea").fill("a dog")
    other.locator("#translate-steps textarea").fill("300")
    other.locator("#translate-run").click()
    other.get_by_text(re.compile(r"translate: inversion")).first.wait_for(timeout=120_000)
    other.close()
    page.locator("#invert-tab-button, button[role=tab]:has-text('invert')").first.click()
    page.locator("#invert-image input[type=file]").set_input_files(str(runner.asset("cat.png")))
    page.locator("#invert-steps input").fill("2")
    page.locator("#invert-run").click()
    page.locator("#invert-stats").get_by_text("PSNR").wait_for(timeout=120_000)
    stopped = [r.getMessage() for r in caplog.records if "its client left" in r.getMessage()]
    assert len(stopped) == 1 and re.search(r"translate cancelled at step 0 of 300", stopped[0]), stopped
