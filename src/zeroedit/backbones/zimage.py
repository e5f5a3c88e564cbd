"""Z-Image (`ZImagePipeline`, 6 B single-stream DiT `ZImageTransformer2DModel`): the flow adapter.

What it overrides of `FlowBackbone` (flow.py), each as diffusers' pipelines/z_image/pipeline_z_image.py does it:
- text: the pipeline's own `encode_prompt`: Qwen3's hidden_states[-2] of the prompt under the tokenizer's chat
  template (one user message, add_generation_prompt, enable_thinking=True), padded to max_sequence_length (512)
  and cut back to the prompt's own tokens by the attention mask. No pooled vector. A batch of texts is a `Cond`
  padded on the right to the longest, with a token mask; one transformer call hands the transformer the list of
  variable-length embeddings it takes (so CFG's negative and positive texts ride in one call, as in the pipeline).
  No CLIP: TF-ICON's exceptional prompt is refused ("empty" and "zeros" work).
- latents: AutoencoderKL with shift and scaling factors (vae.LatentCodec), ×8, 16 channels; the transformer takes
  a list of (C, 1, h, w) latents and patchifies them 2×2 itself (sides multiples of 16 px).
- time: σ grid linspace(1, 1/steps) (the pipeline's get_default_z_image_sigmas) through the scheduler, mu = calculate_shift(image tokens) with dynamic
  shifting, the static shift otherwise (flow.FlowBackbone.sigmas); model time t = (1000 − 1000σ)/1000 = 1 − σ;
  velocity = −output.
- guidance: true CFG over [negative, prompt] in one call, pred = pos + g·(pos − neg) — ZImagePipeline's formula
  and its default g = 5 (g = 0 is the prompt alone; Z-Image-Turbo samples with 0: pass guidance_scale=0, the
  negative branch is then still evaluated). cfg_normalization and cfg_truncation are supported at the pipeline's
  defaults (off, 1.0: no effect); other values are not.
- control: the token layout is control/seam.py's `ImageFirst` (main layers [image, text], each padded to a multiple
  of 32, shorter samples padded at the end and masked), the blocks control/layers.py's single-stream
  `layers.i.attention`. The blocks return the whole [image, text] sequence, so feature rules (translate's
  `feature_steps`) are refused (`image_block_outputs = False`).
- personalize: ZImagePipeline takes no reference image (UnsupportedModel). ZImageOmniPipeline (reference images
  as SigLIP tokens, the [text, image, SigLIP] omni layout) is refused as a whole (UnsupportedModel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

from ..errors import ParameterError, UnsupportedModel
from .flow import FlowBackbone
from .unet import Cond, warn_truncated

ZIMAGE_TEXT_LENGTH = 512  # ZImagePipeline's max_sequence_length default
ZIMAGE_GUIDANCE = 5.0  # ZImagePipeline's default guidance_scale


def _zimage_forward(transformer, latents, timestep, embeds, lengths, attention_kwargs=None):
    """One ZImageTransformer2DModel forward on spatial latents (B, C, h, w): the list of (C, 1, h, w) latents and
    of each text's own embeddings (its first `lengths[i]` rows) the model takes; the outputs stacked (B, C, 1, h, w)."""
    images = list(latents.unsqueeze(2).unbind(0))
    texts = [states[:length] for states, length in zip(embeds, lengths)]
    kwargs = dict(attention_kwargs) if attention_kwargs else None
    return torch.stack(transformer(images, timestep, texts, joint_attention_kwargs=kwargs, return_dict=False)[0])


def padded(embeds: list[torch.Tensor], dtype) -> Cond:
    """Texts of their own lengths (a list of (L_i, D)) as one Cond: zero-padded on the right, masked."""
    length = max(len(states) for states in embeds)
    states = torch.stack([F.pad(e, (0, 0, 0, length - len(e))) for e in embeds]).to(dtype)
    mask = torch.stack([torch.arange(length, device=states.device) < len(e) for e in embeds])
    return Cond(states, None, mask)


class ZImageBackbone(FlowBackbone):
    """Wraps a diffusers ZImagePipeline; see module docstring."""

    text_variants = ("empty", "zeros")
    image_block_outputs = False
    unsupported = {"personalize": "personalize needs a way in for reference images; ZImagePipeline takes none (its "
                                  "transformer reads noise latents and captions only). Z-Image-Omni's SigLIP image "
                                  "tokens (ZImageOmniPipeline) could be one; zeroedit does not run it yet. personalize "
                                  "runs on SD 1.x/2.x/XL and FLUX.1 (with an IP-Adapter)."}

    def _setup(self):
        if type(self.pipe).__name__ == "ZImageOmniPipeline":
            raise UnsupportedModel("ZImageOmniPipeline runs its transformer in omni mode ([text, image, SigLIP] "
                                   "sequences, per-token noise masks, nested caption lists); zeroedit runs Z-Image "
                                   "through ZImagePipeline (text-to-image mode) only.")
        self.family = "z-image"
        self.patch = 2  # ZImagePipeline's (the transformer's default patch_size)
        self.guidance_embeds = False
        self.has_cfg = True
        self.default_guidance = ZIMAGE_GUIDANCE
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ---------------------------------------------------------------- text
    def text_length(self) -> int:
        """Tokens a templated prompt may have: the pipeline's max_sequence_length (512), or the tokenizer's own
        maximum when that is smaller."""
        maximum = getattr(self.pipe.tokenizer, "model_max_length", None) or ZIMAGE_TEXT_LENGTH
        return min(ZIMAGE_TEXT_LENGTH, int(maximum))

    def cond_shapes(self):
        """Texts have a length of their own (tokens None) of the caption width; no pooled vector."""
        return (None, self.transformer.config.cap_feat_dim), None

    @torch.no_grad()
    def encode_prompt(self, prompts: str | list[str]) -> Cond:
        """Prompt(s) -> Cond(Qwen3 states (B, L, D) padded to the longest, mask), by ZImagePipeline.encode_prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        length, tokenizer = self.text_length(), self.pipe.tokenizer
        templated = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True, enable_thinking=True) for p in prompts]
        warn_truncated(tokenizer, templated, length, prompts)
        embeds, _ = self.pipe.encode_prompt(list(prompts), device=self.device, do_classifier_free_guidance=False,
                                            max_sequence_length=length)
        return padded(embeds, self.dtype)

    def _exceptional(self, batch, variant, token_id, empty):
        raise ParameterError(f"inversion_prompt {variant!r} is TF-ICON's CLIP exceptional prompt; Z-Image has no CLIP "
                             f"text encoder: use one of {self.text_variants}.")

    # ---------------------------------------------------------------- time and the transformer
    def default_sigmas(self, steps: int):
        """ZImagePipeline's own linspace(1, 1/steps) (torch, float32: one ulp off numpy's on some steps)."""
        return get_default_z_image_sigmas(steps)

    def model_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """σ -> the transformer's t: (1000 − timestep)/1000 with the scheduler's timestep 1000σ (= 1 − σ)."""
        timestep = sigma * self.num_train_timesteps
        return (self.num_train_timesteps - timestep) / self.num_train_timesteps

    def _forward(self, latents, sigma, cond: Cond, guidance, attention_kwargs):
        """(function, arguments) of one forward: latents and each text's own tokens (masks are prefixes: Cond pads
        on the right); no guidance embedding."""
        lengths = tuple(int(n) for n in cond.token_mask().sum(1).tolist())
        return _zimage_forward, (self.transformer, latents.to(self.dtype), self.model_time(sigma), cond.embeds,
                                 lengths, attention_kwargs)

    def _velocity(self, out: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The pipeline's velocity: the negated output, without its frame axis."""
        return -out.squeeze(2)

    def guided(self, out: torch.Tensor, scale: float) -> torch.Tensor:
        """ZImagePipeline's CFG over the call's [negative, prompt] halves: pos + g·(pos − neg)."""
        negative, positive = out.float().chunk(2)
        return positive + scale * (positive - negative)
