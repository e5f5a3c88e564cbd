"""compose (TF-ICON) on SD3/FLUX flow transformers (`ze.compose` dispatches here for flow pipelines).

The same algorithm as methods/tficon.py, with the geometry (region, placed reference, latent masks) and the
composite self-attention rule imported from there; what differs is the solver, the text encoders and where
the rule sits:
1. Geometry as on the UNet (tficon.place_reference / latent_masks), in multiples of VAE factor × patch.
2. Inversion of [background, references…(, composite)] as ONE batched trajectory with a rectified-flow solver
   (inversion/flow.py; default "fireflow", 20 steps as TF-ICON's DPM-Solver++) conditioned on a content-free
   text: `inversion_prompt` (FlowBackbone.exceptional_cond): "exceptional" = TF-ICON's exceptional prompt through
   every encoder (CLIP as on the UNet, its T5 analogue: one repeated token, no EOS, no relative position
   bias), "exceptional-clip" (T5 of ""), "empty" (the pipeline's "" prompt), "zeros" (all-zero token states and
   pooled vector); families without CLIP (FLUX.2, Qwen-Image) make only "zeros" and "empty"
   (`backbone.text_variants`). Default "zeros": the smallest inversion round-trip error on the toy-flow model with
   every solver (benchmarks/compose_flow.py, 8 toy images, 20 steps, fireflow: latent RMSE 0.0015 vs 0.0039
   exceptional, 0.0085 empty); the toy model has no T5, so the T5 analogue is unmeasured there. FLUX-dev's
   guidance embedding is 1 there (as RF-Solver/FireFlow invert).
3. Noise incorporation in the spatial latent (tficon._starting_latent): background outside R, inverted
   reference in R ∩ S (`same`: the inverted composite), fresh noise in R ∖ S.
4. Sampling (the same solver, σ 1 → 0): SD3 with CFG [uncond "", cond prompt], FLUX-dev with its guidance
   embedding (one branch). In the evaluations of the first k_a steps, on every joint-attention layer (SD3 joint
   blocks; FLUX double- and single-stream blocks):
   - `attention="kv"` (default; KV-Edit, Zhu et al. 2025, keeps the background's keys and values): the generated
     branches' image-token K and V outside R are replaced by the background's;
   - `attention="composite"` (TF-ICON's rule): tficon.CompositeSelfAttention with stream="image" on the
     image×image block of the logits: background block from the background's logits, pseudo-cross and
     foreground blocks from the reference's.
   The background's (and, for "composite", the references') q/k or k/v come from the inversion's record at the
   same σ (the inverse and forward grids share every σ but 1, where those branches ride in the first call).
   Why "kv" by default: on the toy-flow compose cases (benchmarks/toy_quality.py --only compose-flow, 24
   cases) it inserts the object far more often than the composite rule (present 62 % vs 33 %, shape 33 % vs
   8 %, style 42 % vs 21 %; no injection: 50 / 17 / 33 %), at 1.9 dB lower background PSNR (25.9 vs 27.8 dB).
   KV-Edit keeps the K/V at every step; here in the tau_a window (every step scored the same on the toy cases,
   with 1.2 dB less background PSNR).
   Background preservation: after each of the first k_b updates the latent outside R is replaced by the
   background's inversion latent at the same σ.
Windows as on the UNet: k_a = int(tau_a·steps − 1) steps of injection (every evaluation of those steps), k_b =
int(tau_b·steps − 1) preserved updates.

Calls (one object or several): inversion = the solver's calls (fireflow N + 1, rf-solver 2N, euler N) for
all images in one batch; sampling = the same again; the first sampling call also carries the background (and
for "composite" the reference) branches while injecting. Defaults (fireflow, 20 steps, "kv"): 21 + 21 = 42
sequential calls.

Guidance: SD3 CFG 5.0 (cross) / 2.5 (same) as TF-ICON; FLUX-dev: the guidance embedding, 3.5 (FluxPipeline's
default) in both domains; schnell: none.
"""
from __future__ import annotations

import torch

from ..backbones import Cond, backbone_for
from ..control import Controller, Rule, Store, joint_attention_layers
from ..images import to_tensor
from ..inversion import FLOW_SOLVERS
from ..result import Result, Stats, Timer
from .common import FLOW_VARIANTS, check_choice, check_number, check_steps, finish, generator, step_end, step_limit
from .tficon import (DOMAINS, CompositeSelfAttention, _cut_and_paste, _inputs, _RecordRows, _starting_latent,
                     latent_masks, paste_mask, place_reference, windows)

ATTENTIONS = ("composite", "kv")
DEFAULTS = dict(solver="fireflow", inversion_prompt="zeros", attention="kv")


class _Keys:
    """σ -> store key: the nearest σ of the grid or of an interval's midpoint (the inverse and forward solvers
    compute the same midpoints in opposite directions, equal up to rounding)."""

    def __init__(self, sigmas: list[float]):
        mids = [a + 0.5 * (b - a) for a, b in zip(sigmas[:-1], sigmas[1:])]
        self.known = torch.tensor(sorted(set(sigmas) | set(mids)), dtype=torch.float64)

    def __call__(self, sigma) -> float:
        return float(self.known[(self.known - float(sigma)).abs().argmin()])


class KeepBackgroundKV(Rule):
    """KV-Edit's background preservation in attention: the generated branches' image-token keys and values
    outside the regions replaced by the background's (recorded at this σ during inversion, or its branch)."""

    def __init__(self, layers, steps, store: dict, outside: torch.Tensor, targets=("uncond", "cond")):
        super().__init__(layers, steps)
        self.store, self.outside, self.targets = store, outside, targets

    def _bg(self, ctx, kind, tensor):
        key = (ctx.name, kind, ctx.controller.timestep)
        return self.store[key][:1] if key in self.store else tensor[ctx.branch("bg")]

    def qkv(self, ctx, q, k, v):
        keep = torch.nn.functional.interpolate(self.outside, size=ctx.grid, mode="nearest").flatten().bool()
        keep = keep.to(k.device)[None, None, :, None]
        k, v = k.clone(), v.clone()
        for name in self.targets:
            if ctx.controller.has_branch(name):
                part = ctx.branch(name)
                k[part] = torch.where(keep, self._bg(ctx, "k", k).to(k.dtype), k[part])
                v[part] = torch.where(keep, self._bg(ctx, "v", v).to(v.dtype), v[part])
        return q, k, v


def _options(backbone, guidance_scale, domain, steps, flow: dict) -> dict:
    options = {**DEFAULTS, **{k: v for k, v in flow.items() if v is not None}}
    check_choice(options["solver"], "solver", tuple(FLOW_SOLVERS))
    check_choice(options["inversion_prompt"], "inversion_prompt", backbone.text_variants)
    check_choice(options["attention"], "attention", ATTENTIONS)
    default = DOMAINS[domain] if backbone.has_cfg else backbone.default_guidance
    guidance = default if guidance_scale is None else guidance_scale
    return dict(options, guidance_scale=check_number(guidance, "guidance_scale"),
                steps=check_steps(steps, minimum=2, maximum=step_limit(backbone)))


def compose_flow(pipe, background, reference, region, reference_mask, prompt, domain, steps, tau_a, tau_b,
                 guidance_scale, seed, preset, output_type, callback, compile, flow: dict, size=None,
                 allow_large=False, paste_background=None, store=None) -> Result:
    """`ze.compose` on an SD3/FLUX pipeline (module docstring), after ze.compose's shared checks (domain, preset,
    output type, callback, windows, prompt, paste_background, seed). `flow`: solver, inversion_prompt, attention;
    sizes, boxes and the pasted full-resolution background as on the UNet (methods/tficon.py)."""
    backbone = backbone_for(pipe, None, compile)
    options = _options(backbone, guidance_scale, domain, steps, flow)
    steps = options["steps"]
    gen = generator(seed)
    original, picture, refs, segs, boxes = _inputs(backbone, background, reference, region, reference_mask, size,
                                                   allow_large)
    k_a, k_b = windows(tau_a, tau_b, steps)
    stats = Stats(params=dict(prompt=prompt, domain=domain, tau_a=tau_a, tau_b=tau_b, seed=seed,
                              preset=preset, size=list(picture.size), input_size=list(original.size),
                              paste_background=paste_background, objects=len(refs), injection_steps=k_a,
                              preservation_updates=k_b, compile=compile, store=store, **options))
    backbone.stats = stats
    placed = [place_reference(ref, seg, box, picture.size) for ref, seg, box in zip(refs, segs, boxes)]
    stats.extra["regions"] = [list(rect) for _, _, rect in placed]
    masks = [latent_masks(rect, seg, picture.size, backbone.vae_scale) for _, seg, rect in placed]
    sources = [picture] + [canvas for canvas, _, _ in placed] + ([_cut_and_paste(picture, placed)] if domain == "same" else [])
    with Timer(stats, backbone.device), torch.no_grad():
        x0 = backbone.encode_image(to_tensor(sources), generator=gen, sample=preset == "reference").float()
        sigmas = backbone.sigmas(steps, x0.shape[-2:])
        layers = _layers(backbone)
        key = _Keys(sigmas)
        needed = _injection_keys(sigmas, k_a, key)
        recorded = Store(store, backbone.device)
        riding = len(refs) if options["attention"] == "composite" else 0  # references the rule reads (kv: none)
        trajectory = _invert(backbone, x0, sigmas, options, layers, needed, recorded, riding, key)
        stats.store_bytes["qk" if options["attention"] == "composite" else "background_kv"] = recorded.nbytes()
        x = _starting_latent(trajectory[key(1.0)], masks, domain, gen, backbone)
        outside = torch.ones_like(masks[0][0])
        for region_mask, _ in masks:
            outside = outside * (1 - region_mask)
        active = lambda c: c.step < k_a  # noqa: E731 — the injection window, by sampling step
        if options["attention"] == "composite":
            rule = CompositeSelfAttention(layers, active, recorded, masks)
            rule.stream = "image"
        else:
            rule = KeepBackgroundKV(layers, active, recorded, outside)
        latents = _sample(pipe, backbone, x, trajectory, sigmas, options, rule, outside, prompt, k_a, k_b, riding,
                          callback, key)
        paste = (original, paste_mask([rect for _, _, rect in placed], picture.size, original.size,
                                      backbone.vae_scale)) if paste_background else None
        images = finish(backbone, latents, output_type, original.size, paste)
    return Result(images=images, stats=stats, latents=latents)


def _layers(backbone) -> list[str]:
    """Every attention layer of the blocks: the two-stream (SD3's joint, FLUX's double-stream) then the one-stream
    ones."""
    model = backbone.transformer
    return joint_attention_layers(model, "double") + joint_attention_layers(model, "single")


def _injection_keys(sigmas: list[float], k_a: int, key: _Keys) -> set[float]:
    """σ keys of every evaluation of the first k_a sampling steps (start and midpoint of each interval)."""
    keys = set()
    for j in range(min(k_a, len(sigmas) - 1)):
        keys |= {key(sigmas[j]), key(sigmas[j] + 0.5 * (sigmas[j + 1] - sigmas[j]))}
    return keys


def _invert(backbone, x0, sigmas, options, layers, needed, store, objects, key: _Keys) -> dict:
    """Content-free-prompt inversion of all images in one batch; records the background's and references'
    image-token q/k (and v for attention="kv") at the σ the injection window needs. Returns {σ key: latents}."""
    cond = backbone.exceptional_cond(x0.shape[0], options["inversion_prompt"])
    what = ("q", "k") if options["attention"] == "composite" else ("k", "v")
    recorder = Controller()
    recorder.add(_RecordRows(layers, what, slice(0, 1 + objects), steps=lambda c: c.timestep in needed, store=store,
                             stream="image"))
    grid = backbone.token_grid(x0.shape[-2:])

    def invert_fn(x, sigma, i, stage):
        recorder.set_call(i, key(sigma), [("all", x.shape[0])], grid)
        return backbone.transformer_call(x, sigma, cond, 1.0)

    ascending = sigmas[::-1]
    with recorder.installed(backbone.transformer):
        path = FLOW_SOLVERS[options["solver"]](invert_fn, x0, ascending)
    return {key(s): x for s, x in zip(ascending, path)}


def _sample(pipe, backbone, x, trajectory, sigmas, options, rule, outside, prompt, k_a, k_b, objects, callback,
            key: _Keys):
    """Sampling with the solver: composite attention (or background K/V) in the first k_a steps, background
    preservation after the first k_b updates; one call per evaluation (the first also carries the background and
    reference branches when the inversion did not evaluate that σ)."""
    guidance = options["guidance_scale"]
    text = backbone.encode_prompt(prompt)
    targets = [("uncond", 1), ("cond", 1)] if backbone.has_cfg else [("cond", 1)]
    target_cond = Cond.cat([backbone.encode_negative(""), text]) if backbone.has_cfg else text
    content_free = backbone.exceptional_cond(1 + objects, options["inversion_prompt"])
    outside = outside.to(x.device)
    grid = backbone.token_grid(x.shape[-2:])
    controller = Controller()
    controller.add(rule)

    def sample_fn(z, sigma, j, stage):
        at = key(sigma)
        ride = j < k_a and (rule.layers[0], "k", at) not in rule.store
        if ride and at not in trajectory:
            raise RuntimeError(f"internal: no inversion latent at σ = {at} for the riding branches")
        names = ([("bg", 1)] + [(f"ref{i}", 1) for i in range(objects)] if ride else []) + targets
        batch = ([trajectory[at][:1 + objects]] if ride else []) + [z] * len(targets)
        cond = Cond.cat(([content_free] if ride else []) + [target_cond])
        scales = torch.tensor(([1.0] * (1 + objects) if ride else []) + [guidance] * len(targets))
        controller.set_call(j, at, names, grid)
        out = backbone.transformer_call(torch.cat(batch), sigma, cond, scales)[-len(targets):].float()
        return backbone.guided(out, guidance)

    with controller.installed(backbone.transformer), pipe.progress_bar(total=len(sigmas) - 1) as bar:
        def on_step(i, sigma_next, z):
            if i < k_b:  # background preservation from the inversion trajectory
                z = z * (1 - outside) + trajectory[key(sigma_next)][:1] * outside
            bar.update()
            return step_end(pipe, callback, i, sigmas[i] * backbone.num_train_timesteps, z)
        return FLOW_SOLVERS[options["solver"]](sample_fn, x, sigmas, on_step)[-1]


FLOW_VARIANTS["compose"] = compose_flow  # ze.compose on SD3/FLUX pipelines (methods/tficon.py dispatches here)
