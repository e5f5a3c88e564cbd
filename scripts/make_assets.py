"""Draws the bundled sample images in src/zeroedit/assets (run once; the PNGs are committed).

Everything is drawn here from simple shapes: no downloaded pictures.
  background.png  a landscape-like gradient with hills        (256x256)
  reference.png   a red disc with a highlight on light grey      (128x128)
  reference_mask.png  the disc's segmentation                   (128x128)
  cat.png         a stylised cat face (ears, eyes) on blue       (128x128)
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ASSETS = Path(__file__).resolve().parents[1] / "src" / "zeroedit" / "assets"


def background(size=256):
    y = np.linspace(0, 1, size)[:, None, None]
    sky = np.array([120, 170, 235]) * (1 - y) + np.array([235, 225, 200]) * y
    img = np.repeat(sky, size, axis=1).astype(np.uint8)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    draw.ellipse((-60, 150, 180, 330), fill=(70, 130, 60))
    draw.ellipse((100, 170, 330, 350), fill=(90, 150, 70))
    draw.ellipse((190, 30, 230, 70), fill=(250, 230, 120))
    return pil


def reference(size=128):
    pil = Image.new("RGB", (size, size), (215, 215, 215))
    mask = Image.new("L", (size, size), 0)
    box = (24, 24, size - 24, size - 24)
    ImageDraw.Draw(pil).ellipse(box, fill=(200, 40, 40))
    ImageDraw.Draw(pil).ellipse((44, 40, 64, 60), fill=(240, 150, 150))
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return pil, mask


def cat(size=128):
    pil = Image.new("RGB", (size, size), (60, 90, 160))
    draw = ImageDraw.Draw(pil)
    draw.polygon([(30, 50), (40, 15), (60, 45)], fill=(230, 150, 60))
    draw.polygon([(98, 50), (88, 15), (68, 45)], fill=(230, 150, 60))
    draw.ellipse((24, 35, 104, 110), fill=(230, 150, 60))
    draw.ellipse((42, 58, 56, 72), fill=(30, 30, 30))
    draw.ellipse((72, 58, 86, 72), fill=(30, 30, 30))
    draw.polygon([(60, 82), (68, 82), (64, 88)], fill=(200, 90, 110))
    return pil


if __name__ == "__main__":
    ASSETS.mkdir(parents=True, exist_ok=True)
    background().save(ASSETS / "background.png")
    ref, mask = reference()
    ref.save(ASSETS / "reference.png")
    mask.save(ASSETS / "reference_mask.png")
    cat().save(ASSETS / "cat.png")
    print("wrote", sorted(p.name for p in ASSETS.glob("*.png")))
