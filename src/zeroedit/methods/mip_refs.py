"""personalize (MIP-Adapter's relevance weighting) on flow pipelines whose transformer takes reference images
natively (`backbone.takes_references`: FLUX.2 [dev] / [klein], Qwen-Image-Edit-Plus); methods/mip_flow.py checks
the shared arguments and dispatches here.

Such a pipeline appends each reference image's packed latents after the image tokens ([text, image, ref 1, ref 2,
…]; Qwen-Image-Edit-Plus also shows the images to its Qwen2.5-VL text encoder, "Picture k: <image>" before the
prompt) and lets every token attend to every reference: each reference can act anywhere in the image, so two
objects' references mix (MIP-Adapter's "object confusion"). MIP's merge weights object i's image attention at image
position p by its relevance, ip = Σ_i Ã_i ⊙ Attn_i (methods/mip.py, mip_flow.py). With native references that image
attention is the joint attention's image→reference block, which shares the block's one softmax; so the weighting is
one logits rule (`ReferenceRelevance`) in every block: the logit of image query p on each token of object i's
references gets + log(s·Ã_i(p)) — that reference's unnormalised attention weight × s·Ã_i(p) before the softmax
renormalises — the one place that scales each reference's contribution position by position without changing how
text and image tokens attend to each other. Text and reference queries are unchanged.
- Ã_i: as on FLUX.1 (mip_flow.PhraseRelevance): the image→text logits of object i's phrase tokens inside the
  prompt's own encoding (the chat template's and the images' tokens around it: `backbone.token_offsets`), softmax
  over image positions, mean over heads and tokens, normalised across objects; from the conditional branch's
  queries and keys of that block, applied to every branch of the call (the unconditional text holds no phrase).
  One object: Ã ≡ 1.
- s = `scale` (default 1.0: the pipeline's own strength of the references).
- `weighting="uniform"` with scale 1: no rule at all — exactly the pipeline's own multi-reference generation.
- Several images of one object: each is a reference of its own, all weighted by that object's Ã.
- Cost: the rule reads the attention matrix in every block, so those layers leave their attention kernel for an
  explicit softmax over (text + image + reference tokens)² per head.
Generation: the pipeline's sampling (Euler on its σ grid), its guidance (FLUX.2 [dev]: the embedding; [klein] base
and Qwen-Image: true CFG with the negative prompt "" (Qwen: also shown the images), in ONE call per step; [klein]
distilled: none): plain generation's calls (30 at the default steps). MIP's trained gate does not exist here
(`mip_weights` refused by mip_flow).
"""
from __future__ import annotations

import math

import torch

from ..backbones import Cond
from ..control import Controller, joint_attention_layers
from ..errors import ParameterError
from ..inversion import euler
from ..result import Result, Stats, Timer
from .common import FLOW_VARIANTS, check_number, finish, generator, randn, step_end
from .mip import _image_size, _phrase_span
from .mip_flow import PhraseRelevance

REFERENCE_SCALE = 1.0


class ReferenceRelevance(PhraseRelevance):
    """+ log(s·Ã_i(p)) on the logits of image query p on the tokens of object i's references (module docstring).
    owners: the object of each reference image; counts: each reference image's tokens."""

    needs_logits = True

    def __init__(self, layers, phrases: list[tuple[int, int]], owners: list[int], counts: list[int], scale: float,
                 weighting: str):
        super().__init__(layers, phrases)
        self.owners, self.counts, self.weighting = owners, counts, weighting
        self.log_scale, self.bias = math.log(scale), None

    def qkv(self, ctx, q, k, v):
        """Per object, the bias log(s·Ã_i) over the image positions (objects, 1, N), from the conditional branch."""
        bias = torch.full((len(self.phrases), 1, ctx.split.image.stop - ctx.split.image.start), self.log_scale,
                          device=q.device)
        if self.weighting == "relevance":
            rows = ctx.branch("cond") if ctx.controller.has_branch("cond") else slice(0, 1)
            bias = bias + self.relevance(ctx, q[rows][:1], k[rows][:1]).clamp_min(1e-12).log()
        self.bias = bias
        return q, k, v

    def logits(self, ctx, logits):
        start = ctx.split.references.start
        for owner, count in zip(self.owners, self.counts):
            logits[:, :, ctx.split.image, start:start + count] += self.bias[owner][:, None, :, None].to(logits.dtype)
            start += count
        return logits


def personalize_references(pipe, backbone, prompt, objects, scale, weighting, steps, guidance_scale, negative_prompt,
                           height, width, seed, output_type, callback, size=None, allow_large=False) -> Result:
    """`ze.personalize` on a pipeline that takes reference images (module docstring), after mip_flow's checks."""
    scale = check_number(REFERENCE_SCALE if scale is None else scale, "scale")
    if scale <= 0:
        raise ParameterError(f"scale multiplies the references' attention weights and must be > 0, got {scale!r}.")
    guidance = check_number(backbone.default_guidance if guidance_scale is None else guidance_scale, "guidance_scale")
    if negative_prompt is not None and not (isinstance(negative_prompt, str) and backbone.has_cfg):
        raise ParameterError(f"negative_prompt must be a string on pipelines with classifier-free guidance and None on "
                             f"the others ({type(pipe).__name__} {'has' if backbone.has_cfg else 'has no'} CFG), got "
                             f"{negative_prompt!r}.")
    negative = "" if negative_prompt is None else negative_prompt
    width, height = _image_size(backbone, size, width, height, allow_large, backbone.size_multiple)
    images = [image for _, group in objects for image in group]
    owners = [index for index, (_, group) in enumerate(objects) for _ in group]
    gen = generator(seed)
    stats = Stats(params=dict(prompt=prompt, objects=[p for p, _ in objects], images=[len(i) for _, i in objects],
                              scale=float(scale), weighting=weighting, phrase_encoding="prompt", mip_weights=None,
                              steps=steps, guidance_scale=float(guidance),
                              negative_prompt=negative if backbone.has_cfg else None, height=height, width=width,
                              size=[width, height], seed=seed))
    backbone.stats = stats
    shown, references = backbone.reference_inputs(images)  # checks every image before the first VAE call
    with Timer(stats, backbone.device), torch.no_grad():
        text = backbone.encode_prompt(prompt, images=shown)
        spans = _spans(backbone, prompt, objects, text)
        cond = Cond.cat([backbone.encode_negative(negative, images=shown), text]) if backbone.has_cfg else text
        counts = backbone.reference_counts(references)
        model = backbone.transformer
        rule = None
        if weighting == "relevance" or scale != 1.0:
            layers = joint_attention_layers(model, "double") + joint_attention_layers(model, "single")
            rule = ReferenceRelevance(layers, spans, owners, counts, scale, weighting)
        latents = _generate(pipe, backbone, rule, cond, references, sum(counts), steps, float(guidance), height, width,
                            gen, callback)
        pictures = finish(backbone, latents, output_type)
    return Result(images=pictures, stats=stats, latents=latents,
                  extra={"relevance_maps": None if rule is None else rule.maps, "objects": [p for p, _ in objects]})


def _spans(backbone, prompt: str, objects, text: Cond) -> list[tuple[int, int]]:
    """(first token, tokens) of each object's phrase in the encoded sequence."""
    offsets = backbone.token_offsets(prompt, text)
    spans = [_phrase_span(offsets, prompt, phrase) for phrase, _ in objects]
    for (phrase, _), span in zip(objects, spans):
        if span is None:
            raise ParameterError(f"the phrase {phrase!r} is not among the prompt's tokens the text encoder keeps; use a "
                                 "shorter prompt.")
    return spans


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
        out = backbone.transformer_call(z.expand(len(cond), -1, -1, -1), sigma, cond, guidance, references=references)
        return backbone.guided(out, guidance)

    with controller.installed(pipe.transformer), pipe.progress_bar(total=steps) as bar:
        def on_step(i, sigma_next, z):
            bar.update()
            return step_end(pipe, callback, i, sigmas[i] * backbone.num_train_timesteps, z)
        return euler(velocity, x, sigmas, on_step)[-1]


FLOW_VARIANTS["personalize-references"] = personalize_references  # mip_flow.personalize_flow dispatches here
