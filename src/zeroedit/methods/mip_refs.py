"""personalize (MIP-Adapter's relevance weighting) on families whose transformer takes reference images natively
(FLUX.2; `ze.personalize` dispatches here when `backbone.takes_references`).

FLUX.2 appends the packed latents of every reference image after the image tokens ([text, image, ref 1, ref 2, …],
ids T = 10, 20, …) and lets all tokens attend to all: every reference can act anywhere in the image, so two
objects' references mix (MIP-Adapter's "object confusion"). Here each object's references act on its own object:
- relevance A_i (MIP's map of object i's phrase), per layer and call: the image→text block of the joint attention's
  logits restricted to the phrase's text tokens (image queries after RoPE · the phrase's keys × the layer's scale),
  softmax over image positions, mean over heads and the phrase's tokens — as methods/mip_flow.py on FLUX.1;
  Ã_i = A_i / Σ_j A_j (clamped at 1e-12). The phrase's tokens are found inside the prompt's own encoding (after
  the chat template; `phrase_encoding="prompt"`, the only choice: in MM-DiT the text keys are the text stream's
  states, a phrase encoded alone has none).
- weighting: in the joint attention of every block (double- and single-stream; the references are in both), the
  logit of image query p on each token of reference k (object i) gets + log(s·Ã_i(p)): the query's unnormalised
  attention weight on that reference is multiplied by s·Ã_i(p), before the one softmax over text, image and
  references. Why there: MIP merges per-object IP-Adapter attentions as Σ_i Ã_i ⊙ Attn(Q, K_i, V_i); FLUX.2 has no
  separate adapter attention — the references share the block's softmax — and a multiplicative weight on their
  keys is the one place that scales each reference's contribution position by position without changing how the
  text and image tokens attend to each other. Text and reference queries are unchanged.
  s = `scale` (1.0: FLUX.2's own strength). The maps of the conditional branch weight every branch of the call
  (true CFG on [klein] base: the unconditional branch keeps the references, as the pipeline, with the same weights).
- `weighting="uniform"` and scale 1: no rule at all — exactly FLUX.2's own multi-reference generation
  (Flux2Pipeline / Flux2KleinPipeline with `image=[…]`); with one object, "relevance" equals it too (Ã ≡ 1), up
  to the explicit attention the rule computes.
Several images of one object: each is a reference of its own (its own T id, as the pipeline), all weighted by the
object's Ã. No trained gate (`mip_weights` refused), no regions.

Generation: the pipeline's sampling (Euler on its σ grid; [dev] guidance embedding, [klein] base true CFG with the
negative prompt "" in one call, [klein] distilled neither), one transformer call per step: plain FLUX.2
generation's calls (30 at the default steps). Cost: the explicit attention matrix in every block (the rule reads
and edits logits), where plain generation runs the layer's attention kernel.
"""
from __future__ import annotations

import math

import torch

from ..backbones import Cond, backbone_for
from ..control import Controller, Rule, joint_attention_layers
from ..errors import ParameterError
from ..inversion import euler
from ..result import Result, Stats, Timer
from .common import (FLOW_VARIANTS, check_callback, check_choice, check_number, check_output_type, check_steps,
                     finish, generator, randn, step_end, step_limit)
from .mip import WEIGHTINGS, _check_references, _image_size, _phrase_span

REFERENCE_SCALE = 1.0


class ReferenceRelevance(Rule):
    """MIP's relevance weighting of each object's reference-image tokens in joint attention (module docstring)."""

    stream = "joint"
    needs_logits = True

    def __init__(self, layers, phrases: list[tuple[int, int]], owners: list[int], counts: list[int], scale: float,
                 weighting: str):
        super().__init__(layers)
        self.phrases, self.owners, self.counts = phrases, owners, counts
        self.log_scale, self.weighting = math.log(scale), weighting
        self.maps_sum, self.maps_count = None, 0

    def relevance(self, ctx, logits) -> torch.Tensor:
        """Ã (objects, B, N) from the image→text logits of each phrase (softmax over image positions)."""
        image, text = ctx.split.image, ctx.split.text.start
        maps = torch.stack([logits[:, :, image, text + start:text + start + count].float().softmax(dim=-2).mean(dim=(1, 3))
                            for start, count in self.phrases])
        return maps / maps.sum(0, keepdim=True).clamp_min(1e-12)

    def _keep(self, ctx, maps):
        mean = maps.mean(1).reshape(len(self.phrases), *ctx.grid)
        self.maps_sum = mean if self.maps_sum is None else self.maps_sum + mean
        self.maps_count += 1

    def logits(self, ctx, logits):
        bias = torch.full((len(self.phrases), 1, ctx.split.image.stop - ctx.split.image.start), self.log_scale,
                          device=logits.device)
        if self.weighting == "relevance":
            maps = self.relevance(ctx, logits)
            if ctx.controller.has_branch("cond"):  # the conditional branch's maps weight every branch
                maps = maps[:, ctx.branch("cond")][:, :1]
            self._keep(ctx, maps)
            bias = bias + maps.clamp_min(1e-12).log()
        start = ctx.split.references.start
        for owner, count in zip(self.owners, self.counts):
            logits[:, :, ctx.split.image, start:start + count] += bias[owner][:, None, :, None].to(logits.dtype)
            start += count
        return logits


def personalize_references(pipe, prompt, references, scale, weighting, phrase_encoding, mip_weights, steps,
                           guidance_scale, negative_prompt, height, width, seed, output_type, callback, compile,
                           size=None, allow_large=False) -> Result:
    """`ze.personalize` on a pipeline whose transformer takes reference images (module docstring)."""
    backbone = backbone_for(pipe, None, compile)
    objects = _check_references(prompt, references)
    check_choice(weighting, "weighting", WEIGHTINGS)
    if phrase_encoding not in (None, "prompt"):
        raise ParameterError(f"phrase_encoding={phrase_encoding!r}: on {backbone.family} the relevance comes from the "
                             "phrase's tokens inside the prompt (None or 'prompt').")
    if mip_weights is not None:
        raise ParameterError("mip_weights: the MIP checkpoints are IP-Adapter gates for SDXL; reference images need "
                             "none (leave mip_weights None).")
    if negative_prompt is not None and not backbone.has_cfg:
        raise ParameterError("negative_prompt: this model samples without a negative branch (a guidance embedding or "
                             "a distilled model); leave it None.")
    negative = "" if negative_prompt is None else negative_prompt
    if not isinstance(negative, str):
        raise ParameterError(f"negative_prompt must be a string, got {negative_prompt!r}.")
    check_output_type(output_type)
    check_callback(callback)
    steps = check_steps(steps, maximum=step_limit(backbone))
    scale = check_number(REFERENCE_SCALE if scale is None else scale, "scale")
    if scale <= 0:
        raise ParameterError(f"scale multiplies the references' attention weights and must be > 0, got {scale!r}.")
    guidance = check_number(backbone.default_guidance if guidance_scale is None else guidance_scale, "guidance_scale")
    width, height = _image_size(backbone, size, width, height, allow_large, backbone.size_multiple)
    offsets = backbone.token_offsets(prompt)
    spans = [_phrase_span(offsets, prompt, phrase) for phrase, _ in objects]
    for (phrase, _), span in zip(objects, spans):
        if span is None:
            raise ParameterError(f"the phrase {phrase!r} is not among the prompt's first {backbone.text_length()} "
                                 "tokens; use a shorter prompt.")
    images = [image for _, group in objects for image in group]
    owners = [index for index, (_, group) in enumerate(objects) for _ in group]
    gen = generator(seed)
    stats = Stats(params=dict(prompt=prompt, objects=[p for p, _ in objects], images=[len(i) for _, i in objects],
                              scale=float(scale), weighting=weighting, phrase_encoding="prompt", mip_weights=None,
                              steps=steps, guidance_scale=float(guidance),
                              negative_prompt=negative if backbone.has_cfg else None, height=height, width=width,
                              size=[width, height], seed=seed, compile=compile))
    backbone.stats = stats
    with Timer(stats, backbone.device), torch.no_grad():
        refs = backbone.encode_references(images)  # checks every image before the first VAE call
        text = backbone.encode_prompt(prompt)
        cond = Cond.cat([backbone.encode_negative(negative), text]) if backbone.has_cfg else text
        model = backbone.transformer
        layers = joint_attention_layers(model, "double") + joint_attention_layers(model, "single")
        rule = None
        if weighting == "relevance" or scale != 1.0:
            rule = ReferenceRelevance(layers, spans, owners, refs.counts, scale, weighting)
        latents = _generate(pipe, backbone, rule, cond, refs, steps, float(guidance), height, width, gen, callback)
        pictures = finish(backbone, latents, output_type)
    maps = None if rule is None or rule.maps_sum is None else rule.maps_sum / rule.maps_count
    return Result(images=pictures, stats=stats, latents=latents,
                  extra={"relevance_maps": maps, "objects": [p for p, _ in objects]})


def _generate(pipe, backbone, rule, cond, refs, steps, guidance, height, width, gen, callback):
    """The pipeline's sampling with the references in every call: Euler on its σ grid, one call per step."""
    shape = (1, backbone.transformer.config.in_channels, height // backbone.vae_scale, width // backbone.vae_scale)
    x = randn(shape, gen, backbone.device, torch.float32)
    sigmas = backbone.sigmas(steps, shape[-2:])
    grid = backbone.token_grid(shape[-2:])
    branches = [("uncond", 1), ("cond", 1)] if backbone.has_cfg else [("cond", 1)]
    controller = Controller()
    if rule is not None:
        controller.add(rule)

    def velocity(z, sigma, i, stage):
        controller.set_call(i, sigma, branches, grid, reference_tokens=refs.tokens.shape[1])
        out = backbone.transformer_call(z.expand(len(cond), -1, -1, -1), sigma, cond, guidance, references=refs)
        return backbone.guided(out, guidance)

    with controller.installed(backbone.transformer), pipe.progress_bar(total=steps) as bar:
        def on_step(i, sigma_next, z):
            bar.update()
            return step_end(pipe, callback, i, sigmas[i] * backbone.num_train_timesteps, z)
        return euler(velocity, x, sigmas, on_step)[-1]


FLOW_VARIANTS["personalize-references"] = personalize_references  # methods/mip.py dispatches here (takes_references)
