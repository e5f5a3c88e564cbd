"""personalize (MIP-Adapter's relevance weighting) on flow pipelines that take reference images natively
(`backbone.takes_references`: Qwen-Image-Edit-Plus); methods/mip_flow.py checks the shared arguments and
dispatches here.

Such a pipeline appends each reference image's packed latents after the image tokens (Qwen-Image-Edit-Plus also
shows the images to its Qwen2.5-VL text encoder, "Picture k: <image>" before the prompt), and every image position
attends to every reference. MIP's merge weights object i's image attention at image position p by its relevance:
ip = Σ_i Ã_i ⊙ Attn_i (methods/mip.py, mip_flow.py). With native references that image attention is the joint
attention's image→reference block, so the same weighting is one logits rule (`ReferenceRelevance`) in every
block: for image queries p, the logits on reference i's keys get + log Ã_i(p) — the exponentials of reference i's
scores × Ã_i(p) before the joint softmax renormalises — so each reference acts where its object's phrase is
relevant and fades where another object's is.
- Ã_i: as on FLUX.1 (mip_flow.PhraseRelevance): the image→text logits of object i's phrase tokens in the prompt's
  encoding (the prompt's place in the sequence from `backbone.prompt_start`), softmax over image positions, mean
  over heads and tokens, normalised across objects; from the conditional branch's queries and keys of that block,
  applied to both CFG branches (the unconditional text holds no phrase). One object: Ã ≡ 1 and the rule changes
  nothing.
- `weighting="uniform"`: no rule — the pipeline's own multi-reference generation (the baseline).
- Several images of one object: each is a reference of its own (its own "Picture k"), all weighted by that
  object's Ã.
- Cost: the rule reads the attention matrix in every block, so those layers leave their attention kernel for an
  explicit softmax over (image + reference + text tokens)² per head.
Generation: the pipeline's sampling (Euler on its σ grid, mu from the image tokens), its guidance (Qwen-Image: true
CFG, `guidance_scale` default 4.0, renormalised; negative prompt "" by default, also shown the images), every
branch in one transformer call per step. Reference images are prepared by the backbone (`reference_inputs`).
The adapter scale and MIP's trained gate do not exist here: `scale` and `mip_weights` are refused.
"""
from __future__ import annotations

import torch

from ..backbones import Cond
from ..control import Controller, joint_attention_layers
from ..errors import ParameterError
from ..inversion import euler
from ..result import Result, Stats, Timer
from .common import FLOW_VARIANTS, check_number, finish, generator, randn, step_end
from .mip import _image_size, _phrase_in_prompt
from .mip_flow import PhraseRelevance


class ReferenceRelevance(PhraseRelevance):
    """+ log Ã_i(p) on the logits of image query p on object i's reference keys (module docstring)."""

    needs_logits = True

    def __init__(self, layers, phrases: list[tuple[int, int]], owned: list[list[slice]]):
        super().__init__(layers, phrases)
        self.owned = owned  # per object: its references' token ranges inside the reference tokens
        self.weights = None

    def qkv(self, ctx, q, k, v):
        rows = ctx.branch("cond")
        self.weights = self.relevance(ctx, q[rows], k[rows])  # (objects, 1, N)
        return q, k, v

    def logits(self, ctx, logits):
        image, start = ctx.split.image, ctx.split.references.start
        logits = logits.clone()
        for weights, ranges in zip(self.weights, self.owned):
            bias = weights.clamp_min(1e-12).log()[:, None, :, None].to(logits.dtype)  # (1, 1, N, 1)
            for part in ranges:
                logits[:, :, image, start + part.start:start + part.stop] += bias
        return logits


def personalize_references(pipe, backbone, prompt, objects, scale, weighting, steps, guidance_scale, negative_prompt,
                           height, width, seed, output_type, callback, size=None, allow_large=False) -> Result:
    """`ze.personalize` on a pipeline that takes reference images (module docstring), after mip_flow's checks."""
    if scale is not None:
        raise ParameterError(f"scale: {type(pipe).__name__} takes reference images natively; there is no adapter "
                             "scale (leave it None).")
    guidance = check_number(backbone.default_guidance if guidance_scale is None else guidance_scale, "guidance_scale")
    negative = "" if negative_prompt is None else negative_prompt
    if not isinstance(negative, str) or (negative_prompt is not None and not backbone.has_cfg):
        raise ParameterError(f"negative_prompt must be a string on pipelines with CFG and None on the others, got "
                             f"{negative_prompt!r}.")
    width, height = _image_size(backbone, size, width, height, allow_large, backbone.size_multiple)
    spans = [_phrase_in_prompt(pipe.tokenizer, prompt, phrase) for phrase, _ in objects]
    gen = generator(seed)
    stats = Stats(params=dict(prompt=prompt, objects=[p for p, _ in objects], images=[len(i) for _, i in objects],
                              weighting=weighting, phrase_encoding="prompt", mip_weights=None, steps=steps,
                              guidance_scale=float(guidance), negative_prompt=negative if backbone.has_cfg else None,
                              height=height, width=width, size=[width, height], seed=seed))
    backbone.stats = stats
    with Timer(stats, backbone.device), torch.no_grad():
        shown, references = backbone.reference_inputs([image for _, images in objects for image in images])
        text = backbone.encode_prompt(prompt, images=shown)
        start = backbone.prompt_start(text, prompt)
        cond = Cond.cat([backbone.encode_negative(negative, images=shown), text]) if backbone.has_cfg else text
        owned, total = _owned(backbone, objects, references)
        rule = None if weighting == "uniform" else ReferenceRelevance(
            joint_attention_layers(pipe.transformer, "double") or joint_attention_layers(pipe.transformer, "single"),
            [(start + first, count) for first, count in spans], owned)
        latents = _generate(pipe, backbone, rule, cond, references, total, steps, float(guidance), height, width, gen,
                            callback)
        images = finish(backbone, latents, output_type)
    return Result(images=images, stats=stats, latents=latents,
                  extra={"relevance_maps": None if rule is None else rule.maps, "objects": [p for p, _ in objects]})


def _owned(backbone, objects, references) -> tuple[list[list[slice]], int]:
    """Per object, the token ranges of its references inside the reference tokens (in the order the images were
    given); and the reference tokens in all."""
    owned, offset, latents = [], 0, iter(references)
    for _, images in objects:
        ranges = []
        for _ in images:
            h, w = backbone.token_grid(next(latents).shape[-2:])
            ranges.append(slice(offset, offset + h * w))
            offset += h * w
        owned.append(ranges)
    return owned, offset


def _generate(pipe, backbone, rule, cond, references, reference_tokens, steps, guidance, height, width, gen, callback):
    """The pipeline's sampling: Euler on its σ grid, every branch in one call per step with the references."""
    channels = pipe.transformer.config.in_channels // backbone.patch ** 2
    shape = (1, channels, height // backbone.vae_scale, width // backbone.vae_scale)
    x = randn(shape, gen, backbone.device, torch.float32)
    sigmas = backbone.sigmas(steps, shape[-2:])
    grid = backbone.token_grid(shape[-2:])
    branches = [("uncond", 1), ("cond", 1)] if backbone.has_cfg else [("cond", 1)]
    controller = Controller()
    if rule is not None:
        controller.add(rule)

    def velocity(z, sigma, i, stage):
        controller.set_call(i, sigma, branches, grid, reference_tokens=reference_tokens)
        out = backbone.transformer_call(torch.cat([z] * len(branches)), sigma, cond, guidance, references=references)
        return backbone.guided(out, guidance)

    with controller.installed(pipe.transformer), pipe.progress_bar(total=steps) as bar:
        def on_step(i, sigma_next, z):
            bar.update()
            return step_end(pipe, callback, i, sigmas[i] * backbone.num_train_timesteps, z)
        return euler(velocity, x, sigmas, on_step)[-1]


FLOW_VARIANTS["personalize-references"] = personalize_references  # mip_flow.personalize_flow dispatches here
