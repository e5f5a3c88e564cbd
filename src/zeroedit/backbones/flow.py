"""Flow backbone: one object hiding SD3/SD3.5 (`StableDiffusion3Pipeline`) vs FLUX.1 (`FluxPipeline`), and the
base class of the other flow families' adapters (FLUX.2, Qwen-Image, Z-Image: their own modules).

Rectified-flow models: x_σ = (1 − σ)·x₀ + σ·ε, the transformer predicts the velocity v = ε − x₀ and a step
from σ to σ' is x + (σ' − σ)·v (diffusers' FlowMatchEulerDiscreteScheduler). What differs per family, and
is hidden here (each as diffusers' own pipeline does it, files named in the docstrings):
- prompt encoding: SD3 = CLIP-L and CLIP-G penultimate states (concatenated, zero-padded to the T5 width) +
  T5 states along the sequence, pooled = both CLIP text_embeds concatenated; no T5 (`text_encoder_3=None`,
  e.g. the toy flow model) = zeros, as diffusers. FLUX = T5 states + the CLIP-L pooled output.
- latents: zeroedit keeps spatial latents (B, C, h, w) everywhere (solvers, Results, `output_type="latent"`);
  FLUX packs them into 2×2 patches (B, h/2·w/2, 4C) with latent image ids only inside `transformer_call`.
- conditioning of one call: SD3 = pooled_projections, model time σ·1000, classifier-free guidance by batching
  (`has_cfg`); FLUX-dev = the guidance embedding (distilled guidance, no CFG branch), model time σ;
  FLUX-schnell = neither.
- the σ grid: the scheduler's own (static `shift` for SD3, resolution-dependent `mu` from the image-token
  count for FLUX-dev and dynamic-shift SD3.5 configs), with σ = 0 appended.
Every transformer call goes through `transformer_call` and is counted in `stats.unet_calls` (sequential
calls) and `stats.unet_evals` (sample-evaluations), like the UNet's. `compile=` compiles the repeated blocks
(diffusers' regional compilation) for each call only, leaving the transformer as given (unet.py `compiled_blocks`).

A family adapter subclasses FlowBackbone and overrides what differs (docs/backbones.md): text (`encode_prompt`,
`encode_negative`, `exceptional_cond`, `cond_shapes`), latents (`encode_image` / `decode`, `patch`,
`vae_scale`), time (`sigmas`, `model_time`), one call (`_forward`: the function and arguments of one transformer
forward on spatial latents, with the reference images' latents where the family takes them (`takes_references`);
`_velocity`: its output as a velocity (B, C, h, w)), guidance (`has_cfg`, `guidance_embeds`, `guided`,
`default_guidance`), what its methods can use (`text_variants`, `unsupported`, `image_block_outputs`); then registers its transformer
class in `FAMILIES` (the names of its attention layers are control/layers.py's `BLOCKS`, its token layout
control/seam.py's `LAYOUTS`).
"""
from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ..errors import ModelError, ParameterError, UnsupportedModel
from ..result import Stats
from .unet import (EXCEPTIONAL_TOKEN_ID, Cond, _dynamo_supported, compile_options, compiled_blocks,
                   exceptional_clip_states, tokenize)
from ..devices import check_no_cache, compute_dtype, execution_device, forward_context
from .vae import LatentCodec

SD3_T5_LENGTH = 256  # StableDiffusion3Pipeline's max_sequence_length default
FLUX_T5_LENGTH = 512  # FluxPipeline's max_sequence_length default
FLUX_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale (the distilled guidance embedding of FLUX-dev)
SD3_GUIDANCE = 7.0  # StableDiffusion3Pipeline's default guidance_scale
TEXT_VARIANTS = ("exceptional", "exceptional-clip", "empty", "zeros")  # conditionings without content (compose)


FAMILIES: dict = {}  # transformer class name -> FlowBackbone subclass (backbones/__init__.py picks by it)


def is_flux(model) -> bool:
    return type(model).__name__ == "FluxTransformer2DModel"


def is_sd3(model) -> bool:
    return type(model).__name__ == "SD3Transformer2DModel"


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> FLUX tokens (B, h/2·w/2, 4C): 2×2 patches, channels then patch rows/cols
    (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """FLUX tokens (B, h/2·w/2, 4C) -> (B, C, h, w) (FluxPipeline._unpack_latents, in latent units)."""
    b, _, d = tokens.shape
    x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def image_ids(h2: int, w2: int, device, dtype) -> torch.Tensor:
    """FLUX latent image ids (h2·w2, 3): (0, row, col) per token (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


def calculate_shift(seq_len: int, config) -> float:
    """mu of the resolution-dependent shift: linear in the image-token count between (base_image_seq_len,
    base_shift) and (max_image_seq_len, max_shift) (pipeline_flux.py `calculate_shift`)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return seq_len * slope + base_shift - slope * base_len


def _transformer_forward(transformer, hidden, text, pooled, timestep, img_ids, txt_ids, guidance, attention_kwargs=None):
    """The transformer forward every call runs (under compile=, its repeated blocks through compiled_blocks)."""
    kwargs = dict(hidden_states=hidden, encoder_hidden_states=text, pooled_projections=pooled, timestep=timestep,
                  return_dict=False)
    if attention_kwargs:  # a copy: FLUX pops ip_adapter_image_embeds out of it
        kwargs["joint_attention_kwargs"] = dict(attention_kwargs)
    if img_ids is not None:
        kwargs.update(img_ids=img_ids, txt_ids=txt_ids, guidance=guidance)
    return transformer(**kwargs)[0]


class FlowBackbone(LatentCodec):
    """Wraps a diffusers SD3/SD3.5 or FLUX.1 pipeline; see module docstring."""

    kind = "flow"
    text_components = ("text_encoder", "tokenizer")
    takes_references = False  # transformer_call(references=...): FLUX.2, Qwen-Image-Edit-Plus (mip_refs.py)
    text_variants = TEXT_VARIANTS  # the content-free conditionings this family has (families without CLIP: fewer)
    image_block_outputs = True  # the blocks return the image tokens apart (what feature rules see and replace)
    unsupported: dict = {}  # method -> why it does not run on this family (UnsupportedModel's message)

    def __init__(self, pipe, stats: Stats | None = None, compile=False):
        for name in ("transformer", "vae", "scheduler") + self.text_components:
            if getattr(pipe, name, None) is None:
                raise ModelError(f"the pipeline has no {name}; zeroedit's flow backbone needs a StableDiffusion3Pipeline "
                                 f"or FluxPipeline, got {type(pipe).__name__}.")
        self.pipe, self.transformer, self.vae = pipe, pipe.transformer, pipe.vae
        self.model = self.transformer  # what control rules install on
        self.num_train_timesteps = int(pipe.scheduler.config.get("num_train_timesteps", 1000))
        self.stats = stats if stats is not None else Stats()
        self.compile_options = compile_options(compile)
        self.stats.params.setdefault("compile", compile)
        if self.compile_options is not None and not _dynamo_supported():
            self.compile_options = None
        check_no_cache(self.transformer)
        self.device, self.dtype = execution_device(pipe), compute_dtype(self.transformer)  # see zeroedit/devices.py
        self._setup()

    def _setup(self):
        """The family's geometry and guidance (SD3 / FLUX.1 here; each adapter sets its own)."""
        self.is_flux = is_flux(self.transformer)
        if not (self.is_flux or is_sd3(self.transformer)):
            raise ModelError(f"{type(self.transformer).__name__} is not supported: the flow backbone runs "
                             "SD3Transformer2DModel (SD3/SD3.5) and FluxTransformer2DModel (FLUX.1).")
        self.family = "flux" if self.is_flux else "sd3"
        if not self.is_flux:
            self.unsupported = {"personalize": "personalize runs on UNet pipelines (SD 1.x, 2.x, XL) and FLUX.1; "
                                "diffusers' SD3 IP-Adapter (SD3IPAdapterJointAttnProcessor2_0) is not supported by "
                                "zeroedit's control yet."}
        self.patch = 2 if self.is_flux else self.transformer.config.patch_size  # FLUX: 2×2 packing
        self.guidance_embeds = self.is_flux and bool(self.transformer.config.guidance_embeds)
        self.has_cfg = not self.is_flux  # SD3: classifier-free guidance; FLUX: distilled (dev) or none (schnell)
        self.default_guidance = FLUX_GUIDANCE if self.is_flux else SD3_GUIDANCE
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ---------------------------------------------------------------- text
    def _ids(self, tokenizer, prompts: list[str], length: int) -> torch.Tensor:
        return tokenize(tokenizer, prompts, length, self.device)

    def cond_shapes(self) -> tuple[tuple[int | None, int], tuple[int] | None]:
        """Shapes of one prompt's Cond without encoding anything: token states (tokens, width) and pooled (width,).
        FLUX: T5's tokens; SD3: CLIP's 77 (padded to T5's width) then T5's. Families whose texts have a length of
        their own give tokens None; families without a pooled vector give pooled None."""
        config, clip = self.transformer.config, 0 if self.is_flux else self.pipe.tokenizer.model_max_length
        return (clip + self.t5_length(), config.joint_attention_dim), (config.pooled_projection_dim,)

    def t5_length(self) -> int:
        """T5 tokens per prompt: the pipeline's default max_sequence_length (SD3 256, FLUX 512), or the
        tokenizer's own maximum when that is smaller (the tiny models' 32)."""
        default = FLUX_T5_LENGTH if self.is_flux else SD3_T5_LENGTH
        tokenizer = self.pipe.tokenizer_2 if self.is_flux else getattr(self.pipe, "tokenizer_3", None)
        return min(default, int(getattr(tokenizer, "model_max_length", None) or default))

    def _t5(self, prompts: list[str], encoder, tokenizer) -> torch.Tensor:
        length = self.t5_length()
        if encoder is None:  # SD3 without T5: zeros, as StableDiffusion3Pipeline._get_t5_prompt_embeds
            return torch.zeros(len(prompts), length, self.transformer.config.joint_attention_dim, device=self.device)
        return encoder(self._ids(tokenizer, prompts, length), output_hidden_states=False)[0]

    @torch.no_grad()
    def encode_prompt(self, prompts: str | list[str]) -> Cond:
        """Prompt(s) -> Cond(token embeddings (B, L, D), pooled (B, P)), exactly as the diffusers pipeline
        encodes them (pipeline_stable_diffusion_3.py / pipeline_flux.py `encode_prompt`)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        pipe = self.pipe
        if self.is_flux:
            ids = self._ids(pipe.tokenizer, prompts, pipe.tokenizer.model_max_length)
            pooled = pipe.text_encoder(ids, output_hidden_states=False).pooler_output
            embeds = self._t5(prompts, pipe.text_encoder_2, pipe.tokenizer_2)
            return Cond(embeds.to(self.dtype), pooled.to(self.dtype))
        hidden, pooled = [], []
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            out = encoder(self._ids(tokenizer, prompts, pipe.tokenizer.model_max_length), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out[0])  # text_embeds of CLIPTextModelWithProjection
        clip = torch.cat(hidden, dim=-1)
        t5 = self._t5(prompts, getattr(pipe, "text_encoder_3", None), getattr(pipe, "tokenizer_3", None))
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        embeds = torch.cat([clip, t5.to(clip.dtype)], dim=-2)
        return Cond(embeds.to(self.dtype), torch.cat(pooled, dim=-1).to(self.dtype))

    @torch.no_grad()
    def exceptional_cond(self, batch: int = 1, variant: str = "exceptional", token_id: int = EXCEPTIONAL_TOKEN_ID) -> Cond:
        """A conditioning without content, for TF-ICON's inversion (`variant`, see TEXT_VARIANTS):
        "exceptional" — TF-ICON's exceptional prompt through every text encoder: CLIP as on the UNet (all ids one
        token, no BOS/EOS, no positional embeddings; SD3 penultimate states, pooled from the final layer norm's
        row, through text_projection for SD3), and its T5 analogue (all ids one token, no EOS, the relative position
        bias removed: every row identical; zeros without T5, as diffusers); "exceptional-clip" — CLIP exceptional,
        T5 of the empty prompt; "empty" — the empty prompt as the pipeline encodes it; "zeros" — all-zero
        embeddings and pooled vector."""
        if variant not in self.text_variants:
            raise ParameterError(f"variant must be one of {self.text_variants} on this model, got {variant!r}.")
        empty = self.encode_prompt([""])
        if variant == "empty":
            return empty.repeat(batch)
        if variant == "zeros":
            pooled = None if empty.pooled is None else torch.zeros_like(empty.pooled)
            return Cond(torch.zeros_like(empty.embeds), pooled, empty.mask).repeat(batch)
        return self._exceptional(batch, variant, token_id, empty)

    def _exceptional(self, batch: int, variant: str, token_id: int, empty: Cond) -> Cond:
        """The CLIP exceptional prompt and its T5 analogue (exceptional_cond); families without CLIP override it
        with a ParameterError."""
        pipe, length = self.pipe, self.pipe.tokenizer.model_max_length
        t5_encoder = pipe.text_encoder_2 if self.is_flux else getattr(pipe, "text_encoder_3", None)
        t5 = self._exceptional_t5(t5_encoder, token_id) if variant == "exceptional" and t5_encoder is not None else None
        if self.is_flux:
            with forward_context(pipe.text_encoder):  # its submodules are called directly, not its forward
                _, final = exceptional_clip_states(pipe.text_encoder, length, token_id, self.device)
            embeds = empty.embeds if t5 is None else t5
            return Cond(embeds.to(self.dtype), final[:, 0].to(self.dtype)).repeat(batch)
        hidden, pooled = [], []
        for encoder in (pipe.text_encoder, pipe.text_encoder_2):
            with forward_context(encoder):
                states, final = exceptional_clip_states(encoder, length, token_id, self.device)
                pooled.append(encoder.text_projection(final[:, 0]))
            hidden.append(states[-2])
        clip = torch.cat(hidden, dim=-1)
        t5 = empty.embeds[:, length:] if t5 is None else t5  # the T5 rows of the empty prompt (zeros without T5)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        embeds = torch.cat([clip.to(self.dtype), t5.to(self.dtype)], dim=-2)
        return Cond(embeds, torch.cat(pooled, dim=-1).to(self.dtype)).repeat(batch)

    def _exceptional_t5(self, encoder, token_id: int) -> torch.Tensor:
        """The exceptional prompt's T5 analogue: t5_length copies of one token, no EOS, and no relative position
        bias (T5 has no absolute positions; a zero bias removes its only positional signal)."""
        stack = encoder.encoder
        ids = torch.full((1, self.t5_length()), token_id % encoder.config.vocab_size, device=self.device)
        with forward_context(encoder):  # its submodules are called directly, not its forward
            states = stack.embed_tokens(ids)
            heads, length = encoder.config.num_heads, ids.shape[1]
            bias = torch.zeros(1, heads, length, length, device=self.device, dtype=states.dtype)
            for block in stack.block:
                states = block(states, None, bias)[0]
            return stack.final_layer_norm(states)

    def encode_negative(self, prompts: str | list[str]) -> Cond:
        """Negative prompts: encoded like any prompt (the SD3 pipeline does not zero the empty prompt)."""
        return self.encode_prompt(prompts)

    # ---------------------------------------------------------------- geometry and time
    def token_grid(self, latent_hw) -> tuple[int, int]:
        """(H, W) of the image tokens for a latent of size latent_hw (patch size 2 on both families)."""
        return latent_hw[0] // self.patch, latent_hw[1] // self.patch

    @property
    def native_size(self) -> int:
        """The model's native long side in px: the VAE's `sample_size` (1024 on SD3/FLUX.1, 128 tiny, 64 toy-flow;
        the transformers' configs do not all carry one)."""
        sample = self.vae.config.sample_size
        return int(max(sample) if isinstance(sample, (tuple, list)) else sample)

    @property
    def size_multiple(self) -> int:
        """Image sides are multiples of this: VAE factor × patch (16 on SD3/FLUX.1)."""
        return self.vae_scale * self.patch

    def sigmas(self, steps: int, latent_hw) -> list[float]:
        """The σ grid of `steps` sampling steps, descending, σ = 0 appended (steps + 1 values), as the
        pipeline's scheduler builds it: FLUX passes sigmas linspace(1, 1/steps) (pipeline_flux.py), SD3 lets the
        scheduler space the timesteps (pipeline_stable_diffusion_3.py); then the static `shift` or, with
        `use_dynamic_shifting`, the time shift by mu = calculate_shift(image tokens). One step: [1, 0], what every
        shift gives (a scheduler's `shift_terminal` stretch, e.g. Qwen-Image's, divides 0 by 0 there: NaN in diffusers)."""
        if steps == 1:
            return [1.0, 0.0]
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", False):
            h, w = self.token_grid(latent_hw)
            kwargs["mu"] = self._mu(h * w, steps, scheduler.config)
        if self.linear_sigmas:
            kwargs["sigmas"] = self.default_sigmas(steps)
            scheduler.set_timesteps(device="cpu", **kwargs)
        else:
            scheduler.set_timesteps(steps, device="cpu", **kwargs)
        return [float(s) for s in scheduler.sigmas]

    def default_sigmas(self, steps: int):
        """The σ the pipeline hands its scheduler before the shift: linspace(1, 1/steps), as FluxPipeline computes it
        (numpy; families whose pipeline computes it otherwise override this, to the last bit)."""
        return np.linspace(1.0, 1.0 / steps, steps)

    @property
    def linear_sigmas(self) -> bool:
        """Whether the pipeline passes sigmas linspace(1, 1/steps) to its scheduler (FLUX and the later families)
        instead of letting it space the timesteps (SD3)."""
        return self.family != "sd3"

    def _mu(self, image_tokens: int, steps: int, config) -> float:
        """mu of the resolution-dependent time shift (FLUX.1, SD3.5 dynamic configs, Qwen-Image, Z-Image:
        calculate_shift of the image-token count; FLUX.2 overrides it)."""
        return calculate_shift(image_tokens, config)

    def model_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """σ -> the transformer's `timestep` argument: FLUX takes σ (the pipeline divides by 1000 and the model
        multiplies back), SD3 takes σ·num_train_timesteps."""
        return sigma if self.is_flux else sigma * self.num_train_timesteps

    # ---------------------------------------------------------------- the transformer
    def transformer_call(self, latents: torch.Tensor, sigma, cond: Cond, guidance: float | None = None,
                         attention_kwargs: dict | None = None, references=None) -> torch.Tensor:
        """One transformer forward on spatial latents (B, C, h, w) at noise level σ (scalar or per sample);
        counted in stats. `guidance`: a distilled guidance embedding's value (FLUX-dev), a number or one per sample
        (ignored by models without the embedding). `attention_kwargs`: the transformer's attention kwargs (e.g.
        FLUX's {"ip_adapter_image_embeds": [...]}). `references`: reference images as the family's adapter prepares
        them (`reference_inputs`), their tokens after the image's; families without them (`takes_references`
        False) refuse it.
        Returns the velocity (B, C, h, w) of the image tokens in the model's dtype."""
        batch, _, h, w = latents.shape
        if len(cond) != batch:
            raise RuntimeError(f"internal: {len(cond)} conditionings for a batch of {batch}")
        if references is not None and not self.takes_references:
            raise UnsupportedModel(f"{type(self.pipe).__name__} takes no reference images.")
        sigma = torch.as_tensor(sigma, device=self.device, dtype=torch.float32).reshape(-1).expand(batch)
        self.stats.unet_calls += 1
        self.stats.unet_evals += batch
        extra = {} if references is None else {"references": references}
        forward, args = self._forward(latents, sigma, cond, guidance, attention_kwargs, **extra)
        if self.compile_options is not None:  # regional compilation: the repeated blocks compiled, the rest eager
            with compiled_blocks(self.transformer, self.compile_options):
                out = forward(*args)
        else:
            out = forward(*args)
        return self._velocity(out, h, w)

    def _guidance_tensor(self, guidance, batch: int) -> torch.Tensor | None:
        """The distilled guidance embedding's input, one value per sample (None for models without it)."""
        if not self.guidance_embeds:
            return None
        scale = torch.as_tensor(self.default_guidance if guidance is None else guidance, device=self.device,
                                dtype=torch.float32)
        return scale.reshape(-1).expand(batch)

    def _forward(self, latents, sigma, cond: Cond, guidance, attention_kwargs, references=None):
        """(function, arguments) of one transformer forward (SD3: spatial latents and model time σ·1000; FLUX:
        packed tokens, latent image ids, model time σ and the guidance embedding)."""
        if references is not None:
            raise UnsupportedModel(f"{type(self.pipe).__name__} takes no reference images in its transformer call "
                                   "(FLUX.2 does).")
        batch, _, h, w = latents.shape
        if self.is_flux:
            attention_kwargs = self._without_image_prompt(attention_kwargs)
            hidden = pack(latents.to(self.dtype))
            ids = image_ids(h // 2, w // 2, self.device, cond.embeds.dtype)
            txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=self.device, dtype=cond.embeds.dtype)
            return _transformer_forward, (self.transformer, hidden, cond.embeds, cond.pooled, sigma.to(self.dtype), ids,
                                          txt_ids, self._guidance_tensor(guidance, batch), attention_kwargs)
        return _transformer_forward, (self.transformer, latents.to(self.dtype), cond.embeds, cond.pooled,
                                      self.model_time(sigma), None, None, None, attention_kwargs)

    def _without_image_prompt(self, attention_kwargs):
        """A FLUX transformer with an IP-Adapter loaded, called without image embeddings (every method but
        personalize): its IP layers get no image tokens (`ip_hidden_states=[]`), so their image-attention term is
        zero — the transformer computes exactly what it computes without the adapter (diffusers' processor fails on
        None)."""
        if getattr(self.transformer, "encoder_hid_proj", None) is None:
            return attention_kwargs
        if attention_kwargs and ("ip_adapter_image_embeds" in attention_kwargs or "ip_hidden_states" in attention_kwargs):
            return attention_kwargs
        return {**(attention_kwargs or {}), "ip_hidden_states": []}

    def _velocity(self, out: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The forward's output as a spatial velocity (B, C, h, w)."""
        return unpack(out, h, w) if self.is_flux else out

    def guided(self, out: torch.Tensor, scale: float) -> torch.Tensor:
        """Velocity of the target branch(es) from one call's output: CFG over its [uncond, cond] halves on SD3,
        the output itself on FLUX (guidance-distilled: no CFG branch)."""
        if not self.has_cfg:
            return out.float()
        uncond, cond = out.float().chunk(2)
        return uncond + scale * (cond - uncond)

    def unet_grad(self, loss: torch.Tensor, inputs) -> tuple[torch.Tensor, ...]:
        """d loss / d inputs through the transformer graph of the last call(s); counted in stats.unet_backward."""
        self.stats.unet_backward += 1
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        return torch.autograd.grad(loss, inputs)
