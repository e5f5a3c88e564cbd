"""personalize: MIP-Adapter multi-reference generation without object confusion (Huang et al. 2024).

Decoupled cross-attention with one image attention per object, merged by the object's relevance
(spec `methods/mip.md`), in every `attn2` layer:
    Z = Z_text + Σ_i (Ã_i ⊙ ĝ) ⊙ s·Attn(Q, to_k_ip(c_i), to_v_ip(c_i))
- A_i: the phrase p_i encoded on its own, keyed by the layer's own `to_k`; scores K_i·Qᵀ·scale, softmax over
  latent positions, mean over heads and the phrase's tokens (BOS/EOS skipped); the unconditional branch uses
  "" at the same token positions and zero-image tokens. Ã_i = A_i / Σ_j A_j (the denominator clamped at
  1e-12; the reference has no epsilon).
- ĝ: with `mip_weights` (the trained MIP checkpoint) g = sigmoid(text_to_weight(Z_text)), ĝ = g / mean_HW(g),
  and the checkpoint's to_k_ip/to_v_ip are used (the pipeline's own adapter is left untouched); without a
  checkpoint ĝ ≡ 1 — the training-free variant, zeroedit's own, not the paper's trained model.
- `weighting="uniform"`: Ã_i ≡ 1 — plain IP-Adapter summation with one softmax per object (the baseline).
- `phrase_encoding="prompt"` (zeroedit's own variant, off by default): A_i from the phrase's tokens inside the
  prompt's own encoding instead of the phrase encoded alone. A causal text encoder gives a later phrase a
  context-dependent embedding: on the toy model "ring" in "a star and a ring …" has cosine 0.01 with "ring"
  encoded alone, and the alone-maps come out flat (4 two-object toy cases, maps averaged over layers and
  steps: std 0.006–0.015 around 1/2 alone, 0.021–0.035 in the prompt).
Several images of one object: their projected tokens are averaged. Any number of objects; non-square sizes
(the layer grid comes from the latent size, no sqrt(HW)).

Cost: one UNet call per step with [uncond, cond] — exactly plain CFG generation's calls and evaluations;
self-attention stays SDPA, cross-attention runs SDPA per object plus a (heads × phrase tokens × HW) score.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from ..backbones import Backbone, Cond, compile_options, is_flow
from ..control import Controller, Rule, attention_layers
from ..control.core import _heads
from ..errors import CheckpointError, ModelError, ParameterError
from ..images import load_image
from ..result import Result, Stats, Timer
from .common import check_choice, check_steps, finish, generator, randn, step_end

REFERENCE_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"
WEIGHTINGS = ("relevance", "uniform")
PHRASE_ENCODINGS = ("alone", "prompt")


class MultiObjectMerge(Rule):
    """The MIP merge of per-object image attention into the text cross-attention (module docstring)."""

    def __init__(self, layers, phrases: list[tuple[torch.Tensor, int, int]], groups: list[list[int]], scale: float,
                 weighting: str, gates: dict | None = None, ip_weights: dict | None = None, latent_hw=None):
        super().__init__(layers)
        self.phrases, self.groups, self.scale, self.weighting = phrases, groups, scale, weighting
        self.gates, self.ip_weights = gates or {}, ip_weights or {}
        self.maps_sum, self.maps_count = None, 0

    def _object_tokens(self, ctx) -> list[torch.Tensor]:
        """Per object (B, tokens, dim): projected image tokens averaged over that object's images."""
        states = ctx.ip_states[0]  # (B, images, tokens, dim) from diffusers' image projection
        return [states[:, group].mean(1) for group in self.groups]

    def _image_attention(self, ctx, q, tokens) -> torch.Tensor:
        proc, heads = ctx.original, ctx.attn.heads
        if ctx.name in self.ip_weights:
            to_k, to_v = self.ip_weights[ctx.name]
            key, value = F.linear(tokens, to_k.to(tokens)), F.linear(tokens, to_v.to(tokens))
        else:
            key, value = proc.to_k_ip[0](tokens), proc.to_v_ip[0](tokens)
        key, value = _heads(key, heads).to(q.dtype), _heads(value, heads).to(q.dtype)
        return self.scale * F.scaled_dot_product_attention(q, key, value, scale=ctx.attn.scale)

    def relevance(self, ctx, q) -> torch.Tensor:
        """Ã (objects, B, N): each phrase's attention over latent positions, normalised across objects."""
        maps = []
        for embeds, start, count in self.phrases:  # embeds: (B, 77, D) per branch ("" for uncond)
            keys = _heads(ctx.attn.to_k(embeds[:, start:start + count].to(q.dtype)), ctx.attn.heads)
            scores = (keys @ q.transpose(-1, -2)) * ctx.attn.scale  # (B, heads, count, N)
            maps.append(scores.float().softmax(dim=-1).mean(dim=(1, 2)))
        maps = torch.stack(maps)
        return maps / maps.sum(0, keepdim=True).clamp_min(1e-12)

    def _gate(self, ctx, out) -> torch.Tensor | float:
        if ctx.name not in self.gates:
            return 1.0
        z_text = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)  # (B, N, hidden)
        g = torch.sigmoid(F.linear(z_text.float(), self.gates[ctx.name].float()))  # (B, N, 1)
        return (g / g.mean(dim=1, keepdim=True))[:, None, :, :].to(out.dtype)  # (B, 1, N, 1)

    def _keep(self, ctx, weights):
        h, w = ctx.grid
        cond = weights[:, ctx.branch("cond")].mean(1).reshape(1, -1, h, w).float()
        target = ctx.controller.latent_hw
        cond = F.interpolate(cond, size=target, mode="bilinear", align_corners=False) if (h, w) != tuple(target) else cond
        self.maps_sum = cond[0] if self.maps_sum is None else self.maps_sum + cond[0]
        self.maps_count += 1

    def merge(self, ctx, out):
        if ctx.ip_states is None:
            return out
        q = self._q
        gate = self._gate(ctx, out)
        if self.weighting == "relevance":
            weights = self.relevance(ctx, q)
            self._keep(ctx, weights)
        merged = out
        for index, tokens in enumerate(self._object_tokens(ctx)):
            z = self._image_attention(ctx, q, tokens)
            if self.weighting == "relevance":
                z = z * weights[index][:, None, :, None].to(z.dtype)
            merged = merged + (z * gate if not isinstance(gate, float) else z)
        ctx.ip_handled = True
        return merged

    def qkv(self, ctx, q, k, v):
        self._q = q
        return q, k, v


# ----------------------------------------------------------------------------------------- inputs
def _phrase_tokens(pipe, phrase: str) -> int:
    ids = pipe.tokenizer(phrase, truncation=True, max_length=pipe.tokenizer.model_max_length).input_ids
    return max(len(ids) - 2, 1)


def _phrase_in_prompt(pipe, prompt: str, phrase: str) -> tuple[int, int]:
    """(first token position, token count) of the phrase's tokens inside the prompt's token ids."""
    limit = pipe.tokenizer.model_max_length
    ids = pipe.tokenizer(prompt, truncation=True, max_length=limit).input_ids
    words = pipe.tokenizer(phrase, add_special_tokens=False).input_ids
    for start in range(1, len(ids) - len(words) + 1):
        if ids[start:start + len(words)] == words:
            return start, len(words)
    raise ParameterError(f"the phrase {phrase!r} is not among the prompt's first {limit} tokens (or the tokenizer "
                         "splits it differently inside the prompt); use phrase_encoding='alone' or a shorter prompt.")


def _check_references(prompt: str, references) -> list[tuple[str, list]]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ParameterError(f"prompt must be a non-empty string, got {prompt!r}.")
    if not isinstance(references, dict) or not references:
        raise ParameterError("references must be a non-empty dict {phrase in the prompt: image or [images]}.")
    items = []
    for phrase, images in references.items():
        if not isinstance(phrase, str) or not re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", prompt, re.I):
            raise ParameterError(f"the phrase {phrase!r} does not appear in the prompt {prompt!r}; each key of "
                                 "references must be the words of the prompt that name its object.")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ParameterError(f"no reference image for {phrase!r}.")
        items.append((phrase.strip(), [load_image(img, f"reference for {phrase!r}") for img in images]))
    return items


def _check_adapter(pipe):
    projection = getattr(pipe.unet, "encoder_hid_proj", None)
    if projection is None or not hasattr(projection, "image_projection_layers") or getattr(pipe, "image_encoder", None) is None:
        raise ModelError("personalize needs an IP-Adapter loaded with diffusers' pipe.load_ip_adapter(...) (and its "
                         "image encoder); ze.load(model, ip_adapter={...}) does it, ze.load('tiny', ip_adapter=True) "
                         "for the offline tiny model.")
    if len(projection.image_projection_layers) != 1:
        raise ModelError("personalize works with exactly one loaded IP-Adapter; unload the others.")


def load_mip_weights(path, layers: list[str]) -> tuple[dict, dict]:
    """The MIP checkpoint's gates and adapter weights per attn2 layer (in attn_processors order: key ids
    1, 3, 5, …). Safetensors, or a pickle through torch.load(weights_only=True). Every layer must have its
    text_to_weight, to_k_ip and to_v_ip; nothing is dropped silently."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"mip_weights {str(path)!r} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            flat = load_file(str(path))
            state = {k[len("ip_adapter."):]: v for k, v in flat.items() if k.startswith("ip_adapter.")}
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True).get("ip_adapter", {})
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"could not read the MIP checkpoint {str(path)!r}: {error}") from None
    gates, ip_weights = {}, {}
    for index, name in enumerate(layers):
        key = 2 * index + 1
        try:
            gates[name] = state[f"{key}.text_to_weight.weight"]
            ip_weights[name] = (state[f"{key}.to_k_ip.weight"], state[f"{key}.to_v_ip.weight"])
        except KeyError as missing:
            raise CheckpointError(f"the MIP checkpoint has no {missing.args[0]!r}: it does not match this model's "
                                  f"{len(layers)} cross-attention layers.") from None
    expected = 3 * len(layers)
    if len(state) != expected:
        raise CheckpointError(f"the MIP checkpoint has {len(state)} adapter tensors, this model needs {expected}.")
    return gates, ip_weights


@torch.no_grad()
def _image_embeds(pipe, backbone, objects) -> tuple[torch.Tensor, list[list[int]]]:
    """Image-encoder embeddings of every reference, (2, images, …) for [uncond, cond], and each object's
    image indices. The unconditional branch gets zero images (plain adapters: zero embeddings), as diffusers."""
    from diffusers.models.embeddings import ImageProjection
    hidden = not isinstance(pipe.unet.encoder_hid_proj.image_projection_layers[0], ImageProjection)
    images = [img for _, imgs in objects for img in imgs]
    groups, start = [], 0
    for _, imgs in objects:
        groups.append(list(range(start, start + len(imgs))))
        start += len(imgs)
    cond, uncond = pipe.encode_image(images, backbone.device, 1, hidden)
    return torch.stack([uncond, cond]).to(backbone.dtype), groups


def personalize(pipe, prompt: str, references: dict, scale: float | None = None, weighting: str = "relevance",
                phrase_encoding: str | None = None, mip_weights=None, steps: int = 30, guidance_scale: float | None = None,
                negative_prompt: str | None = None, height: int | None = None, width: int | None = None, seed: int | None = None, output_type: str = "pil",
                callback_on_step_end=None, compile=False) -> Result:
    """Generate from `prompt` with one reference image (or several) per object named in it:
    references={"cat": img, "dog": [img1, img2]}. See the module docstring. `scale` (IP-Adapter scale)
    defaults to 0.75, guidance to 5.0 and the negative prompt to the reference's.

    Args:
        prompt: the text; it must name every object of references.
        references: {phrase in the prompt: image or [images]}, e.g. {"cat": "cat.png", "dog": ["d1.png", "d2.png"]}.
        scale: IP-Adapter scale (None: 0.75).
        weighting: "relevance" (the MIP merge) or "uniform" (plain IP-Adapter summation, the baseline).
        phrase_encoding: relevance keys from the phrase encoded "alone" (the paper; None on UNets) or from its tokens in the "prompt"'s encoding (zeroedit's variant; None on FLUX, see methods/mip_flow.py).
        mip_weights: path of the trained MIP checkpoint (safetensors, or a pickle read with weights_only=True); None: gate 1.
        steps: sampling steps of the pipeline's scheduler (30).
        guidance_scale: classifier-free guidance (None: 5.0).
        negative_prompt: None: the reference's negative prompt.
        height: image height in px (a multiple of the VAE factor; None: the model's default).
        width: image width in px (a multiple of the VAE factor; None: the model's default).
        seed: integer seed of every random draw (None: a fresh random seed).
        output_type: "pil" (default), "np", "pt" or "latent", as diffusers.
        callback_on_step_end: diffusers' callback(pipe, step, timestep, {"latents": ...}); may return new latents.
        compile: run the UNet under torch.compile (True, or a dict of torch.compile arguments); see the README.
    """
    if is_flow(pipe):
        from .mip_flow import personalize_flow
        return personalize_flow(pipe, prompt, references, scale, weighting, phrase_encoding, mip_weights, steps,
                                guidance_scale, negative_prompt, height, width, seed, output_type, callback_on_step_end,
                                compile)
    phrase_encoding = "alone" if phrase_encoding is None else phrase_encoding
    compile_options(compile)
    objects = _check_references(prompt, references)
    check_choice(weighting, "weighting", WEIGHTINGS)
    check_choice(phrase_encoding, "phrase_encoding", PHRASE_ENCODINGS)
    check_choice(output_type, "output_type", ("pil", "latent", "np", "pt"))
    steps = check_steps(steps)
    scale = 0.75 if scale is None else scale
    guidance = 5.0 if guidance_scale is None else guidance_scale
    for name, value in (("scale", scale), ("guidance_scale", guidance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"{name} must be a number, got {value!r}.")
    negative = REFERENCE_NEGATIVE if negative_prompt is None else negative_prompt
    if not isinstance(negative, str):
        raise ParameterError(f"negative_prompt must be a string, got {negative_prompt!r}.")
    _check_adapter(pipe)
    spans = [_phrase_in_prompt(pipe, prompt, p) if phrase_encoding == "prompt" else (1, _phrase_tokens(pipe, p))
             for p, _ in objects]
    backbone = Backbone(pipe, compile=compile)
    unit = backbone.vae_scale  # as diffusers: multiples of the VAE factor; the UNet pads odd levels
    height = height or pipe.unet.config.sample_size * backbone.vae_scale
    width = width or pipe.unet.config.sample_size * backbone.vae_scale
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % unit:
            raise ParameterError(f"{name} must be a positive multiple of {unit} px, got {value!r}.")
    layers = attention_layers(pipe.unet, "attn2")
    gates, ip_weights = load_mip_weights(mip_weights, layers) if mip_weights is not None else ({}, {})
    gen = generator(seed)
    stats = Stats(params=dict(prompt=prompt, objects=[p for p, _ in objects], images=[len(i) for _, i in objects],
                              scale=float(scale), weighting=weighting, phrase_encoding=phrase_encoding,
                              mip_weights=None if mip_weights is None else str(mip_weights),
                              steps=steps, guidance_scale=float(guidance), negative_prompt=negative, height=height,
                              width=width, seed=seed, compile=compile))
    backbone.stats = stats
    with Timer(stats, backbone.device), torch.no_grad():
        text = Cond.cat([backbone.encode_negative(negative), backbone.encode_prompt(prompt)])
        empty = backbone.encode_prompt("")
        phrases = []  # per object: ([""; the phrase's encoding], its first token, its token count)
        for (phrase, _), (start, count) in zip(objects, spans):
            encoded = text.embeds[1:] if phrase_encoding == "prompt" else backbone.encode_prompt(phrase).embeds
            phrases.append((torch.cat([empty.embeds, encoded]), start, count))
        embeds, groups = _image_embeds(pipe, backbone, objects)
        rule = MultiObjectMerge(layers, phrases, groups, float(scale), weighting, gates, ip_weights)
        latents = _generate(pipe, backbone, rule, text, embeds, steps, float(guidance), height, width, gen,
                            callback_on_step_end)
        images = finish(backbone, latents, output_type)
    maps = None if rule.maps_sum is None else rule.maps_sum / rule.maps_count
    return Result(images=images, stats=stats, latents=latents,
                  extra={"relevance_maps": maps, "objects": [p for p, _ in objects]})


def _generate(pipe, backbone, rule, text, embeds, steps, guidance, height, width, gen, callback):
    """CFG sampling with the pipeline's scheduler (a copy, so the user's keeps its state): one UNet call
    per step for [uncond, cond]."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=backbone.device)
    shape = (1, pipe.unet.config.in_channels, height // backbone.vae_scale, width // backbone.vae_scale)
    x = randn(shape, gen, backbone.device, torch.float32) * scheduler.init_noise_sigma
    controller = Controller()
    controller.add(rule)
    with controller.installed(pipe.unet), pipe.progress_bar(total=steps) as bar:
        for i, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            controller.set_call(i, t, [("uncond", 1), ("cond", 1)], shape[-2:])
            out = backbone.unet_call(model_in, t, text, added={"image_embeds": [embeds]}).float()
            guided = out[:1] + guidance * (out[1:] - out[:1])
            x = scheduler.step(guided, t, x, return_dict=False)[0]
            x = step_end(pipe, callback, i, t, x)
            bar.update()
    return x
