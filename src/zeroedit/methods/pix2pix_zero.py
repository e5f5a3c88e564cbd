"""edit: pix2pix-zero, zero-shot image-to-image translation along an edit direction (Parmar et al. 2023).

Algorithm (spec `methods/pix2pix_zero.md`):
1. Caption the image (a captioner, or "a photo of a {source}"), VAE-encode (posterior mean).
2. Regularised DDIM inversion with the caption, 50 steps, no CFG: before each step the predicted noise ε is
   pushed towards white Gaussian noise by `reg_steps` × (5 auto-correlation gradient steps, 1 KL step)
   (Sec. 3.2). The auto-correlation loss sums, over an average-pool pyramid down to 8×8 and over channels,
   mean(ε·roll(ε, δ))² along both axes with δ ∈ [1, H/2) drawn per channel and level (the 2024 official fix:
   no δ = 0); all rolls of a level are one gather, no host syncs.
3. Edit direction Δ (`ze.directions`) added to every token of the caption embedding, conditional branch only.
4. Cross-attention guidance (Sec. 3.3): a reference branch denoises from the inverted latent with the
   caption; at every step the edit latent (two copies: caption and caption + Δ) takes one gradient step of
   size `xa_guidance` on Σ_layers ‖A_edit − A_ref‖² over the `attn2` probabilities, then the guided DDIM step
   ε(x⁰, c) + s·(ε(x¹, c + Δ) − ε(x⁰, c)) is applied to copy 0 (the negative prompt is the caption, as the
   reference does for real images, which makes the reference branch unguided).

Cost. Per step two UNet calls: one with a gradient on [reference, edit copy 0, edit copy 1] (the reference
branch's attention maps are the target of the same call's loss, so they are kept for one step only), and one
without on the updated copies. At defaults: 50 + 2·50 = 150 sequential calls and 50 backward passes
(preset="reference": 48 + 2·50; diffusers' Pix2PixZero: 200 + 50, and it stores every step's maps of both
CFG halves).

Deviations and presets:
- Default: DDIM inversion on the sampling grid with ε at the target timestep from the previous latent
  (inversion/ddim.py, convention "diffusers", as diffusers' DDIMInverseScheduler: 50 UNet calls at 50 steps).
  With the regulariser it reconstructs best on the toy model (benchmarks/reference_inversion.py, 10 scenes,
  50 steps: 32.6 dB vs the input, official convention 31.9 dB, zeroedit's ε-at-the-moved-latent 29.0 dB).
- `preset="reference"` takes the official inversion: convention "pix2pix-zero" (`timesteps.flip(0)[1:-1]`,
  48 UNet calls at 50 steps, `alphas_cumprod[t − 1]` indexing, the same regulariser before every step), and
  encodes with a (seeded) posterior sample as the official code (which is unseeded). Its last latent (at
  ᾱ[980] for 50 steps) is sampled from the top of the same grid (t = 981), as the official edit pipeline does,
  so the edit stage is the same in both presets. The DDIM step is taken from the caption copy x⁰ of the pair
  (the reference's "uncond copy") in every preset.
- The reference branch is one batch element (its negative prompt is the caption, so its two CFG halves are
  equal), and its maps are kept for the current call only, in the model dtype.
- v-prediction models: `xa_guidance=None` means 0.01 instead of 0.1 (diffusers #2577/#2619: larger values
  make the gradient explode); the regulariser acts on ε converted from v.
- SD 1.x/2.x only (directions are built for one CLIP text encoder).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .. import directions as edit_directions
from ..backbones import Backbone, Cond, compile_options, is_flow
from ..control import Controller, Rule, Store, attention_layers, check_store
from ..errors import ParameterError
from ..images import to_tensor
from ..inversion import ddim_invert, ddim_timesteps, inverse_steps
from ..inversion.ddim import ddim_step, level_alpha_sigma
from ..result import Result, Stats, Timer
from .common import (FLOW_VARIANTS, check_callback, check_choice, check_number, check_output_type, check_seed,
                     check_steps, check_text, finish, generator, load_input, serialised, step_end, step_limit)

PRESETS = (None, "reference")
CONVENTIONS = {None: "diffusers", "reference": "pix2pix-zero"}  # preset -> DDIM inversion convention
AC_ROLLS = 5


# ----------------------------------------------------------------------------------------- regulariser
def pyramid_shifts(shape, levels: int, gen: torch.Generator, device) -> list[torch.Tensor]:
    """Per-channel roll amounts δ ∈ [1, side/2) for every pyramid level (drawn on the CPU, moved once)."""
    side, shifts = min(shape[-2:]), []
    for _ in range(levels):
        high = max(side // 2, 2)
        shifts.append(torch.randint(1, high, (shape[1],), generator=gen).to(device, non_blocking=True))
        side //= 2
    return shifts


def pyramid_levels(shape) -> int:
    """Levels of the average-pool pyramid: full size, halved while the side is above 8 (8×8 included)."""
    side, levels = min(shape[-2:]), 1
    while side > 8:
        side //= 2
        levels += 1
    return levels


def _roll_channels(x: torch.Tensor, shifts: torch.Tensor, dim: int) -> torch.Tensor:
    """torch.roll along `dim` with a different shift per channel (one gather)."""
    size = x.shape[dim]
    index = (torch.arange(size, device=x.device)[None, :] - shifts[:, None]) % size  # (C, size)
    view = [1, x.shape[1], 1, 1]
    view[dim] = size
    index = index.reshape(view).expand_as(x)
    return x.gather(dim, index)


def auto_correlation_loss(eps: torch.Tensor, shifts: list[torch.Tensor]) -> torch.Tensor:
    """Pairwise auto-correlation loss (Eq. 2): Σ_levels Σ_{b,c} mean(ε·roll_h(ε, δ))² + mean(ε·roll_w(ε, δ))²."""
    loss, x = eps.new_zeros(()), eps
    for level, delta in enumerate(shifts):
        if level:
            x = F.avg_pool2d(x, 2)
        loss = loss + (x * _roll_channels(x, delta, 2)).mean((2, 3)).pow(2).sum()
        loss = loss + (x * _roll_channels(x, delta, 3)).mean((2, 3)).pow(2).sum()
    return loss


def kl_loss(eps: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(mean, var) of the whole ε tensor to N(0, 1) (Sec. 3.2)."""
    mean, var = eps.mean(), eps.var()
    return var + mean.pow(2) - 1 - torch.log(var + 1e-7)


def regularize(eps: torch.Tensor, reg_steps: int, lambda_ac: float, lambda_kl: float, gen: torch.Generator) -> torch.Tensor:
    """Noise regularisation of one inversion step: reg_steps × (5 auto-correlation steps, 1 KL step), plain
    gradient steps on ε with step sizes λ_ac/5 and λ_kl (the reference's update)."""
    eps = eps.detach().float()
    levels = pyramid_levels(eps.shape)
    with torch.enable_grad():
        for _ in range(reg_steps):
            if lambda_ac > 0:
                for _ in range(AC_ROLLS):
                    var = eps.clone().requires_grad_(True)
                    shifts = pyramid_shifts(eps.shape, levels, gen, eps.device)
                    grad, = torch.autograd.grad(auto_correlation_loss(var, shifts), var)
                    eps = eps - lambda_ac * grad / AC_ROLLS
            if lambda_kl > 0:
                var = eps.clone().requires_grad_(True)
                grad, = torch.autograd.grad(kl_loss(var), var)
                eps = eps - lambda_kl * grad
    return eps


# ----------------------------------------------------------------------------------------- guidance
class CrossAttentionGuidance(Rule):
    """Cross-attention loss of the edit branch against the reference branch in the same call (Sec. 3.3):
    Σ_layers mean_{batch, heads} Σ_{pixels, tokens} (A_edit − A_ref)². Active only in the gradient call."""

    needs_logits = True

    def __init__(self, layers):
        super().__init__(layers, steps=lambda controller: self.enabled)
        self.enabled, self.loss = False, None

    def probs(self, ctx, probs):
        reference = probs[ctx.branch("ref")].detach()
        edit = probs[ctx.branch("edit")]
        term = (edit - reference).float().pow(2).sum((-1, -2)).mean()
        self.loss = term if self.loss is None else self.loss + term
        return probs


# ----------------------------------------------------------------------------------------- method
def _caption(image, caption, captioner, source):
    if caption is not None:
        return caption, "given"
    if captioner is not None:
        return check_text(captioner(image), "the captioner's caption"), "captioner"
    return f"a photo of a {source}", "fallback"


@serialised
def edit(pipe, image, source: str = "cat", target: str = "dog", direction: torch.Tensor | None = None,
         caption: str | None = None, steps: int = 50, xa_guidance: float | None = None, guidance_scale: float = 5.0,
         reg_steps: int = 5, lambda_ac: float = 20.0, lambda_kl: float = 20.0, seed: int | None = None,
         preset: str | None = None, output_type: str = "pil", callback_on_step_end=None, captioner=None,
         compile=False, size=None, allow_large: bool = False, guidance_blocks: int | None = None,
         checkpointing: bool = False, guidance_embedding: float | None = None, store: str | None = None) -> Result:
    """Edit `image` from `source` towards `target` (or along a given `direction`: a tensor (1, 77, d) or the
    path of a saved one, checked against this pipeline's text encoder) keeping its structure.
    `caption=None` uses `captioner` (e.g. ze.captioners.blip(...)) when given, else
    "a photo of a {source}" (recorded in stats.extra["caption_source"]). The result carries `.caption` and
    `.inverted` (the regularised inverted latent). See the module docstring.

    Args:
        image: the image to edit (path, PIL, numpy or torch); the output comes back at its size.
        source: the concept in the image, e.g. "cat".
        target: the concept to move it to, e.g. "dog".
        direction: an edit direction (a tensor from ze.directions.build, or the path of a saved one); None: built from source and target.
        caption: the image's caption; None: the captioner's, else "a photo of a {source}".
        steps: DDIM steps of the inversion and of the edit (50).
        xa_guidance: cross-attention guidance step size (None: 0.1, or 0.01 for v-prediction models).
        guidance_scale: classifier-free guidance of the edit (5.0).
        reg_steps: noise-regularisation rounds per inversion step (5; 0 turns it off).
        lambda_ac: weight of the auto-correlation loss (20).
        lambda_kl: weight of the KL loss (20).
        seed: integer seed of every random draw (None: a fresh random seed).
        preset: None or "reference" (the official inversion: 48 of 50 steps, `t − 1` indexing; a seeded sample
            of the VAE posterior, as the official code).
        output_type: "pil" (default), "np", "pt" or "latent", as diffusers.
        callback_on_step_end: diffusers' callback(pipe, step, timestep, {"latents": ...}); may return new latents.
        captioner: a callable image -> caption, e.g. ze.captioners.blip(folder).
        compile: run the UNet under torch.compile (True, or a dict of torch.compile arguments); see the README. The guided gradient flows through the compiled graphs.
        size: working size: the long side in px or (width, height) (None: the model's native long side).
        allow_large: allow a working size above 2048 px on the long side.
        guidance_blocks: SD3/FLUX only: guide the first k double-stream/joint blocks (None: all of them).
        checkpointing: SD3/FLUX only: gradient checkpointing of the transformer in the guidance call.
        guidance_embedding: FLUX-dev only: its distilled guidance value during inversion and editing (None: 1.0).
        store: where the activations of each step's guidance gradient wait for its backward pass: None keeps them on the device the model runs on, and "cpu" keeps them in pinned CPU memory and copies them back during the backward pass (less GPU memory, the same image); their size is in stats.store_bytes.
    """
    check_choice(preset, "preset", PRESETS)
    check_output_type(output_type)
    seed = check_seed(seed)
    check_callback(callback_on_step_end)
    check_callback(captioner, "captioner")
    check_store(store)
    reg_steps = check_steps(reg_steps, "reg_steps", minimum=0)
    guidance_scale, lambda_ac, lambda_kl = (check_number(value, name, minimum=0) for name, value in (
        ("guidance_scale", guidance_scale), ("lambda_ac", lambda_ac), ("lambda_kl", lambda_kl)))
    if caption is not None:
        caption = check_text(caption, "caption")
    if direction is None:
        source, target = check_text(source, "source"), check_text(target, "target")
    elif caption is None and captioner is None:
        source = check_text(source, "source")  # the fallback caption names it
    if isinstance(direction, (str, Path)):
        direction = edit_directions.load(direction, pipe)  # refuses one built for another text encoder
    if is_flow(pipe):
        flow = dict(guidance_blocks=guidance_blocks, checkpointing=checkpointing, guidance_embedding=guidance_embedding)
        return FLOW_VARIANTS["edit"](pipe, image, source, target, direction, caption, steps, xa_guidance, guidance_scale,
                                     reg_steps, lambda_ac, lambda_kl, seed, preset, output_type, callback_on_step_end,
                                     captioner, compile, flow, size, allow_large, store)
    if guidance_blocks is not None or checkpointing or guidance_embedding is not None:
        raise ParameterError("guidance_blocks, checkpointing and guidance_embedding apply to SD3/FLUX pipelines only.")
    compile_options(compile)
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise ParameterError("edit supports SD 1.x/2.x pipelines (pix2pix-zero's directions are built for one CLIP "
                             "text encoder); this is an SDXL pipeline.")
    stats = Stats()
    backbone = Backbone(pipe, stats, compile)
    steps = check_steps(steps, maximum=step_limit(backbone))
    if xa_guidance is None:
        xa_guidance = 0.01 if backbone.prediction_type == "v_prediction" else 0.1
    xa_guidance = check_number(xa_guidance, "xa_guidance", minimum=0)
    if direction is not None:
        edit_directions.check(direction, pipe)
    original, picture = load_input(image, backbone, size, allow_large)
    caption, caption_source = _caption(picture, caption, captioner, source)
    if direction is None:
        direction = edit_directions.build(pipe, source, target)
    gen = generator(seed)
    stats.params.update(source=source, target=target, caption=caption, steps=steps, xa_guidance=xa_guidance,
                        guidance_scale=guidance_scale, reg_steps=reg_steps, lambda_ac=lambda_ac, lambda_kl=lambda_kl,
                        seed=seed, preset=preset, size=list(picture.size), input_size=list(original.size),
                        inversion_convention=CONVENTIONS[preset], compile=compile, store=store)
    stats.extra["caption_source"] = caption_source
    with Timer(stats, backbone.device), torch.no_grad():
        x0 = backbone.encode_image(to_tensor(picture), generator=gen, sample=preset == "reference")
        cond = backbone.encode_prompt(caption)
        grid = ddim_timesteps(backbone, steps)
        top = _regularized_inversion(backbone, cond, x0, grid, reg_steps, lambda_ac, lambda_kl, gen, CONVENTIONS[preset])
        edited = Cond(cond.embeds + direction.to(cond.embeds.device, cond.embeds.dtype))
        latents = _edit(pipe, backbone, top, cond, edited, list(reversed(grid)), xa_guidance, guidance_scale,
                        callback_on_step_end, Store(store, backbone.device))
        images = finish(backbone, latents, output_type, original.size)
    return Result(images=images, stats=stats, latents=latents, extra={"caption": caption, "inverted": top})


def _regularized_inversion(backbone, cond, x0, grid, reg_steps, lambda_ac, lambda_kl, gen, convention="diffusers"):
    """DDIM inversion with the caption (`convention` as inversion/ddim.py); ε regularised before every step
    (Sec. 3.2). Returns the latent the edit starts from at the top of `grid`."""
    steps = inverse_steps(grid, convention)

    def model_fn(x, t, j):
        out = backbone.unet_call(x, t, cond).float()
        if reg_steps == 0:
            return out
        alpha, sigma = level_alpha_sigma(backbone, steps[j].level_from)  # the level the step takes x to be at
        eps, _ = backbone.to_eps_x0(out, x, alpha, sigma)
        eps = regularize(eps, reg_steps, lambda_ac, lambda_kl, gen)
        if backbone.prediction_type == "epsilon":
            return eps
        return (eps - sigma * x.float()) / alpha  # back to v

    return ddim_invert(backbone, model_fn, x0, grid, convention=convention)[-1]


def _edit(pipe, backbone, x_top, cond, edited, descending, xa_guidance, guidance_scale, callback,
          store: Store | None = None):
    """Denoise with cross-attention guidance; two UNet calls per step (see module docstring). The gradient call's
    saved activations are placed by `store` (None: on the execution device; stats.store_bytes["guidance"])."""
    store = Store(None, backbone.device) if store is None else store
    rule = CrossAttentionGuidance(attention_layers(pipe.unet, "attn2"))
    controller = Controller()
    controller.add(rule)
    x_ref = x_edit = x_top.float()
    guided_cond = Cond.cat([cond, cond, edited])
    pair_cond = Cond.cat([cond, edited])
    with controller.installed(pipe.unet), pipe.progress_bar(total=len(descending)) as bar:
        for i, t in enumerate(descending):
            t_to = descending[i + 1] if i + 1 < len(descending) else None
            pair = x_edit.repeat(2, 1, 1, 1).requires_grad_(True)
            rule.enabled, rule.loss = True, None
            controller.set_call(i, t, [("ref", 1), ("edit", 2)], x_edit.shape[-2:])
            with torch.enable_grad():
                with store.saved_tensors():
                    out = backbone.unet_call(torch.cat([x_ref, pair]), t, guided_cond)
                grad, = backbone.unet_grad(rule.loss, pair)
            backbone.stats.store_bytes["guidance"] = store.saved_bytes
            rule.enabled, rule.loss = False, None
            x_ref = ddim_step(backbone, out[:1].detach(), x_ref, t, t_to)  # negative = caption: unguided
            pair = (pair - xa_guidance * grad).detach()
            controller.set_call(i, t, [("pair", 2)], x_edit.shape[-2:])
            eps = backbone.unet_call(pair, t, pair_cond).float()
            guided = eps[:1] + guidance_scale * (eps[1:] - eps[:1])
            x_edit = ddim_step(backbone, guided, pair[:1], t, t_to)
            x_edit = step_end(pipe, callback, i, t, x_edit)
            bar.update()
    return x_edit
