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
- `regions={phrase: box, mask or phrase}` (zeroedit's addition, MIP #6/#11): object i's image attention is
  allowed only on the layer tokens its region touches (M_i, max-pooled to the layer's grid; no region: every
  token), and the merge weights become Ã_i = A_i·M_i / Σ_j A_j·M_j (relevance) or M_i (uniform). Where one
  object alone is allowed this is its plain IP-Adapter term, where regions overlap MIP's relevance merge, and
  where none is allowed the text alone. A phrase region is the detected box of that object in `layout=` (an
  image with the wanted arrangement, scaled to the output; zeroedit.masks); "auto" its salient object.
Several images of one object: their projected tokens are averaged. Any number of objects; non-square sizes
(the layer grid comes from the latent size, no sqrt(HW)).

Phrases are found in the prompt as text (case-insensitive; at word boundaries in scripts that separate words by
spaces, anywhere in CJK text) and mapped to the prompt's tokens by the tokenizer's character offsets: CLIP's
BPE marks word ends, so a CJK phrase's token ids on their own differ from its ids inside a CJK sentence, and a
token-id search would not find it.

Cost: one UNet call per step with [uncond, cond] — exactly plain CFG generation's calls and evaluations;
self-attention stays SDPA, cross-attention runs SDPA per object plus a (heads × phrase tokens × HW) score.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..backbones import Backbone, Cond, compile_options, is_flow
from ..control import Controller, Rule, attention_layers
from ..control.core import _heads
from ..devices import denoiser, layerwise_hooks
from ..errors import CheckpointError, MaskError, ModelError, ParameterError, UnsupportedFeature
from ..images import MAX_WORKING_SIDE, load_image
from ..masks import box, is_phrase, resolve_mask
from ..result import Result, Stats, Timer
from .common import (FLOW_VARIANTS, check_callback, check_choice, check_number, check_output_type, check_seed,
                     check_steps, check_text, finish, generator, randn, serialised, step_end, step_limit)

REFERENCE_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"
WEIGHTINGS = ("relevance", "uniform")
PHRASE_ENCODINGS = ("alone", "prompt")


class MultiObjectMerge(Rule):
    """The MIP merge of per-object image attention into the text cross-attention (module docstring)."""

    def __init__(self, layers, phrases: list[tuple[torch.Tensor, int, int]], groups: list[list[int]], scale: float,
                 weighting: str, gates: dict | None = None, ip_weights: dict | None = None, latent_hw=None,
                 regions: list[torch.Tensor | None] | None = None):
        super().__init__(layers)
        self.phrases, self.groups, self.scale, self.weighting = phrases, groups, scale, weighting
        self.regions = regions if regions and any(r is not None for r in regions) else None
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

    def allowed(self, ctx, device) -> torch.Tensor | None:
        """M (objects, 1, N): 1 on the layer's tokens that an object's region touches (every token without one)."""
        if self.regions is None:
            return None
        ones = torch.ones(1, ctx.grid[0] * ctx.grid[1], device=device)
        return torch.stack([ones if r is None else F.adaptive_max_pool2d(r.to(ones.device), ctx.grid).reshape(1, -1)
                            for r in self.regions])

    def weights(self, ctx, q) -> torch.Tensor | None:
        """The merge weights (objects, B, N): relevance Ã (within the regions), the regions M (uniform), or
        None (uniform, no regions: plain summation)."""
        allowed = self.allowed(ctx, q.device)
        return self.relevance(ctx, q, allowed) if self.weighting == "relevance" else allowed

    def relevance(self, ctx, q, allowed=None) -> torch.Tensor:
        """Ã (objects, B, N): each phrase's attention over latent positions, normalised across objects (those
        allowed at a position, when regions are given)."""
        maps = []
        for embeds, start, count in self.phrases:  # embeds: (B, 77, D) per branch ("" for uncond)
            keys = _heads(ctx.attn.to_k(embeds[:, start:start + count].to(q.dtype)), ctx.attn.heads)
            scores = (keys @ q.transpose(-1, -2)) * ctx.attn.scale  # (B, heads, count, N)
            maps.append(scores.float().softmax(dim=-1).mean(dim=(1, 2)))
        maps = torch.stack(maps) if allowed is None else torch.stack(maps) * allowed
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
        weights = self.weights(ctx, q)
        if weights is not None:
            self._keep(ctx, weights)
        merged = out
        for index, tokens in enumerate(self._object_tokens(ctx)):
            z = self._image_attention(ctx, q, tokens)
            if weights is not None:
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


def _spaced(char: str) -> bool:
    """A letter or digit of a script that separates words by spaces (Latin, Greek, Cyrillic, …; not CJK)."""
    return char.isalnum() and ord(char) < 0x2E80


def _occurrences(prompt: str, phrase: str) -> list[tuple[int, int]]:
    """Character spans of the phrase in the prompt: case-insensitive, any run of spaces for a space, and at word
    boundaries where the script has them (so "ca" is not in "a cat", but "猫" is in "一只猫和一只狗")."""
    pattern = r"\s+".join(re.escape(word) for word in phrase.split())
    spans = []
    for match in re.finditer(pattern, prompt, re.IGNORECASE):
        start, end = match.span()
        if start > 0 and _spaced(prompt[start - 1]) and _spaced(prompt[start]):
            continue
        if end < len(prompt) and _spaced(prompt[end]) and _spaced(prompt[end - 1]):
            continue
        spans.append((start, end))
    return spans


def _phrase_in_prompt(tokenizer, prompt: str, phrase: str, limit: int | None = None) -> tuple[int, int]:
    """(first token position, token count) of the phrase's tokens inside the prompt's encoding (the first `limit`
    tokens; default the tokenizer's length): the tokens whose character offsets overlap the phrase's first
    occurrence (module docstring); without offsets (a Python tokenizer), the phrase's own token ids found among
    the prompt's. CLIP's tokens on UNets, T5's on FLUX (methods/mip_flow.py)."""
    limit = limit or tokenizer.model_max_length
    try:
        offsets = tokenizer(prompt, truncation=True, max_length=limit, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        offsets = None
    if offsets is not None:
        span = _phrase_span(offsets, prompt, phrase)
        if span is not None:
            return span
    else:
        ids = tokenizer(prompt, truncation=True, max_length=limit).input_ids
        words = tokenizer(phrase, add_special_tokens=False).input_ids
        for start in range(len(ids) - len(words) + 1):
            if ids[start:start + len(words)] == words:
                return start, len(words)
    raise ParameterError(f"the phrase {phrase!r} is not among the prompt's first {limit} tokens (or the tokenizer "
                         "splits it differently inside the prompt); use phrase_encoding='alone' or a shorter prompt.")


def _phrase_span(offsets, prompt: str, phrase: str) -> tuple[int, int] | None:
    """(first token, token count) of the tokens whose character offsets in the prompt ((start, end) per token;
    (0, 0) for tokens outside it) overlap the phrase's first occurrence; None when no token does."""
    for start, end in _occurrences(prompt, phrase):
        tokens = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
        if tokens:
            return tokens[0], tokens[-1] - tokens[0] + 1
    return None


def _check_references(prompt: str, references) -> list[tuple[str, list]]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ParameterError(f"prompt must be a non-empty string, got {prompt!r}.")
    if not isinstance(references, dict) or not references:
        raise ParameterError("references must be a non-empty dict {phrase in the prompt: image or [images]}.")
    items = []
    for phrase, images in references.items():
        phrase = check_text(phrase, "each key of references (a phrase of the prompt)")
        if not _occurrences(prompt, phrase):
            raise ParameterError(f"the phrase {phrase!r} does not appear in the prompt {prompt!r}; each key of "
                                 "references must be the words of the prompt that name its object.")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ParameterError(f"no reference image for {phrase!r}.")
        items.append((phrase, [load_image(img, f"reference for {phrase!r}") for img in images]))
    return items


def _regions(regions, objects, layout, size, scale: int, pipe) -> list[torch.Tensor | None] | None:
    """Per object, its region at latent resolution (1, 1, h, w), 1 on every latent cell it touches; None for an
    object without one. Boxes are in output pixels, masks are scaled to the output, phrases are found in
    `layout` (their box; "auto": the salient object)."""
    if regions is None:
        return None
    names = [phrase for phrase, _ in objects]
    if not isinstance(regions, dict) or any(not isinstance(k, str) or k.strip() not in names for k in regions):
        raise ParameterError(f"regions must be a dict {{phrase of references: box, mask or phrase}}; the phrases are "
                             f"{names}, got {list(regions) if isinstance(regions, dict) else regions!r}.")
    regions = {k.strip(): v for k, v in regions.items()}
    if layout is None and any(is_phrase(v) for v in regions.values()):
        raise ParameterError("a phrase in regions needs layout= (an image in which to find that object).")
    width, height = size
    picture = None if layout is None else load_image(layout, "layout").resize((width, height), Image.BICUBIC)
    out = []
    for name in names:
        value = regions.get(name)
        if value is None:
            out.append(None)
            continue
        if isinstance(value, str) and is_phrase(value) and value != "auto":
            value = box(picture, value, like=pipe)  # a phrase: its box in the layout
        canvas = picture if is_phrase(value) else Image.new("RGB", (width, height))  # "auto" segments the layout
        mask = resolve_mask(canvas, value, f"region of {name!r}", like=pipe)
        if not mask.any():
            raise MaskError(f"the region of {name!r} is empty (or outside the {width}×{height} image).")
        out.append(F.max_pool2d(torch.from_numpy(mask).float()[None, None], scale))
    return out


def _check_adapter(pipe):
    projection = getattr(pipe.unet, "encoder_hid_proj", None)
    if projection is None or not hasattr(projection, "image_projection_layers") or getattr(pipe, "image_encoder", None) is None:
        raise ModelError("personalize needs an IP-Adapter loaded with diffusers' pipe.load_ip_adapter(...) (and its "
                         "image encoder); ze.load(model, ip_adapter={...}) does it, ze.load('tiny', ip_adapter=True) "
                         "for the offline tiny model.")
    if len(projection.image_projection_layers) != 1:
        raise ModelError("personalize works with exactly one loaded IP-Adapter; unload the others.")


def _check_projection_cast(pipe):
    """Refuse an IP-Adapter image projection under layerwise casting (UnsupportedFeature, before model work):
    diffusers' ImageProjection casts its input to its weight's storage dtype (float8) and the call fails there."""
    model = denoiser(pipe)
    projection = getattr(model, "encoder_hid_proj", None)
    if isinstance(projection, torch.nn.Module) and layerwise_hooks(projection):
        name = "unet" if model is getattr(pipe, "unet", None) else "transformer"
        raise UnsupportedFeature(
            f"pipe.{name}.encoder_hid_proj (the IP-Adapter's image projection) is under layerwise casting, and "
            "diffusers casts its input to the float8 storage dtype, which fails. Enable layerwise casting without it: "
            f"pipe.{name}.enable_layerwise_casting(storage_dtype=..., compute_dtype=..., skip_modules_pattern="
            "diffusers.hooks.layerwise_casting.DEFAULT_SKIP_MODULES_PATTERN + ('encoder_hid_proj',)) on a freshly "
            "loaded model.")


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


@serialised
def personalize(pipe, prompt: str, references: dict, scale: float | None = None, weighting: str = "relevance",
                phrase_encoding: str | None = None, mip_weights=None, steps: int = 30, guidance_scale: float | None = None,
                negative_prompt: str | None = None, height: int | None = None, width: int | None = None, seed: int | None = None,
                regions: dict | None = None, layout=None, output_type: str = "pil",
                callback_on_step_end=None, compile=False, size=None, allow_large: bool = False) -> Result:
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
        regions: {phrase of references: where its image attention acts}: a box x0,y0,x1,y1 in output pixels, a mask image, or a phrase found in layout (its box); objects without one act everywhere.
        layout: an image in which the phrases of regions are found (scaled to the output size).
        output_type: "pil" (default), "np", "pt" or "latent", as diffusers.
        callback_on_step_end: diffusers' callback(pipe, step, timestep, {"latents": ...}); may return new latents.
        compile: run the UNet under torch.compile (True, or a dict of torch.compile arguments); see the README.
        size: the image size instead of height/width: a side in px (square) or (width, height).
        allow_large: allow an image above 2048 px on the long side.
    """
    _check_projection_cast(pipe)
    if is_flow(pipe):
        if regions is not None or layout is not None:
            raise ParameterError("regions= and layout= run on UNet pipelines only for now; leave them None on FLUX.")
        return FLOW_VARIANTS["personalize"](pipe, prompt, references, scale, weighting, phrase_encoding, mip_weights, steps,
                                           guidance_scale, negative_prompt, height, width, seed, output_type,
                                           callback_on_step_end, compile, size, allow_large)
    phrase_encoding = "alone" if phrase_encoding is None else phrase_encoding
    compile_options(compile)
    check_choice(weighting, "weighting", WEIGHTINGS)
    check_choice(phrase_encoding, "phrase_encoding", PHRASE_ENCODINGS)
    check_output_type(output_type)
    seed = check_seed(seed)
    check_callback(callback_on_step_end)
    scale = check_number(0.75 if scale is None else scale, "scale")
    guidance = check_number(5.0 if guidance_scale is None else guidance_scale, "guidance_scale")
    negative = REFERENCE_NEGATIVE if negative_prompt is None else negative_prompt
    if not isinstance(negative, str):
        raise ParameterError(f"negative_prompt must be a string, got {negative_prompt!r}.")
    backbone = Backbone(pipe, compile=compile)
    _check_adapter(pipe)
    steps = check_steps(steps, maximum=step_limit(backbone))
    width, height = _image_size(backbone, size, width, height, allow_large)
    objects = _check_references(prompt, references)
    spans = [_phrase_in_prompt(pipe.tokenizer, prompt, p) if phrase_encoding == "prompt" else (1, _phrase_tokens(pipe, p))
             for p, _ in objects]
    areas = _regions(regions, objects, layout, (width, height), backbone.vae_scale, pipe)
    layers = attention_layers(pipe.unet, "attn2")
    gates, ip_weights = load_mip_weights(mip_weights, layers) if mip_weights is not None else ({}, {})
    gen = generator(seed)
    stats = Stats(params=dict(prompt=prompt, objects=[p for p, _ in objects], images=[len(i) for _, i in objects],
                              scale=float(scale), weighting=weighting, phrase_encoding=phrase_encoding,
                              mip_weights=None if mip_weights is None else str(mip_weights),
                              steps=steps, guidance_scale=guidance, negative_prompt=negative, height=height,
                              width=width, size=[width, height], seed=seed, compile=compile,
                              regions=None if areas is None else [p for (p, _), a in zip(objects, areas) if a is not None]))
    backbone.stats = stats
    with Timer(stats, backbone.device), torch.no_grad():
        text = Cond.cat([backbone.encode_negative(negative), backbone.encode_prompt(prompt)])
        empty = backbone.encode_prompt("")
        phrases = []  # per object: ([""; the phrase's encoding], its first token, its token count)
        for (phrase, _), (start, count) in zip(objects, spans):
            encoded = text.embeds[1:] if phrase_encoding == "prompt" else backbone.encode_prompt(phrase).embeds
            phrases.append((torch.cat([empty.embeds, encoded]), start, count))
        embeds, groups = _image_embeds(pipe, backbone, objects)
        rule = MultiObjectMerge(layers, phrases, groups, scale, weighting, gates, ip_weights, regions=areas)
        latents = _generate(pipe, backbone, rule, text, embeds, steps, guidance, height, width, gen,
                            callback_on_step_end)
        images = finish(backbone, latents, output_type)
    maps = None if rule.maps_sum is None else rule.maps_sum / rule.maps_count
    return Result(images=images, stats=stats, latents=latents,
                  extra={"relevance_maps": maps, "objects": [p for p, _ in objects]})


def _image_size(backbone, size, width, height, allow_large, unit: int | None = None) -> tuple[int, int]:
    """(width, height) of the generated image: `size` (a side, or (width, height)) or width/height (None: the
    model's native size); sides positive multiples of `unit` (None: the VAE factor, as diffusers: the UNet pads
    odd levels; FLUX: VAE factor × patch); the long side at most 2048 px unless allow_large."""
    if size is not None:
        if width is not None or height is not None:
            raise ParameterError("give either size= or width=/height=, not both.")
        width, height = tuple(size) if isinstance(size, (tuple, list)) and len(size) == 2 else (size, size)
    unit = unit or backbone.vae_scale
    width = backbone.native_size if width is None else width
    height = backbone.native_size if height is None else height
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % unit:
            raise ParameterError(f"{name} must be a positive multiple of {unit} px, got {value!r}.")
    if max(width, height) > MAX_WORKING_SIDE and not allow_large:
        raise ParameterError(f"{width}×{height} px is above {MAX_WORKING_SIDE} px on the long side (this model's "
                             f"native size is {backbone.native_size} px): pass a smaller size, or allow_large=True.")
    return width, height


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
