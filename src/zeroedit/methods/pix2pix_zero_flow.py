"""edit (pix2pix-zero) on SD3/FLUX flow transformers (`ze.edit` dispatches here for flow pipelines).

The algorithm of methods/pix2pix_zero.py, with its regulariser and its cross-attention loss imported from there;
what differs is the flow ODE, the text spaces and where the attention maps are read:
1. Caption (as on the UNet), VAE-encode (posterior mean).
2. Regularised inversion: Euler steps of the flow ODE (σ 0 → 1) with the caption (the first-order analogue of
   pix2pix-zero's DDIM inversion). Before each step the noise the velocity implies, ε̂ = x + (1 − σ)·v
   (x_σ = (1 − σ)·x₀ + σ·ε, v = ε − x₀), is regularised exactly as on the UNet (pix2pix_zero.regularize:
   auto-correlation and KL steps) and turned back into a velocity.
3. Direction Δ (`ze.directions.build`: a Cond of the token-state and pooled-vector differences) added to the
   caption's conditioning of the edit branch.
4. Cross-attention guidance: a reference branch re-runs the sampling from the inverted latent with the caption;
   at every Euler step the edit pair [x⁰ (caption), x¹ (caption + Δ)] takes one gradient step of size
   `xa_guidance` on Σ_layers ‖A_edit − A_ref‖², A = the image→text block of the joint attention's probabilities
   (image queries × text keys of the joint softmax), in the guided blocks; then the step
   v(x⁰, c) + s·(v(x¹, c + Δ) − v(x⁰, c)) is taken from x⁰. On FLUX-dev this is "true CFG" over the two
   conditionings (its distilled guidance embedding stays at `guidance_embedding`, 1.0 as the inversion, so the
   reference branch reconstructs); on SD3 the ordinary CFG with the caption as negative (as pix2pix-zero for
   real images).
The maps are read from q and k piece by piece (`ImageToTextGuidance`): the layers attend with their own kernel and
no gradient call keeps an attention matrix, so at 1024² on FLUX.1-dev the call fits 16 GB with group offloading and
checkpointing (zeroedit.memory). Memory of the gradient call (benchmarks/edit_flow.py: a FLUX-layout random
transformer with 4 double- and 8 single-stream blocks at 512², CPU; peak live saved activations): every block guided,
full forward 856 MB; double blocks guided, full forward 427 MB; double blocks, stopped after the last (the default)
293 MB; + checkpointing 3.9 MB; the first block only 74 MB (one piece at this size: kept, not recomputed).
- the gradient call runs the transformer only up to the last guided block (a control feature rule stops the
  forward there): guidance on the double-stream blocks of FLUX skips every single-stream block in the forward
  and in the backward; the reference branch's velocity comes from the second (no-grad) call instead;
- `guidance_blocks`: None = every double-stream (FLUX) / joint (SD3) block; an int k = the first k blocks;
- `checkpointing=True`: diffusers' gradient checkpointing of the transformer blocks during the gradient call
  (restored afterwards): activations recomputed in the backward instead of kept.
Calls per edit at defaults (50 steps): 50 inversion + 2·50 (one partial with gradient, one full) = 150
sequential calls, 50 backward passes — as on the UNet.
"""
from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint

from .. import directions as edit_directions
from ..backbones import Cond, backbone_for
from ..control import Controller, Rule, Store, joint_attention_layers
from ..control.streams import PIECE_ELEMENTS
from ..errors import ParameterError
from ..images import to_tensor
from ..inversion import euler
from ..result import Result, Stats, Timer
from .common import FLOW_VARIANTS, check_number, check_steps, finish, generator, load_input, step_end, step_limit
from .pix2pix_zero import CrossAttentionGuidance, _caption, regularize


def _image_to_text_loss(q, k, mask, scale: float, text: slice, ref: slice, edit: slice) -> torch.Tensor:
    """Σ_{queries, text keys} (A_edit − A_ref)², mean over the edit rows and heads, for the image queries `q` (B,
    heads, n, d): A = the joint softmax's probabilities on the text keys, exp(q·k_t·s − logsumexp_j q·k_j·s) over
    every key j (+ the layer's additive `mask`)."""
    logits = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        logits = logits + mask
    logits = logits.float()
    maps = (logits[..., text] - logits.logsumexp(-1, keepdim=True)).exp()
    return (maps[edit] - maps[ref].detach()).pow(2).sum((-1, -2)).mean()


class ImageToTextGuidance(CrossAttentionGuidance):
    """pix2pix-zero's cross-attention loss on the image→text block of joint attention (the joint softmax's
    probabilities of image queries on text keys), built from q and k for a piece of the image queries at a time
    (at most PIECE_ELEMENTS logits), each piece recomputed in the backward (torch.utils.checkpoint) when there are
    several (one piece is kept as it is): neither the forward nor the backward holds the attention matrix (3 × 24 × 4608² logits per block at 1024² on FLUX.1), only
    one piece of it, and the layer attends with its own kernel (no rule of it needs the matrix). The loss equals the
    one read off the full matrix (CrossAttentionGuidance.probs), summed piece by piece."""

    stream = "joint"
    needs_logits = False

    def qkv(self, ctx, q, k, v):
        split = ctx.split
        mask = ctx.mask[..., split.image, :] if ctx.mask is not None and ctx.mask.shape[-2] > 1 else ctx.mask
        image = q[:, :, split.image]
        ref, edit = ctx.branch("ref"), ctx.branch("edit")
        rows = max(1, PIECE_ELEMENTS // (q.shape[0] * q.shape[1] * k.shape[2]))
        for start in range(0, image.shape[2], rows):
            piece = image[:, :, start:start + rows]
            piece_mask = mask if mask is None or mask.shape[-2] == 1 else mask[..., start:start + rows, :]
            args = (piece, k, piece_mask, ctx.scale, split.text, ref, edit)
            if rows >= image.shape[2]:  # one piece: small enough to keep for the backward
                term = _image_to_text_loss(*args)
            else:
                term = torch.utils.checkpoint.checkpoint(_image_to_text_loss, *args, use_reentrant=False)
            self.loss = term if self.loss is None else self.loss + term
        return q, k, v


class _Stop(Exception):
    """Raised by StopAfter to end a forward pass early."""


class StopAfter(Rule):
    """Ends the transformer's forward after a block (a feature rule on it), once per armed call: the gradient
    call needs only the attention maps up to the last guided block."""

    target = "feature"

    def __init__(self, block: str):
        super().__init__([block], steps=lambda controller: self.armed)
        self.armed = False

    def feature(self, ctx, output):
        self.armed = False  # a checkpointed block's recomputation in the backward must pass
        raise _Stop


@contextlib.contextmanager
def gradient_checkpointing(model, enabled: bool):
    """diffusers' gradient checkpointing of `model` for the duration, then the model's own setting again."""
    before = bool(getattr(model, "gradient_checkpointing", False))
    if enabled and not before:
        model.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if enabled and not before:
            model.disable_gradient_checkpointing()


def _check_direction(backbone, direction) -> Cond:
    """A given direction as a Cond of this pipeline's shapes (a tensor: token states, pooled part zero), finite.
    Families whose texts have a length of their own (tokens None) take token states of up to their longest text."""
    (tokens, width), pooled = backbone.cond_shapes()

    def fits(states) -> bool:
        return (isinstance(states, torch.Tensor) and states.ndim == 3 and states.shape[0] == 1
                and states.shape[2] == width and (states.shape[1] == tokens if tokens else states.shape[1] >= 1))

    if fits(direction):
        direction = Cond(direction, None if pooled is None else torch.zeros(1, *pooled))
    pooled_ok = isinstance(direction, Cond) and (
        direction.pooled is None if pooled is None else
        isinstance(direction.pooled, torch.Tensor) and direction.pooled.shape[1:] == tuple(pooled))
    if not (isinstance(direction, Cond) and fits(direction.embeds) and pooled_ok):
        raise ParameterError(f"direction must be a Cond from ze.directions.build for this pipeline (token states "
                             f"(1, {tokens or 'L'}, {width}), pooled {None if pooled is None else tuple(pooled)}), a "
                             "path of a saved one, or a tensor of the token states' shape.")
    parts = [direction.embeds] + ([] if direction.pooled is None else [direction.pooled])
    if not all(torch.isfinite(part).all() for part in parts):
        raise ParameterError("direction contains NaN or inf; rebuild it with ze.directions.build.")
    return direction


def _shifted(cond: Cond, delta: Cond) -> Cond:
    """The caption's conditioning moved by the direction: token states + Δ position by position (Δ cut or
    zero-padded to the caption's length), pooled + Δ pooled."""
    length = cond.embeds.shape[1]
    states = torch.nn.functional.pad(delta.embeds, (0, 0, 0, max(0, length - delta.embeds.shape[1])))[:, :length]
    pooled = None if cond.pooled is None else cond.pooled + delta.pooled.to(cond.pooled)
    return Cond(cond.embeds + states.to(cond.embeds), pooled, cond.mask)


def _blocks(backbone, guidance_blocks) -> list[str]:
    """The guided layers: the two-stream blocks' (one-stream blocks' on families without two-stream blocks)."""
    model = backbone.transformer
    layers = joint_attention_layers(model, "double") or joint_attention_layers(model, "single")
    if guidance_blocks is None:
        return layers
    if isinstance(guidance_blocks, bool) or not isinstance(guidance_blocks, int) or not 1 <= guidance_blocks <= len(layers):
        raise ParameterError(f"guidance_blocks must be None (all) or a number of blocks in 1…{len(layers)}, got "
                             f"{guidance_blocks!r}.")
    return layers[:guidance_blocks]


def edit_flow(pipe, image, source, target, direction, caption, steps, xa_guidance, guidance_scale, reg_steps, lambda_ac,
              lambda_kl, seed, preset, output_type, callback, captioner, compile, flow: dict, size=None,
              allow_large=False, store=None) -> Result:
    """`ze.edit` on an SD3/FLUX pipeline (module docstring), after ze.edit's shared checks (preset, output type,
    seed, callbacks, reg_steps, guidance_scale, lambdas, texts, a direction path loaded). `flow`: guidance_blocks,
    checkpointing, guidance_embedding."""
    xa_guidance = check_number(0.1 if xa_guidance is None else xa_guidance, "xa_guidance", 0)
    embedding = check_number(1.0 if flow["guidance_embedding"] is None else flow["guidance_embedding"],
                             "guidance_embedding", 0)
    checkpointing = flow["checkpointing"]
    if not isinstance(checkpointing, bool):
        raise ParameterError(f"checkpointing must be True or False, got {checkpointing!r}.")
    backbone = backbone_for(pipe, None, compile)
    steps = check_steps(steps, maximum=step_limit(backbone))
    layers = _blocks(backbone, flow["guidance_blocks"])
    delta = None if direction is None else _check_direction(backbone, direction)
    original, picture = load_input(image, backbone, size, allow_large)
    caption, caption_source = _caption(picture, caption, captioner, source)
    delta = edit_directions.build(pipe, source, target) if delta is None else delta
    gen = generator(seed)
    stats = Stats(params=dict(source=source, target=target, caption=caption, steps=steps, xa_guidance=float(xa_guidance),
                              guidance_scale=float(guidance_scale), reg_steps=reg_steps, lambda_ac=float(lambda_ac),
                              lambda_kl=float(lambda_kl), seed=seed, preset=preset, size=list(picture.size),
                              input_size=list(original.size), compile=compile, guidance_blocks=len(layers), checkpointing=checkpointing,
                              guidance_embedding=float(embedding), solver="euler", store=store))
    stats.extra["caption_source"] = caption_source
    backbone.stats = stats
    with Timer(stats, backbone.device), torch.no_grad():
        x0 = backbone.encode_image(to_tensor(picture), generator=gen, sample=preset == "reference").float()
        cond = backbone.encode_prompt(caption)
        sigmas = backbone.sigmas(steps, x0.shape[-2:])
        top = _regularized_inversion(backbone, cond, x0, sigmas[::-1], reg_steps, float(lambda_ac), float(lambda_kl),
                                     float(embedding), gen)
        edited = _shifted(cond, delta)
        latents = _edit(pipe, backbone, top, cond, edited, sigmas, layers, float(xa_guidance), float(guidance_scale),
                        float(embedding), checkpointing, callback, Store(store, backbone.device))
        images = finish(backbone, latents, output_type, original.size)
    return Result(images=images, stats=stats, latents=latents, extra={"caption": caption, "inverted": top})


def _regularized_inversion(backbone, cond, x0, ascending, reg_steps, lambda_ac, lambda_kl, embedding, gen):
    """Euler inversion with the caption; the noise ε̂ = x + (1 − σ)·v regularised before every step. Returns x_1."""
    def model_fn(x, sigma, i, stage):
        v = backbone.transformer_call(x, sigma, cond, embedding).float()
        if reg_steps == 0:
            return v
        eps = regularize(x + (1 - sigma) * v, reg_steps, lambda_ac, lambda_kl, gen)
        return (eps - x) / (1 - sigma)

    return euler(model_fn, x0, ascending)[-1]


def _edit(pipe, backbone, x_top, cond, edited, sigmas, layers, xa_guidance, guidance_scale, embedding, checkpointing,
          callback, store: Store | None = None):
    """Euler sampling with cross-attention guidance; two calls per step (module docstring). The gradient call's
    saved activations are placed by `store` (None: on the execution device; stats.store_bytes["guidance"])."""
    store = Store(None, backbone.device) if store is None else store
    guide = ImageToTextGuidance(layers)
    stop = StopAfter(layers[-1].rsplit(".", 1)[0])  # the block of the last guided layer
    controller = Controller()
    controller.add(guide)
    controller.add(stop)
    grid = backbone.token_grid(x_top.shape[-2:])
    all_cond = Cond.cat([cond, cond, edited])
    x_ref = x_edit = x_top.float()
    with controller.installed(backbone.transformer), pipe.progress_bar(total=len(sigmas) - 1) as bar:
        for i in range(len(sigmas) - 1):
            sigma, h = sigmas[i], sigmas[i + 1] - sigmas[i]
            pair = x_edit.repeat(2, 1, 1, 1).requires_grad_(True)
            guide.enabled, guide.loss = True, None
            controller.set_call(i, sigma, [("ref", 1), ("edit", 2)], grid)
            with torch.enable_grad(), gradient_checkpointing(backbone.transformer, checkpointing):
                stop.armed = True
                with store.saved_tensors():
                    try:
                        backbone.transformer_call(torch.cat([x_ref, pair]), sigma, all_cond, embedding)
                    except _Stop:
                        pass
                grad, = backbone.unet_grad(guide.loss, pair)
            backbone.stats.store_bytes["guidance"] = store.saved_bytes
            guide.enabled, guide.loss, stop.armed = False, None, False
            pair = (pair - xa_guidance * grad).detach()
            controller.set_call(i, sigma, [("ref", 1), ("pair", 2)], grid)
            v = backbone.transformer_call(torch.cat([x_ref, pair]), sigma, all_cond, embedding).float()
            x_ref = x_ref + h * v[:1]  # the caption's own velocity: the reconstruction the maps are compared with
            x_edit = pair[:1] + h * (v[1:2] + guidance_scale * (v[2:] - v[1:2]))
            x_edit = step_end(pipe, callback, i, sigma * backbone.num_train_timesteps, x_edit)
            bar.update()
    return x_edit


FLOW_VARIANTS["edit"] = edit_flow  # ze.edit on SD3/FLUX pipelines (methods/pix2pix_zero.py dispatches here)
