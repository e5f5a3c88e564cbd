"""Quality on the toy world (issue 8): seeded cases for every method, each run against a naive baseline on the
trained toy model (`ze.load("toy")`) and scored with the analytic detectors of detect.py.

Used by benchmarks/toy_quality.py (the tables) and tests/test_toy_quality.py (the margins). Every case is
deterministic from its index; every score is a plain number or bool, so rates are simple means.

Scoring conventions (64 px images, the toy model's size):
- an object "is there" when the detector finds its colour with at least a quarter of the expected area
  (`find`), which ignores the few stray pixels of a colour that a denoiser leaves;
- "structure kept" is the IoU of the edited object's detected (filled) mask with the source's exact mask;
- background PSNR is computed over the pixels outside the composition rectangle only.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import torch
from PIL import Image

from .detect import Detection, detect_objects, detect_style, object_style
from .world import BACKGROUNDS, COLORS, SHAPES, STYLES, WHERE, Obj, Scene, render, sample_scene

SIZE = 64
MIN_FRACTION = 0.25  # of the expected area: below it an object counts as absent


# ----------------------------------------------------------------------------------------- metrics
def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def psnr(a, b, keep: np.ndarray | None = None) -> float:
    """PSNR (dB, 8-bit range) of two RGB images, over the pixels where `keep` is True (all by default)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = (a - b) ** 2
    mse = err[keep].mean() if keep is not None else err.mean()
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def find(detections: list[Detection], color: str, expected_area: float) -> Detection | None:
    """The detection of `color` if it covers at least MIN_FRACTION of `expected_area` pixels."""
    for d in detections:
        if d.color == color and d.mask.sum() >= MIN_FRACTION * expected_area:
            return d
    return None


def detect(image) -> tuple[str, list[Detection]]:
    style = detect_style(image)
    return style, detect_objects(image, style)


def rate(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def caption(objects, background: str, style: str, colors: bool = True) -> str:
    return Scene(tuple(objects), background, style).caption(colors)


def reference_image(obj: Obj, style: str = "photo") -> Image.Image:
    """A reference of one object: large, centred, plain background, 64 px."""
    return render(Scene((Obj(obj.shape, obj.color, "large", 0.5, 0.5),), "plain", style), SIZE)[0]


def _other(rng: np.random.RandomState, options, current: str) -> str:
    return str(rng.choice([o for o in options if o != current]))


# ----------------------------------------------------------------------------------------- translate / edit
@dataclasses.dataclass
class EditCase:
    """One object in a scene, one attribute changed: kind "color", "style" or "shape", old → new."""
    scene: Scene
    image: Image.Image
    mask: np.ndarray
    kind: str
    old: str
    new: str

    @property
    def source_prompt(self) -> str:
        return self.scene.caption()

    @property
    def target_prompt(self) -> str:
        o = self.scene.objects[0]
        color, shape, style = o.color, o.shape, self.scene.style
        if self.kind == "color":
            color = self.new
        elif self.kind == "shape":
            shape = self.new
        else:
            style = self.new
        return caption([Obj(shape, color, o.size, o.x, o.y)], self.scene.background, style)


def edit_cases(n: int, kinds=("color", "style"), seed: int = 0) -> list[EditCase]:
    """n one-object scenes, alternating the edited attribute over `kinds`; the new value is drawn per case."""
    cases = []
    for i in range(n):
        scene = sample_scene(seed + i, 1)
        rng = np.random.RandomState(seed + i + 77)
        kind = kinds[i % len(kinds)]
        obj = scene.objects[0]
        old = {"color": obj.color, "shape": obj.shape, "style": scene.style}[kind]
        new = _other(rng, {"color": list(COLORS), "shape": SHAPES, "style": STYLES}[kind], old)
        image, masks = render(scene, SIZE)
        cases.append(EditCase(scene, image, masks[0], kind, old, new))
    return cases


def score_edit(case: EditCase, image) -> dict:
    """target: the new attribute is detected (colour: new colour present and old absent; shape: the object's
    shape; style: the image's style); iou: the edited object's mask vs the source's exact mask."""
    style, found = detect(image)
    area = case.mask.sum()
    color = case.new if case.kind == "color" else case.scene.objects[0].color
    obj = find(found, color, area)
    if case.kind == "color":
        target = obj is not None and find(found, case.old, area) is None
    elif case.kind == "shape":
        target = obj is not None and obj.shape == case.new
    else:
        target = style == case.new
    return dict(target=bool(target), iou=iou(obj.mask, case.mask) if obj is not None else 0.0)


def sentences(kind: str):
    """Toy-world sentences for a concept (pix2pix-zero directions): every scene description that contains it."""
    def for_concept(concept: str) -> list[str]:
        out = []
        for color, shape, background, style in itertools.product(COLORS, SHAPES, BACKGROUNDS, STYLES):
            if kind == "color":
                color = concept
            elif kind == "shape":
                shape = concept
            out.append(f"a {color} {shape} on {WHERE[background]}, {style} style")
        return sorted(set(out))
    return for_concept


def run_translate(pipe, cases: list[EditCase], steps: int = 20, guidance: float = 5.0, settings=None) -> dict:
    """PnP (the method's injection windows) vs the naive baseline: the same inversion + prompt swap with no
    injection (feature_steps=0, attention_steps=0). Returns {name: [scores]}."""
    import zeroedit as ze
    settings = settings or {"PnP (features 0.8, q/k 0.5)": dict(feature_steps=0.8, attention_steps=0.5),
                            "inversion + prompt swap": dict(feature_steps=0, attention_steps=0)}
    results = {name: [] for name in settings}
    for case in cases:
        for name, kw in settings.items():
            out = ze.translate(pipe, case.image, prompt=case.target_prompt, source_prompt=case.source_prompt,
                               negative_prompt="", steps=steps, guidance_scale=guidance, **kw)
            results[name].append(score_edit(case, out.image))
    return results


def word_swap_direction(pipe, case: EditCase):
    """Δ = E(target caption) − E(source caption): added to the caption's conditioning it gives exactly the
    swapped caption's. On a flow model (methods/pix2pix_zero_flow.py) in both of its text spaces: token states
    and the pooled vector."""
    from ..backbones import Cond, backbone_for, is_flow
    backbone = backbone_for(pipe)
    with torch.no_grad():
        a, b = backbone.encode_prompt(case.source_prompt), backbone.encode_prompt(case.target_prompt)
    delta = (b.embeds - a.embeds).float()
    return Cond(delta, (b.pooled - a.pooled).float()) if is_flow(pipe) else delta


def run_edit(pipe, cases: list[EditCase], steps: int = 20, guidance: float = 5.0, reg_steps: int = 5,
             xa_guidances: tuple[float, ...] = (0.1, 3.0)) -> dict:
    """pix2pix-zero (direction from toy-world sentences; a UNet or a flow pipeline) at each cross-attention
    guidance step in `xa_guidances` vs word swap: the same regularised inversion with the caption, then the same CFG sampling
    with the caption as negative and the caption with the word swapped as positive (`ze.edit` with
    direction = E(swapped) − E(caption) and xa_guidance = 0: no cross-attention guidance, no sentence
    direction). 0.1 is the paper's step; 3.0 was chosen for the toy's 16² latents on cases disjoint from the
    benchmark's (edit_cases(8, seed=0); at 0.1 the guidance step is ~1e-3 of the latent per element)."""
    import zeroedit as ze
    names = {xa: f"pix2pix-zero (xa_guidance {xa:g})" for xa in xa_guidances}
    results = {**{name: [] for name in names.values()}, "word swap": []}
    for case in cases:
        direction = ze.directions.build(pipe, case.old, case.new, sentences=sentences(case.kind))
        common = dict(caption=case.source_prompt, steps=steps, guidance_scale=guidance, reg_steps=reg_steps, seed=0)
        for xa, name in names.items():
            out = ze.edit(pipe, case.image, source=case.old, target=case.new, direction=direction,
                          xa_guidance=xa, **common)
            results[name].append(score_edit(case, out.image))
        out = ze.edit(pipe, case.image, source=case.old, target=case.new, direction=word_swap_direction(pipe, case),
                      xa_guidance=0.0, **common)
        results["word swap"].append(score_edit(case, out.image))
    return results


# ----------------------------------------------------------------------------------------- compose
@dataclasses.dataclass
class ComposeCase:
    background: Image.Image
    scene: Scene  # the background scene (one object)
    obj: Obj  # the object to insert
    reference: Image.Image  # the object alone, cropped to its box
    reference_mask: np.ndarray
    box: tuple[int, int, int, int]  # region (x0, y0, x1, y1) in px

    @property
    def prompt(self) -> str:
        return caption([self.scene.objects[0], self.obj], self.scene.background, self.scene.style)

    @property
    def domain(self) -> str:
        return "same" if self.scene.style == "photo" else "cross"


def compose_cases(n: int, seed: int = 0, side: int = 26) -> list[ComposeCase]:
    """Backgrounds in every style (cycled), a photo-style reference object of another shape and colour, and a
    free square region of `side` px (away from the background's object)."""
    cases = []
    for i in range(n):
        rng = np.random.RandomState(seed + i + 500)
        base = sample_scene(seed + i + 500, 1)
        scene = Scene(base.objects, base.background, STYLES[i % len(STYLES)], base.seed)
        held = scene.objects[0]
        obj = Obj(_other(rng, SHAPES, held.shape), _other(rng, list(COLORS), held.color), "large", 0.5, 0.5)
        background, _ = render(scene, SIZE)
        ref_full, ref_masks = render(Scene((obj,), "plain", "photo"), SIZE)
        ys, xs = np.nonzero(ref_masks[0])
        crop = (xs.min() - 1, ys.min() - 1, xs.max() + 2, ys.max() + 2)
        reference = ref_full.crop(crop)
        mask = ref_masks[0][crop[1]:crop[3], crop[0]:crop[2]]
        half, best = side / 2, None
        for cx, cy in rng.permutation([(x, y) for x in (16, 24, 32, 40, 48) for y in (16, 24, 32, 40, 48)]):
            gap = np.hypot(cx - held.x * SIZE, cy - held.y * SIZE)
            if gap > half + 0.2 * SIZE + 3:
                best = (int(cx - half), int(cy - half), int(cx + half), int(cy + half))
                break
        cases.append(ComposeCase(background, scene, obj, reference, mask, best or (0, 0, side, side)))
    return cases


def _placed(case: ComposeCase):
    from ..methods.tficon import place_reference
    return place_reference(case.reference, case.reference_mask, case.box, (SIZE, SIZE))


def cut_and_paste(case: ComposeCase) -> Image.Image:
    """The naive pixel baseline: the reference's object pixels pasted into the region."""
    canvas, seg, _ = _placed(case)
    out = np.where(seg[..., None], np.asarray(canvas), np.asarray(case.background))
    return Image.fromarray(out.astype(np.uint8))


def score_compose(case: ComposeCase, image) -> dict:
    """present: the object's colour is detected with its centre in the region; shape: and with its shape;
    style: the inserted object is drawn in the background's style (`object_style`: outline for sketch, brush
    noise for painting, clean fill for photo); bg_psnr: PSNR to the background outside the region."""
    _, seg, rect = _placed(case)
    _, found = detect(image)
    obj = find(found, case.obj.color, seg.sum())
    x0, y0, x1, y1 = rect
    inside = obj is not None and x0 <= obj.x * SIZE <= x1 and y0 <= obj.y * SIZE <= y1
    keep = np.ones((SIZE, SIZE), dtype=bool)
    keep[y0:y1, x0:x1] = False
    return dict(present=bool(inside), shape=bool(inside and obj.shape == case.obj.shape),
                style=bool(inside and object_style(image, case.obj.color) == case.scene.style),
                bg_psnr=psnr(image, case.background, keep))


def run_compose(pipe, cases: list[ComposeCase], steps: int = 20) -> dict:
    """TF-ICON (defaults: tau_a 0.4, tau_b 0.8) vs pixel cut-and-paste vs TF-ICON without attention injection
    (tau_a = 0). Domain "same" for photo backgrounds, else "cross" (the method's guidance per domain)."""
    import zeroedit as ze
    results = {"TF-ICON": [], "no attention injection (tau_a=0)": [], "cut-and-paste": []}
    for case in cases:
        common = dict(reference_mask=case.reference_mask, prompt=case.prompt, domain=case.domain, steps=steps, seed=0)
        out = ze.compose(pipe, case.background, case.reference, case.box, **common)
        results["TF-ICON"].append(score_compose(case, out.image))
        out = ze.compose(pipe, case.background, case.reference, case.box, tau_a=0.0, **common)
        results["no attention injection (tau_a=0)"].append(score_compose(case, out.image))
        results["cut-and-paste"].append(score_compose(case, cut_and_paste(case)))
    return results


# ----------------------------------------------------------------------------------------- personalize
@dataclasses.dataclass
class PersonalizeCase:
    objects: tuple[Obj, ...]
    background: str
    style: str
    seed: int

    @property
    def prompt(self) -> str:
        """The caption without colour words: each object's colour must come from its reference."""
        return caption(self.objects, self.background, self.style, colors=False)

    def references(self) -> dict:
        return {o.shape: reference_image(o) for o in self.objects}


def personalize_cases(n: int, objects: int, seed: int = 0) -> list[PersonalizeCase]:
    cases = []
    for i in range(n):
        rng = np.random.RandomState(seed + 1000 * objects + i)
        shapes = rng.choice(SHAPES, size=objects, replace=False)
        colors = rng.choice(list(COLORS), size=objects, replace=False)
        objs = tuple(Obj(str(s), str(c), "large", 0.5, 0.5) for s, c in zip(shapes, colors))
        cases.append(PersonalizeCase(objs, str(rng.choice(BACKGROUNDS)), "photo", seed + i))
    return cases


def score_personalize(case: PersonalizeCase, image) -> dict:
    """Per object: correct = its colour is detected on an object of its shape; confused = its colour is
    detected on an object of another reference's shape; color = its colour is detected at all."""
    _, found = detect(image)
    expected = (0.26 * SIZE) ** 2 * 0.5  # a quarter of this: a small object's area, roughly
    shapes = [o.shape for o in case.objects]
    correct, confused, present = [], [], []
    for obj in case.objects:
        d = find(found, obj.color, expected)
        present.append(d is not None)
        correct.append(d is not None and d.shape == obj.shape)
        confused.append(d is not None and d.shape != obj.shape and d.shape in shapes)
    return dict(correct=rate(correct), confused=rate(confused), color=rate(present), all_correct=all(correct))


PERSONALIZE_SETTINGS = {"MIP relevance merge": dict(weighting="relevance"),
                        "uniform IP-Adapter merge": dict(weighting="uniform"),
                        "MIP relevance, phrase_encoding='prompt'": dict(weighting="relevance", phrase_encoding="prompt")}


def run_personalize(pipe, cases: list[PersonalizeCase], steps: int = 20, scale: float = 4.0, guidance: float = 5.0,
                    settings=None) -> dict:
    """MIP relevance merge vs uniform IP-Adapter merge (one softmax per object, summed) vs the relevance keyed
    with the phrase's tokens inside the prompt, same seed (`settings`: {name: personalize kwargs}). The toy
    adapter's image attention is weak: with one reference of each colour, the reference's colour takes 21 %
    of the coloured pixels at scale 1 (chance: the model draws a colourless "circle" blue), 60 % at scale 2
    and 99 % at scale 4, hence scale 4 here."""
    import zeroedit as ze
    settings = settings or PERSONALIZE_SETTINGS
    results = {name: [] for name in settings}
    for case in cases:
        refs = case.references()
        for name, kw in settings.items():
            out = ze.personalize(pipe, case.prompt, refs, scale=scale, steps=steps, guidance_scale=guidance,
                                 negative_prompt="", seed=case.seed, **kw)
            results[name].append(score_personalize(case, out.image))
    return results


# ----------------------------------------------------------------------------------------- inversion
def inversion_images(n: int, seed: int = 0) -> list[Image.Image]:
    return [render(sample_scene(seed + 2000 + i), SIZE)[0] for i in range(n)]


def run_inversion(pipe, images, steps=(10, 20, 50)) -> dict:
    """Reconstruction PSNR (dB, mean over images) of invert → reconstruct: DDIM with "", DPM-Solver++ (order 2)
    with "" and with the exceptional prompt; plus the VAE's own round trip (the ceiling)."""
    import zeroedit as ze
    from ..backbones import Backbone
    from ..images import to_tensor
    backbone = Backbone(pipe)
    with torch.no_grad():
        vae = backbone.decode(backbone.encode_image(to_tensor(images)))
    vae_images = [Image.fromarray(a) for a in (vae.clamp(-1, 1).add(1).mul(127.5).round().byte()
                                               .permute(0, 2, 3, 1).cpu().numpy())]
    results = {"VAE round trip (ceiling)": {s: rate(psnr(a, b) for a, b in zip(vae_images, images)) for s in steps}}
    for name, method, prompt in (("DDIM, empty prompt", "ddim", ""), ("DPM-Solver++, empty prompt", "dpmpp", ""),
                                 ("DPM-Solver++, exceptional prompt", "dpmpp", "exceptional")):
        results[name] = {}
        for s in steps:
            out = ze.reconstruct(pipe, ze.invert(pipe, images, method=method, prompt=prompt, steps=s))
            results[name][s] = rate(psnr(a, b) for a, b in zip(out.images, images))
    return results
