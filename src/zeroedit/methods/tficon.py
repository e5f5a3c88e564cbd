"""compose: TF-ICON training-free cross-domain image composition (Lu et al., ICCV 2023).

Algorithm (spec `methods/tficon.md`):
1. Geometry. The background is fitted to the working size: the model's native long side (512 on SD 1.x/2.x),
   its aspect kept, sides multiples of 64 (`size=` overrides; images.py; the reference squashes it to 512²).
   Boxes are given in the background's own pixels and scaled with it; a region mask of any size covers the
   whole background. The region's bounding box (from a mask, or a box) gives centre and long side; the
   reference (and its segmentation) is resized to that long side keeping its aspect and pasted, centred on the
   box centre, onto a black canvas of the background's size. The composition region R is the rectangle of the
   pasted reference, clipped to the image — the same clipped rectangle at every resolution (pixels, latent,
   attention grids), so regions at or across the border never crash.
2. Exceptional-prompt DPM-Solver++ inversion (order 2, 20 steps, continuous time) of the background and every
   reference canvas as ONE batched trajectory (`same` domain: also the pixel cut-and-paste composite); the
   trajectory is kept in float32 (the UNet runs in the model's dtype).
3. Noise incorporation: x_T = inverted background outside R; inverted reference in R ∩ segmentation
   (`same`: the inverted composite); fresh noise (seeded) in R ∖ segmentation.
4. Sampling with DPM-Solver++ and CFG (prompt vs ""): for the first tau_a of the model calls the conditional
   branch's self-attention logits (every attn1 layer) are composited — background block (query and key
   outside R) from the background's logits; pseudo cross-attention (all rows × foreground columns, and its
   transpose for the foreground rows) and the foreground block from the reference's logits, with the
   reference's queries as in the reference code. For the first tau_b of the updates the latent outside R is
   replaced by the background's latent at the same time (background preservation).

Output. The result comes back at the background's own size. With `paste_background=True` (the default; False
under `preset="reference"`) the untouched full-resolution background is pasted back outside the regions:
each region's rectangle, widened to whole latent cells and dilated by two more, keeps the generated image; a
Gaussian feather (σ = half a latent cell) blends the two, so the background stays sharp at any input size.
`stats.extra["regions"]` gives the clipped rectangles in the working frame.

Cost. The inversion evaluates the UNet on exactly the background/reference inputs that the reconstruction
branches need at every sampling step but the first (the times of the inverse and forward grids coincide), so
their q and k are recorded during inversion (only for the injection steps) and the composite logits are
built from them. Only the first sampling step carries the background and reference branches in its batch.
Default (20 steps, one object): 20 + 20 sequential UNet calls, 2·20 + 2 + 2·20 = 82 sample-evaluations
(reference: ~250, and 4 passes per step).

Deviations from the reference code (`preset="reference"` reproduces what it can):
- Reconstruction passes are replaced by the stored inversion trajectory (latents for background
  preservation, q/k for the composite) — the spec allows it in the default preset; the reference
  reconstructs with the same solver, which follows the inversion closely.
- No one-step lag: the stored logits are those of the same time step (the reference reads attention stored
  one model call earlier during the order-2 warm-up and for its pseudo-cross pass).
- Background preservation replaces latents (not x₀-predictions after the warm-up) for updates 0 … k_b − 1,
  k_b = int(tau_b·steps + 1 − 2) (15 at defaults, as the reference's window, which starts at update 2).
- Injection on model calls 0 … k_a − 1, k_a = int(tau_a·steps + 1 − 2) (7 at defaults, as the reference).
- The VAE encodes with the posterior mean (`preset="reference"`: a seeded posterior sample, and seed 3407).
- The segmentation is thresholded at 0.5 (the reference's `convert("1")` dithers edges); masks at coarser
  resolutions by nearest-neighbour resizing (the reference strides).
- `reference_mask=None` makes the whole reference the object (R ∩ segmentation = R); `"auto"` or a phrase
  segments the reference with zeroedit.masks (SAM; a phrase through an open-vocabulary detector's box), and
  a phrase as `region` is the detected box of that object in the background (TF-ICON #18's request).
- Several objects in one call: references, masks and regions as equal-length lists; each reference canvas is
  inverted in the same batch and composited into its own region, in list order.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from ..backbones import Backbone, Cond, compile_options, is_flow
from ..control import Controller, Record, Rule, Store, attention_layers, check_store
from ..errors import MaskError, ParameterError
from ..images import load_image, load_mask, to_tensor
from ..masks import is_phrase, resolve_region, segment
from ..inversion.dpm_solver import MultistepDPMSolverPP, VPSchedule, x0_from_model
from ..result import Result, Stats, Timer
from .common import (FLOW_VARIANTS, check_callback, check_choice, check_fraction, check_number, check_output_type,
                     check_seed, check_steps, finish, generator, load_input, randn, serialised, step_end, step_limit)

DOMAINS = {"cross": 5.0, "same": 2.5}
PRESETS = (None, "reference")
REFERENCE_SEED = 3407
MAX_BOX_FACTOR = 4  # a region box may be at most this many times the background's long side


# ----------------------------------------------------------------------------------------- geometry
def is_box(region) -> bool:
    return isinstance(region, (tuple, list)) and len(region) == 4 and \
        all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in region)


def region_box(region, size: tuple[int, int], input_size: tuple[int, int] | None = None) -> tuple[float, ...]:
    """The user's region as a box (x0, y0, x1, y1) in the working frame `size`: a box given in the pixels of
    the input background (`input_size`, default `size`) scaled with it, or a mask's bounding box (a mask of
    any size covers the whole background)."""
    width, height = size
    if is_box(region):
        x0, y0, x1, y1 = (float(v) for v in region)
        in_w, in_h = input_size or size
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise MaskError(f"region box {tuple(region)} holds NaN or infinite values: give (x0, y0, x1, y1) in the "
                            "background's pixels.")
        if x1 <= x0 or y1 <= y0:
            raise MaskError(f"region box {tuple(region)} is empty: give (x0, y0, x1, y1) with x1 > x0 and y1 > y0.")
        if max(x1 - x0, y1 - y0) > MAX_BOX_FACTOR * max(in_w, in_h):
            raise MaskError(f"region box {tuple(region)} is more than {MAX_BOX_FACTOR}× the {in_w}×{in_h} background: "
                            "give (x0, y0, x1, y1) in the background's pixels.")
        sx, sy = width / in_w, height / in_h
        return x0 * sx, y0 * sy, x1 * sx, y1 * sy
    mask = load_mask(region, "region")
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise MaskError("the region mask is empty: mark where the object goes with white pixels.")
    sx, sy = width / mask.shape[1], height / mask.shape[0]
    return xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy


def place_reference(reference: Image.Image, segmentation: np.ndarray, box, size) -> tuple[Image.Image, np.ndarray, tuple]:
    """Resize the reference to the box's long side (keeping its aspect) and paste it centred on the box
    centre onto a black canvas of `size`. Returns (canvas, segmentation on the canvas, clipped rectangle)."""
    width, height = size
    x0, y0, x1, y1 = box
    long_side = max(x1 - x0, y1 - y0)
    scale = long_side / max(reference.size)
    w, h = max(1, round(reference.width * scale)), max(1, round(reference.height * scale))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - w / 2)), int(round(cy - h / 2))
    canvas = Image.new("RGB", size, (0, 0, 0))
    canvas.paste(reference.resize((w, h), Image.BICUBIC), (left, top))
    seg = Image.fromarray(segmentation.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)
    seg_canvas = Image.new("L", size, 0)
    seg_canvas.paste(seg, (left, top))
    rect = (max(left, 0), max(top, 0), min(left + w, width), min(top + h, height))
    if rect[2] <= rect[0] or rect[3] <= rect[1]:
        raise MaskError(f"the region {tuple(round(v) for v in box)} lies outside the {width}×{height} background.")
    return canvas, np.asarray(seg_canvas) >= 128, rect


def latent_masks(rect, segmentation: np.ndarray, size, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Region R and segmentation S at latent resolution (1, 1, h, w) floats in {0, 1}; R covers every latent
    pixel the clipped rectangle touches, S is R ∩ the nearest-sampled segmentation."""
    width, height = size
    h, w = height // scale, width // scale
    region = torch.zeros(1, 1, h, w)
    x0, y0 = rect[0] // scale, rect[1] // scale
    x1, y1 = -(-rect[2] // scale), -(-rect[3] // scale)
    region[..., y0:y1, x0:x1] = 1.0
    seg = torch.from_numpy(segmentation.astype(np.float32))[None, None]
    seg = F.interpolate(seg, size=(h, w), mode="nearest")
    return region, region * seg


def paste_mask(rects, size: tuple[int, int], input_size: tuple[int, int], cell: int) -> Image.Image:
    """Weight of the generated image in the output at `input_size` (module docstring, Output): 255 on every
    rectangle (working frame `size`) widened to whole latent cells of `cell` px and dilated by two more,
    Gaussian-feathered (σ = half a cell), 0 where the untouched background is kept."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for x0, y0, x1, y1 in rects:
        left, top = (x0 // cell - 2) * cell, (y0 // cell - 2) * cell
        right, bottom = (-(-x1 // cell) + 2) * cell, (-(-y1 // cell) + 2) * cell
        draw.rectangle((left, top, right - 1, bottom - 1), fill=255)
    mask = mask.resize(input_size, Image.BILINEAR)
    return mask.filter(ImageFilter.GaussianBlur(cell / 2 * input_size[0] / size[0]))


# ----------------------------------------------------------------------------------------- attention
class CompositeSelfAttention(Rule):
    """TF-ICON's composite self-attention (Sec. 3.3) on the conditional branch's pre-softmax logits:
    background block from the background, pseudo cross-attention and foreground block from each reference.
    q/k of the background ("bg") and references ("ref0", …) come from the inversion's record for this time
    or, when not recorded (the first step), from their branches in the same batch."""

    needs_logits = True

    def __init__(self, layers, steps, store: dict, masks: list[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__(layers, steps)
        self.store, self.masks = store, masks  # masks: per object (R, R ∩ S) at latent resolution

    def _qk(self, ctx, name: str, index: int, q, k):
        key = (ctx.name, "q", ctx.controller.timestep)
        if key in self.store:
            return (self.store[(ctx.name, "q", ctx.controller.timestep)][index:index + 1],
                    self.store[(ctx.name, "k", ctx.controller.timestep)][index:index + 1])
        part = ctx.branch(name)
        return q[part], k[part]

    def _at(self, mask: torch.Tensor, grid, device) -> torch.Tensor:
        return F.interpolate(mask, size=grid, mode="nearest").flatten().to(device).bool()

    def logits(self, ctx, logits):
        cond = ctx.branch("cond")
        q, k = self._q, self._k
        generated = logits[cond]
        q_bg, k_bg = self._qk(ctx, "bg", 0, q, k)
        outside = torch.ones(generated.shape[-1], dtype=torch.bool, device=logits.device)
        for region, _ in self.masks:
            outside &= ~self._at(region, ctx.grid, logits.device)
        background = (q_bg @ k_bg.transpose(-1, -2)) * ctx.scale
        composite = torch.where(outside[:, None] & outside[None, :], background.to(generated.dtype), generated)
        for index, (_, foreground) in enumerate(self.masks):
            fg = self._at(foreground, ctx.grid, logits.device)
            q_ref, k_ref = self._qk(ctx, f"ref{index}", 1 + index, q, k)
            reference = ((q_ref @ k_ref.transpose(-1, -2)) * ctx.scale).to(generated.dtype)
            composite = torch.where(fg[None, :], reference, composite)  # all rows × foreground columns
            composite = torch.where(fg[:, None], reference.transpose(-1, -2), composite)  # its transpose
            composite = torch.where(fg[:, None] & fg[None, :], reference, composite)  # foreground block
        out = logits.clone()
        out[cond] = composite.expand_as(generated)
        return out

    def qkv(self, ctx, q, k, v):
        self._q, self._k = q, k  # the batch's own q/k, for branches that ride in this call
        return q, k, v


# ----------------------------------------------------------------------------------------- method
def _inputs(backbone, background, reference, region, reference_mask, size, allow_large):
    """Normalise single/list inputs to equal-length lists and validate them (before any model work). A
    reference_mask "auto" or a phrase, and a region phrase, are found by zeroedit.masks (on the pipeline's device)."""
    many = isinstance(reference, (list, tuple))
    references = list(reference) if many else [reference]
    regions = list(region) if many else [region]
    if not isinstance(region, (list, tuple)) and many:
        raise ParameterError("with a list of references, region must be a list of the same length.")
    masks = (list(reference_mask) if isinstance(reference_mask, (list, tuple)) else [reference_mask] * len(references)) \
        if (many or reference_mask is None) else [reference_mask]
    if not references or not (len(references) == len(regions) == len(masks)):
        raise ParameterError(f"reference, region and reference_mask must have equal lengths, got {len(references)}, "
                             f"{len(regions)} and {len(masks)}.")
    original, picture = load_input(background, backbone, size, allow_large, "background")
    refs = [load_image(r, "reference") for r in references]
    segs = []
    for ref, mask in zip(refs, masks):
        seg = np.ones((ref.height, ref.width), bool) if mask is None else \
            segment(ref, mask, like=backbone.pipe) if is_phrase(mask) else load_mask(mask, "reference_mask")
        if seg.shape != (ref.height, ref.width):
            raise MaskError(f"reference_mask is {seg.shape[1]}×{seg.shape[0]} but the reference is "
                            f"{ref.width}×{ref.height}: give the segmentation of this reference image.")
        if not seg.any():
            raise MaskError("reference_mask is empty: mark the object's pixels in white.")
        segs.append(seg)
    boxes = [region_box(resolve_region(original, r, like=backbone.pipe), picture.size, original.size) for r in regions]
    return original, picture, refs, segs, boxes


def windows(tau_a: float, tau_b: float, steps: int) -> tuple[int, int]:
    """TF-ICON's windows in sampling steps (its scripts' `int(tau·T + 1 − 2)`, at least 0): the composite
    attention's injection calls and the background-preservation updates."""
    return max(int(tau_a * steps + 1 - 2), 0), max(int(tau_b * steps + 1 - 2), 0)


@serialised
def compose(pipe, background, reference, region, reference_mask=None, prompt: str = "", domain: str = "cross",
            steps: int = 20, order: int = 2, tau_a: float = 0.4, tau_b: float = 0.8, guidance_scale: float | None = None,
            seed: int | None = None, preset: str | None = None, output_type: str = "pil",
            callback_on_step_end=None, compile=False, size=None, allow_large: bool = False,
            paste_background: bool | None = None, solver: str | None = None, inversion_prompt: str | None = None,
            attention: str | None = None, store: str | None = None) -> Result:
    """Put the object of `reference` (segmented by `reference_mask`) into `background` at `region` (a mask
    image or a box (x0, y0, x1, y1) in pixels), in the background's visual domain. Lists of references,
    masks and regions compose several objects in one call. See the module docstring.

    Args:
        background: the image to put the object into (path, PIL, numpy or torch); the output comes back at its size.
        reference: the image that holds the object (or a list: one object each).
        region: where the object goes: a mask image on the background (its bounding box), a box x0,y0,x1,y1 in the background's pixels, or a phrase naming an object of the background to replace (its detected box, zeroedit.masks).
        reference_mask: the object's segmentation in the reference (white = object); "auto": the salient object; a phrase: that object (zeroedit.masks); None: the whole reference.
        prompt: the text describing the result, e.g. "an oil painting of a panda in a forest".
        domain: "cross" (different visual domains, guidance 5.0) or "same" (photorealistic, 2.5).
        steps: DPM-Solver++ steps of the inversion and of the sampling (20).
        order: DPM-Solver++ order, 1 or 2.
        tau_a: fraction of the steps with composite self-attention injection (0.4).
        tau_b: fraction of the steps with background preservation outside the region (0.8).
        guidance_scale: classifier-free guidance; None: 5.0 for cross, 2.5 for same.
        seed: integer seed of every random draw (None: a fresh random seed).
        preset: None (fastest) or "reference" (the reference code: seed 3407, sampled VAE posterior).
        output_type: "pil" (default), "np", "pt" or "latent", as diffusers.
        callback_on_step_end: diffusers' callback(pipe, step, timestep, {"latents": ...}); may return new latents.
        compile: run the UNet under torch.compile (True, or a dict of torch.compile arguments); see the README.
        size: working size: the long side in px or (width, height) (None: the model's native long side).
        allow_large: allow a working size above 2048 px on the long side.
        paste_background: paste the untouched full-resolution background back outside the regions (None: True,
            False under preset="reference"); see the module docstring.
        solver: SD3/FLUX only: the rectified-flow solver of inversion and sampling (None: "fireflow").
        inversion_prompt: SD3/FLUX only: the content-free text of the inversion (None: "zeros").
        attention: SD3/FLUX only: "kv" (KV-Edit's background keys/values, None) or "composite" (TF-ICON's rule).
        store: where the background's and references' recorded attention waits for the sampling steps that use it: None keeps it on the device the model runs on, and "cpu" keeps it in pinned CPU memory and copies each step's back when it is needed (less GPU memory, the same image); its size is in stats.store_bytes.
    """
    check_choice(domain, "domain", tuple(DOMAINS))
    check_choice(preset, "preset", PRESETS)
    check_output_type(output_type)
    check_callback(callback_on_step_end)
    check_store(store)
    if order not in (1, 2):
        raise ParameterError(f"order must be 1 or 2, got {order!r}.")
    tau_a, tau_b = check_fraction(tau_a, "tau_a"), check_fraction(tau_b, "tau_b")
    if not isinstance(prompt, str):
        raise ParameterError(f"prompt must be a string, got {prompt!r}.")
    paste_background = preset != "reference" if paste_background is None else paste_background
    if not isinstance(paste_background, bool):
        raise ParameterError(f"paste_background must be True, False or None, got {paste_background!r}.")
    seed = REFERENCE_SEED if (seed is None and preset == "reference") else check_seed(seed)
    flow = dict(solver=solver, inversion_prompt=inversion_prompt, attention=attention)
    if is_flow(pipe):
        if order != 2:
            raise ParameterError("order is the UNet's DPM-Solver++ order; on SD3/FLUX choose solver= instead.")
        return FLOW_VARIANTS["compose"](pipe, background, reference, region, reference_mask, prompt, domain, steps,
                                        tau_a, tau_b, guidance_scale, seed, preset, output_type, callback_on_step_end,
                                        compile, flow, size, allow_large, paste_background, store)
    if any(value is not None for value in flow.values()):
        raise ParameterError("solver, inversion_prompt and attention apply to SD3/FLUX pipelines only; leave them None.")
    compile_options(compile)
    guidance = check_number(DOMAINS[domain] if guidance_scale is None else guidance_scale, "guidance_scale")
    stats = Stats()
    backbone = Backbone(pipe, stats, compile)
    steps = check_steps(steps, minimum=2, maximum=step_limit(backbone))
    original, picture, refs, segs, boxes = _inputs(backbone, background, reference, region, reference_mask, size,
                                                   allow_large)
    gen = generator(seed)
    k_a, k_b = windows(tau_a, tau_b, steps)
    stats.params.update(prompt=prompt, domain=domain, steps=steps, order=order, tau_a=tau_a, tau_b=tau_b,
                        guidance_scale=guidance, seed=seed, preset=preset, size=list(picture.size),
                        input_size=list(original.size), paste_background=paste_background, objects=len(refs),
                        injection_calls=k_a, preservation_updates=k_b, compile=compile, store=store)
    placed = [place_reference(ref, seg, box, picture.size) for ref, seg, box in zip(refs, segs, boxes)]
    stats.extra["regions"] = [list(rect) for _, _, rect in placed]
    masks = [latent_masks(rect, seg, picture.size, backbone.vae_scale) for _, seg, rect in placed]
    sources = [picture] + [canvas for canvas, _, _ in placed]
    if domain == "same":
        sources.append(_cut_and_paste(picture, placed))
    with Timer(stats, backbone.device), torch.no_grad():
        x0 = backbone.encode_image(to_tensor(sources), generator=gen, sample=preset == "reference").float()
        layers = attention_layers(pipe.unet, "attn1")
        schedule = VPSchedule(backbone.alphas_cumprod)
        times = schedule.times(steps)
        injection_times = {round(t, 10) for t in times[:k_a]}
        recorded = Store(store, backbone.device)
        trajectory = _invert(backbone, schedule, x0, times[::-1], order, layers, injection_times, recorded, len(refs))
        stats.store_bytes["qk"] = recorded.nbytes()
        x = _starting_latent(trajectory[round(times[0], 10)], masks, domain, gen, backbone)
        rule = CompositeSelfAttention(layers, lambda c: round(c.timestep, 10) in injection_times, recorded, masks)
        latents = _sample(pipe, backbone, schedule, x, trajectory, times, order, rule, masks, prompt, guidance,
                          k_b, len(refs), callback_on_step_end)
        paste = (original, paste_mask([rect for _, _, rect in placed], picture.size, original.size,
                                      backbone.vae_scale)) if paste_background else None
        images = finish(backbone, latents, output_type, original.size, paste)
    return Result(images=images, stats=stats, latents=latents)


def _cut_and_paste(picture: Image.Image, placed) -> Image.Image:
    """The pixel-space composite (`same` domain): reference pixels where its segmentation is."""
    out = np.asarray(picture).copy()
    for canvas, seg, _ in placed:
        out[seg] = np.asarray(canvas)[seg]
    return Image.fromarray(out)


def _invert(backbone, schedule, x0, times_up, order, layers, injection_times, store, objects):
    """Exceptional-prompt DPM-Solver++ inversion of [background, references…(, composite)] as one batch;
    records the background's and references' self-attention q/k at the injection times. Returns
    {rounded time: latents}."""
    cond = backbone.exceptional_cond(x0.shape[0])
    controller = Controller()
    keep = slice(0, 1 + objects)
    controller.add(_RecordRows(layers, ("q", "k"), keep, steps=lambda c: round(c.timestep, 10) in injection_times,
                               store=store))
    solver = MultistepDPMSolverPP(schedule, order)
    x, trajectory = x0, {round(times_up[0], 10): x0}
    with controller.installed(backbone.unet):
        for i, t in enumerate(times_up[:-1]):
            controller.set_call(i, round(t, 10), [("all", x.shape[0])], x.shape[-2:])
            model_time = torch.tensor(schedule.model_time(t), device=x.device, dtype=torch.float32)
            solver.push(t, x0_from_model(backbone, schedule, backbone.unet_call(x, model_time, cond), x, t))
            x = solver.step(x, times_up[i + 1])
            trajectory[round(times_up[i + 1], 10)] = x
    return trajectory


class _RecordRows(Record):
    """Record q/k of the first batch rows (background and references), keyed by (layer, kind, time)."""

    def __init__(self, layers, what, rows: slice, **kwargs):
        super().__init__(layers, what, **kwargs)
        self.rows = rows

    def _keep(self, ctx, kind, tensor):
        self.store[(ctx.name, kind, ctx.controller.timestep)] = tensor[self.rows].detach()


def _starting_latent(top, masks, domain, gen, backbone):
    """Noise incorporation (Sec. 3.2): background outside the regions, the inverted reference (or the
    composite, `same`) inside region ∩ segmentation, fresh noise in region ∖ segmentation."""
    x = top[:1].float()
    for index, (region, foreground) in enumerate(masks):
        region, foreground = region.to(x.device), foreground.to(x.device)
        inner = top[-1:] if domain == "same" else top[1 + index:2 + index]
        noise = randn(x.shape, gen, x.device, torch.float32)
        x = x * (1 - region) + foreground * inner.float() + (region - foreground) * noise
    return x


def _sample(pipe, backbone, schedule, x, trajectory, times, order, rule, masks, prompt, guidance, k_b, objects,
            callback):
    """DPM-Solver++ sampling with CFG, composite self-attention and background preservation; one UNet call
    per step (the first also carries the background and reference branches)."""
    text = backbone.encode_prompt(prompt)
    empty = backbone.encode_negative("")
    exceptional = backbone.exceptional_cond(1)
    outside = torch.ones_like(masks[0][0])
    for region, _ in masks:
        outside = outside * (1 - region)
    outside = outside.to(x.device)
    controller = Controller()
    controller.add(rule)
    solver = MultistepDPMSolverPP(schedule, order)
    with controller.installed(backbone.unet), pipe.progress_bar(total=len(times) - 1) as bar:
        for i, t in enumerate(times[:-1]):
            key = round(t, 10)
            ride = rule.active(_Clock(key)) and (rule.layers[0], "q", key) not in rule.store
            names = ([("bg", 1)] + [(f"ref{j}", 1) for j in range(objects)] if ride else []) + [("uncond", 1), ("cond", 1)]
            latents = torch.cat(([trajectory[key][:1 + objects]] if ride else []) + [x, x])
            cond = Cond.cat(([exceptional.repeat(1 + objects)] if ride else []) + [empty, text])
            controller.set_call(i, key, names, x.shape[-2:])
            model_time = torch.tensor(schedule.model_time(t), device=x.device, dtype=torch.float32)
            out = backbone.unet_call(latents, model_time, cond)[-2:]
            guided = out[:1] + guidance * (out[1:] - out[:1])
            solver.push(t, x0_from_model(backbone, schedule, guided, x, t))
            x = solver.step(x, times[i + 1])
            if i < k_b:  # background preservation from the stored inversion trajectory
                x = x * (1 - outside) + trajectory[round(times[i + 1], 10)][:1].float() * outside
            x = step_end(pipe, callback, i, t, x)
            bar.update()
    return x


class _Clock:
    """A stand-in controller state for asking a rule whether it is active at a time."""

    def __init__(self, timestep):
        self.timestep = timestep
