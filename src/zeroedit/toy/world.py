"""A generator of images with exact ground truth, where editing quality can be measured offline.

Objects (circle, square, triangle, star, ring) of a few saturated colours, two sizes and free positions, on
unsaturated backgrounds (plain, gradient, stripes, texture), rendered in one of three styles that play the
role of visual domains: "photo" (filled, shaded), "sketch" (outlines only, on paper) and "painting" (filled,
with brush noise). Backgrounds are grey-scale on purpose: every saturated pixel belongs to an object, which
keeps the detectors (detect.py) simple and exact. Everything is deterministic from a seed.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (235, 200, 30),
          "purple": (150, 55, 200)}
SHAPES = ("circle", "square", "triangle", "star", "ring")
SIZES = {"small": 0.26, "large": 0.40}  # diameter as a fraction of the image side
BACKGROUNDS = ("plain", "gradient", "stripes", "texture")
STYLES = ("photo", "sketch", "painting")
WHERE = {"plain": "a plain background", "gradient": "a gradient", "stripes": "stripes", "texture": "a texture"}
SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class Obj:
    """One object: shape, colour name, size name and centre (x, y) as fractions of the image side."""
    shape: str
    color: str
    size: str
    x: float
    y: float

    def phrase(self) -> str:
        return f"{self.color} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    style: str
    seed: int = 0

    def caption(self, colors: bool = True) -> str:
        """'a red circle and a blue square on stripes, sketch style' ('a circle and a square …' without colours)."""
        things = " and ".join(f"a {o.phrase()}" if colors else f"a {o.shape}" for o in self.objects)
        return f"{things} on {WHERE[self.background]}, {self.style} style"


def sample_scene(seed: int, n_objects: int | None = None) -> Scene:
    """A random scene: 1–2 objects (or `n_objects`) of distinct shapes placed without overlap."""
    rng = np.random.RandomState(seed)
    n = n_objects or int(rng.randint(1, 3))
    shapes = rng.choice(SHAPES, size=n, replace=False)
    colors = rng.choice(list(COLORS), size=n, replace=n > len(COLORS))
    objects: list[Obj] = []
    for shape, color in zip(shapes, colors):
        size = str(rng.choice(list(SIZES)))
        for _ in range(100):  # rejection sampling: keep objects apart and inside the image
            r = SIZES[size] / 2
            x, y = rng.uniform(r + 0.02, 1 - r - 0.02, size=2)
            if all(math.hypot(x - o.x, y - o.y) > r + SIZES[o.size] / 2 + 0.02 for o in objects):
                break
        objects.append(Obj(str(shape), str(color), size, round(float(x), 3), round(float(y), 3)))
    return Scene(tuple(objects), str(rng.choice(BACKGROUNDS)), str(rng.choice(STYLES)), seed)


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon of a shape in pixels (None for the round ones, drawn as ellipses)."""
    if shape == "square":
        s = r * 0.86
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, obj: Obj, side: int, fill, outline, width: int):
    cx, cy, r = obj.x * side, obj.y * side, SIZES[obj.size] * side / 2
    polygon = _outline(obj.shape, cx, cy, r)
    if polygon is not None:
        draw.polygon(polygon, fill=fill, outline=outline, width=width)
    elif obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
    else:  # ring: a thick annulus (its hole shows the background)
        thickness = r * 0.42
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill if fill is not None else outline,
                     width=int(thickness) if fill is not None else width)
        if fill is None:
            inner = r - thickness
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), outline=outline, width=width)


def object_mask(obj: Obj, size: int) -> np.ndarray:
    """Exact boolean mask (size × size) of where the object is (a ring's hole excluded)."""
    side = size * SUPERSAMPLE
    canvas = Image.new("L", (side, side), 0)
    _draw_shape(ImageDraw.Draw(canvas), obj, side, fill=255, outline=None, width=0)
    return np.asarray(canvas.resize((size, size), Image.BOX)) >= 128


def _background(kind: str, style: str, side: int, rng: np.random.RandomState) -> np.ndarray:
    base = 235.0 if style == "sketch" else float(rng.uniform(120, 200))
    yy, xx = np.mgrid[0:side, 0:side] / side
    if kind == "plain":
        grey = np.full((side, side), base)
    elif kind == "gradient":
        grey = base - 60 + 120 * (xx * 0.5 + yy * 0.5) if style != "sketch" else 255 - 40 * yy
    elif kind == "stripes":
        period = side / 8
        band = (np.floor(yy * side / period) % 2 == 0)
        grey = np.where(band, base - 35, base + 25) if style != "sketch" else np.where(
            (yy * side % period) < SUPERSAMPLE * 1.5, 120.0, 245.0)
    else:  # texture: smooth random blobs
        noise = rng.rand(9, 9)
        grey = np.asarray(Image.fromarray((noise * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC),
                          dtype=np.float64)
        grey = base - 40 + 80 * grey / 255 if style != "sketch" else 255 - 0.25 * (255 - grey) * (grey < 90)
    return np.repeat(np.clip(grey, 0, 255)[..., None], 3, axis=2)


def render(scene: Scene, size: int = 128) -> tuple[Image.Image, list[np.ndarray]]:
    """Draw a scene: (RGB image, one exact boolean mask per object)."""
    rng = np.random.RandomState(scene.seed + 7)
    side = size * SUPERSAMPLE
    canvas = Image.fromarray(_background(scene.background, scene.style, side, rng).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        color = COLORS[obj.color]
        if scene.style == "sketch":
            _draw_shape(draw, obj, side, fill=None, outline=color, width=3 * SUPERSAMPLE)
        else:
            _draw_shape(draw, obj, side, fill=color, outline=None, width=0)
    image = canvas.resize((size, size), Image.BOX)
    if scene.style == "photo":  # soft shading: light from the top left
        yy, xx = np.mgrid[0:size, 0:size] / size
        shade = 1.08 - 0.16 * (xx + yy) / 2
        image = Image.fromarray(np.clip(np.asarray(image) * shade[..., None], 0, 255).astype(np.uint8))
    elif scene.style == "painting":  # brush noise and a slight blur
        noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, 14, (size, size, 1))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return image, [object_mask(obj, size) for obj in scene.objects]
