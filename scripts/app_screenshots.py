"""Screenshots of every tab of `zeroedit app` (docs/app-<tab>.png), each after a run on the embedded toy model
and toy-world inputs, taken in headless Chromium through Playwright (Debian's `chromium`; no browser download).

    python scripts/app_screenshots.py [--out docs] [--chromium /usr/bin/chromium] [--steps 20]
"""
import argparse
import re
import socket
import tempfile
import time
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from zeroedit import app as zapp
from zeroedit import runner
from zeroedit.demo import TOY_STEPS, toy_inputs

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def paint(page, editor: str, image_size: int, box):
    """One dab of the brush at the centre of `box` (x0, y0, x1, y1 in image pixels) of an ImageEditor showing a
    square image of `image_size` px, centred in its canvas at the zoom its toolbar reads (e.g. "450%"). compose
    takes the painted mask's bounding box; the brush's default radius (~16 px on a 64 px toy image) sets its size."""
    canvas = page.locator(f"{editor} canvas").last.bounding_box()
    zoom = float(page.locator(editor).get_by_text(re.compile(r"^\d+%$")).first.inner_text().rstrip("%")) / 100
    side = image_size * zoom
    left, top = canvas["x"] + (canvas["width"] - side) / 2, canvas["y"] + (canvas["height"] - side) / 2
    x0, y0, x1, y1 = box
    page.mouse.move(left + (x0 + x1) / 2 * zoom, top + (y0 + y1) / 2 * zoom)
    page.mouse.down()
    page.mouse.move(left + (x0 + x1) / 2 * zoom + 2, top + (y0 + y1) / 2 * zoom, steps=1)
    page.mouse.up()


def shrink(path: Path):
    """A 256-colour palette PNG: a UI screenshot loses nothing visible and takes a third of the bytes."""
    Image.open(path).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def fill(page, tab: str, inputs: dict, steps: int):
    """Inputs of one tab, from the demo's toy-world files."""
    paths = inputs["paths"]
    page.locator(f"#{tab}-steps").locator("input, textarea").first.fill(str(steps))  # a number or an "auto" field
    if tab == "compose":
        page.locator("#compose-background input[type=file]").set_input_files(paths["toy-background"])
        page.locator("#compose-reference input[type=file]").set_input_files(paths["toy-reference"])
        page.locator("#compose-background canvas").last.wait_for()
        time.sleep(1)
        case = inputs["compose"]
        paint(page, "#compose-background", 64, case.box)
        page.locator("button", has_text="advanced").first.click()  # the object's own mask, as a file
        page.locator("#compose-mask-file input[type=file]").set_input_files(paths["toy-reference-mask"])
        page.locator("#compose-prompt textarea").fill(case.prompt)
    elif tab in ("translate", "edit"):
        page.locator(f"#{tab}-image input[type=file]").set_input_files(paths["toy-scene"])
        if tab == "translate":
            page.locator("#translate-prompt textarea").fill(inputs["caption"].replace("red", "blue"))
        else:  # the toy model knows colours, not cats
            page.locator("#edit-source textarea").fill("red")
            page.locator("#edit-target textarea").fill("blue")
            page.locator("#edit-caption textarea").fill(inputs["caption"])
    elif tab == "personalize":
        page.locator("#personalize-prompt textarea").fill("a circle on stripes, photo style")
        page.locator("#personalize-phrase1 textarea").fill("circle")
        page.locator("#personalize-image1 input[type=file]").set_input_files(paths["toy-red-circle"])
    elif tab == "invert":
        page.locator("#invert-image input[type=file]").set_input_files(str(runner.asset("cat.png")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--steps", type=int, default=TOY_STEPS)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = toy_inputs(Path(tempfile.mkdtemp(prefix="zeroedit-shots-")))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = zapp.serve("toy", port=port, block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#compose-run", timeout=60_000)
            for tab in ("compose", "translate", "edit", "personalize", "invert"):
                page.locator(f"button[role=tab]:has-text('{tab}')").first.click()
                fill(page, tab, inputs, args.steps)
                page.locator(f"#{tab}-run").click()
                page.locator(f"#{tab}-stats").get_by_text("sample-evaluations").wait_for(timeout=300_000)
                page.locator(f"#{tab}-result img").first.wait_for(timeout=60_000)
                time.sleep(1)
                page.screenshot(path=str(out / f"app-{tab}.png"), full_page=True)
                shrink(out / f"app-{tab}.png")
                print(f"{out / f'app-{tab}.png'}: {page.locator(f'#{tab}-stats').inner_text()}")
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    main()
