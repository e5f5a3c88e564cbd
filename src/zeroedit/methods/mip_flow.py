"""personalize (MIP-Adapter's merge) on FLUX.1 with diffusers' FLUX IP-Adapter (`ze.personalize` dispatches here
for flow pipelines).

The IP-Adapter is the one `pipe.load_ip_adapter(...)` loads on a FluxPipeline (FluxIPAdapterMixin: an
ImageProjection of CLIP image_embeds into 4 tokens of the T5 width, and FluxIPAdapterAttnProcessor on every
double-stream block, whose image-attention term s·Attn(Q_image, to_k_ip(c), to_v_ip(c)) the block adds to the
image tokens after its feed-forward). In every double-stream block the merge of methods/mip.py is applied to that
term, one object at a time:
    ip_term = Σ_i Ã_i ⊙ s·Attn(Q, to_k_ip(c_i), to_v_ip(c_i))
- A_i: the relevance of object i's phrase, read from the block's own joint attention: the image→text block of
  its logits restricted to the phrase's T5 tokens (image queries after RoPE · the phrase's text keys, × the
  layer's scale), softmax over image positions, mean over heads and the phrase's tokens; Ã_i = A_i / Σ_j A_j
  (clamped at 1e-12). The phrase's tokens are its T5 tokens inside the prompt's own sequence
  (`phrase_encoding="prompt"`, the only choice here): in MM-DiT the text tokens a block attends to are the text
  stream's states after every earlier block, so a phrase "encoded alone" (the paper's choice on the UNet, whose
  cross-attention keys come straight from the text encoder) has no keys of its own in a block.
- `weighting="uniform"`: Ã_i ≡ 1 — one softmax per object, summed (the baseline).
- No trained gate (ĝ ≡ 1): there is no MIP checkpoint for FLUX; `mip_weights` is refused.
Several images of one object: their projected tokens are averaged. Any number of objects.

Generation: FluxPipeline's sampling (Euler on its σ grid, the guidance embedding at `guidance_scale`, 3.5 by
default; no CFG branch, so no negative prompt), one transformer call per step at batch 1 — exactly plain FLUX
generation's calls. The IP-Adapter scale defaults to 1.0 (diffusers' FLUX IP-Adapter example).
SD3/SD3.5: diffusers' SD3 IP-Adapter (SD3IPAdapterJointAttnProcessor2_0, a timestep-conditioned resampler) is not
mirrored by zeroedit's control yet: UnsupportedModel. Pipelines that take reference images natively
(`backbone.takes_references`: Qwen-Image-Edit-Plus) run methods/mip_refs.py after the checks shared here; other
flow families: UnsupportedModel naming what is missing (`backbone.unsupported`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbones import backbone_for
from ..backbones.flow import FLUX_GUIDANCE
from ..control import Controller, Rule, joint_attention_layers
from ..control.core import _heads
from ..errors import ModelError, ParameterError, UnsupportedModel
from ..inversion import euler
from ..result import Result, Stats, Timer
from .common import (FLOW_VARIANTS, check_callback, check_choice, check_number, check_output_type, check_steps,
                     finish, generator, randn, step_end, step_limit)
from .mip import WEIGHTINGS, _check_references, _image_size, _phrase_in_prompt

FLUX_IP_SCALE = 1.0


class PhraseRelevance(Rule):
    """MIP's relevance on MM-DiT joint attention (module docstring): each object's phrase relevance Ã over the image
    positions, and its mean over the layers and steps it was computed in (`maps`)."""

    stream = "joint"

    def __init__(self, layers, phrases: list[tuple[int, int]]):
        super().__init__(layers)
        self.phrases = phrases
        self.maps_sum, self.maps_count = None, 0

    def relevance(self, ctx, q, k) -> torch.Tensor:
        """Ã (objects, B, N): each phrase's attention over image positions (its columns of the image→text block
        of the logits, softmax over image positions), normalised across objects."""
        image_q, text_k = q[:, :, ctx.split.image], k[:, :, ctx.split.text]
        maps = []
        for start, count in self.phrases:
            keys = text_k[:, :, start:start + count]
            scores = (keys @ image_q.transpose(-1, -2)) * ctx.scale  # (B, heads, tokens, N)
            maps.append(scores.float().softmax(dim=-1).mean(dim=(1, 2)))
        maps = torch.stack(maps)
        maps = maps / maps.sum(0, keepdim=True).clamp_min(1e-12)
        h, w = ctx.grid
        mean = maps.mean(1).reshape(len(self.phrases), h, w).float()
        self.maps_sum = mean if self.maps_sum is None else self.maps_sum + mean
        self.maps_count += 1
        return maps

    @property
    def maps(self) -> torch.Tensor | None:
        """(objects, h, w): the mean relevance map of each object (None when none was computed)."""
        return None if self.maps_sum is None else self.maps_sum / self.maps_count


class FluxMultiObjectMerge(PhraseRelevance):
    """MIP's merge of per-object image attention on FLUX double-stream blocks (module docstring)."""

    def __init__(self, layers, phrases: list[tuple[int, int]], groups: list[list[int]], scale: float, weighting: str):
        super().__init__(layers, phrases)
        self.groups, self.scale, self.weighting = groups, scale, weighting

    def qkv(self, ctx, q, k, v):
        if ctx.ip_states is None:
            return q, k, v
        proc, heads = ctx.original, ctx.attn.heads
        states = ctx.ip_states[0]  # (B, images, tokens, dim) from the image projection
        weights = self.relevance(ctx, q, k) if self.weighting == "relevance" else None
        total = 0
        for index, group in enumerate(self.groups):
            tokens = states[:, group].mean(1)
            key, value = _heads(proc.to_k_ip[0](tokens), heads), _heads(proc.to_v_ip[0](tokens), heads)
            z = F.scaled_dot_product_attention(ctx.ip_query, key.to(q.dtype), value.to(q.dtype))
            z = self.scale * z.transpose(1, 2).flatten(2, 3)  # (B, N, dim)
            total = total + (z if weights is None else z * weights[index][..., None].to(z.dtype))
        ctx.ip_output, ctx.ip_handled = total, True
        return q, k, v


def _check_flux_adapter(pipe):
    projection = getattr(pipe.transformer, "encoder_hid_proj", None)
    if projection is None or not hasattr(projection, "image_projection_layers") or getattr(pipe, "image_encoder", None) is None:
        raise ModelError("personalize needs a FLUX IP-Adapter loaded with diffusers' pipe.load_ip_adapter(...) (and its "
                         "image encoder), e.g. pipe.load_ip_adapter('XLabs-AI/flux-ip-adapter', weight_name="
                         "'ip_adapter.safetensors', image_encoder_pretrained_model_name_or_path='openai/clip-vit-large-"
                         "patch14'); ze.load('tiny-flux', ip_adapter=True) for the offline tiny model.")
    if projection.num_ip_adapters != 1:
        raise ModelError("personalize works with exactly one loaded IP-Adapter; unload the others.")


def personalize_flow(pipe, prompt, references, scale, weighting, phrase_encoding, mip_weights, steps, guidance_scale,
                     negative_prompt, height, width, seed, output_type, callback, compile, size=None,
                     allow_large=False) -> Result:
    """`ze.personalize` on a FLUX pipeline (module docstring); on pipelines that take reference images natively
    (`takes_references`) methods/mip_refs.py after the checks they share."""
    backbone = backbone_for(pipe, None, compile)
    if backbone.family != "flux" and not backbone.takes_references:
        raise UnsupportedModel(backbone.unsupported.get("personalize") or "personalize runs on UNet pipelines (SD 1.x, "
                               f"2.x, XL), FLUX.1 with an IP-Adapter and pipelines that take reference images, not on "
                               f"{backbone.family}.")
    objects = _check_references(prompt, references)
    check_choice(weighting, "weighting", WEIGHTINGS)
    if phrase_encoding not in (None, "prompt"):
        raise ParameterError(f"phrase_encoding={phrase_encoding!r}: on flow transformers the relevance comes from the "
                             "phrase's tokens inside the prompt (None or 'prompt'); a phrase encoded alone has no keys "
                             "in MM-DiT blocks.")
    check_output_type(output_type)
    check_callback(callback)
    steps = check_steps(steps, maximum=step_limit(backbone))
    if mip_weights is not None:
        raise ParameterError("mip_weights: the MIP checkpoints are for SDXL; on flow transformers the merge runs "
                             "without a trained gate (leave mip_weights None).")
    if backbone.takes_references:
        return FLOW_VARIANTS["personalize-references"](pipe, backbone, prompt, objects, scale, weighting, steps,
                                                       guidance_scale, negative_prompt, height, width, seed,
                                                       output_type, callback, size, allow_large)
    if negative_prompt is not None:
        raise ParameterError("negative_prompt: FLUX.1 samples with its guidance embedding and no negative branch; "
                             "leave it None.")
    scale = check_number(FLUX_IP_SCALE if scale is None else scale, "scale")
    guidance = check_number(FLUX_GUIDANCE if guidance_scale is None else guidance_scale, "guidance_scale")
    _check_flux_adapter(pipe)
    width, height = _image_size(backbone, size, width, height, allow_large, backbone.size_multiple)
    length = backbone.t5_length()
    spans = [_phrase_in_prompt(pipe.tokenizer_2, prompt, p, length) for p, _ in objects]
    gen = generator(seed)
    stats = Stats(params=dict(prompt=prompt, objects=[p for p, _ in objects], images=[len(i) for _, i in objects],
                              scale=float(scale), weighting=weighting, phrase_encoding="prompt", mip_weights=None,
                              steps=steps, guidance_scale=float(guidance), negative_prompt=None, height=height,
                              width=width, size=[width, height], seed=seed, compile=compile))
    backbone.stats = stats
    with Timer(stats, backbone.device), torch.no_grad():
        text = backbone.encode_prompt(prompt)
        images = [img for _, imgs in objects for img in imgs]
        groups, start = [], 0
        for _, imgs in objects:
            groups.append(list(range(start, start + len(imgs))))
            start += len(imgs)
        embeds = pipe.encode_image(images, backbone.device, 1)[None].to(backbone.dtype)  # (1, images, dim)
        rule = FluxMultiObjectMerge(joint_attention_layers(pipe.transformer, "double"), spans, groups, float(scale),
                                    weighting)
        latents = _generate(pipe, backbone, rule, text, embeds, steps, float(guidance), height, width, gen, callback)
        images = finish(backbone, latents, output_type)
    return Result(images=images, stats=stats, latents=latents,
                  extra={"relevance_maps": rule.maps, "objects": [p for p, _ in objects]})


def _generate(pipe, backbone, rule, text, embeds, steps, guidance, height, width, gen, callback):
    """FluxPipeline's sampling: Euler on its σ grid with the guidance embedding, one call per step."""
    channels = pipe.transformer.config.in_channels // 4
    shape = (1, channels, height // backbone.vae_scale, width // backbone.vae_scale)
    x = randn(shape, gen, backbone.device, torch.float32)
    sigmas = backbone.sigmas(steps, shape[-2:])
    grid = backbone.token_grid(shape[-2:])
    controller = Controller()
    controller.add(rule)
    kwargs = {"ip_adapter_image_embeds": [embeds]}

    def velocity(z, sigma, i, stage):
        controller.set_call(i, sigma, [("cond", 1)], grid)
        return backbone.transformer_call(z, sigma, text, guidance, attention_kwargs=kwargs)

    with controller.installed(pipe.transformer), pipe.progress_bar(total=steps) as bar:
        def on_step(i, sigma_next, z):
            bar.update()
            return step_end(pipe, callback, i, sigmas[i] * backbone.num_train_timesteps, z)
        return euler(velocity, x, sigmas, on_step)[-1]


FLOW_VARIANTS["personalize"] = personalize_flow  # ze.personalize on SD3/FLUX pipelines (methods/mip.py dispatches here)
