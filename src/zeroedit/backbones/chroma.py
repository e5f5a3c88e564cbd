"""Chroma (`ChromaPipeline`, `ChromaTransformer2DModel`): FLUX.1's layout without CLIP, pooled vector or guidance
embedding — the flow adapter (see flow.py's docstring for what an adapter overrides).

What differs from FLUX.1, each as diffusers' pipelines/chroma/pipeline_chroma.py does it:
- text: T5 only (`text_encoder`, `tokenizer`), encoded with its attention mask by the pipeline's own
  `encode_prompt`; the transformer attends to the prompt's tokens and the first padding token (the pipeline's mask,
  carried as `Cond.mask`). No pooled vector. No CLIP, so TF-ICON's exceptional prompt is refused ("empty" and
  "zeros" work).
- one call: FLUX's 2×2 packing and latent ids, model time σ, no pooled projection and no guidance; the text mask
  extended by the image tokens as `attention_mask`. diffusers 0.42.1 builds that mask as a float 0/1 tensor (text
  encoder dtype), which scaled_dot_product_attention adds to the logits instead of masking (diffusers issue
  #12116); zeroedit reproduces the pipeline's mask as it is, so results equal the pipeline's.
- guidance: true CFG, uncond + g·(cond − uncond), default g = 5 (ChromaPipeline's), both branches in ONE call (the
  pipeline makes two).
- control: the blocks and the [text, image] token layout are FLUX.1's (control/seam.py `TextFirst`; the processors
  are FluxAttnProcessor, which call the dispatcher). Chroma's single-stream blocks return the whole [text, image]
  sequence, so feature rules (translate's `feature_steps`) are refused (`image_block_outputs = False`).
- personalize: UnsupportedModel (no IP-Adapter is published for Chroma, and zeroedit's FLUX personalize samples
  with the guidance embedding, which Chroma lacks).
- Gradient checkpointing (edit's `checkpointing=True`): diffusers 0.42.1's Chroma transformer drops the attention
  mask in its checkpointed single-stream blocks, so a checkpointed edit differs from the plain one there.
"""
from __future__ import annotations

import torch

from ..errors import ParameterError
from .flow import FLUX_T5_LENGTH, FlowBackbone, image_ids, pack, unpack
from .unet import Cond, warn_truncated

CHROMA_GUIDANCE = 5.0  # ChromaPipeline's default guidance_scale


def _chroma_forward(transformer, hidden, text, timestep, img_ids, txt_ids, mask, attention_kwargs=None):
    """One ChromaTransformer2DModel forward (eagerly, or traced by torch.compile)."""
    kwargs = dict(attention_kwargs) if attention_kwargs else None
    return transformer(hidden_states=hidden, encoder_hidden_states=text, timestep=timestep, img_ids=img_ids,
                       txt_ids=txt_ids, attention_mask=mask, joint_attention_kwargs=kwargs, return_dict=False)[0]


class ChromaBackbone(FlowBackbone):
    """Wraps a diffusers ChromaPipeline; see module docstring."""

    text_variants = ("empty", "zeros")
    image_block_outputs = False
    unsupported = {"personalize": "personalize does not run on Chroma: no IP-Adapter is published for it, and "
                                  "zeroedit's FLUX personalize samples with FLUX.1's guidance embedding, which Chroma "
                                  "lacks. personalize runs on SD 1.x/2.x/XL and FLUX.1 (with an IP-Adapter)."}

    def _setup(self):
        self.is_flux = False  # FLUX.1's CLIP, pooled vector and guidance embedding are absent
        self.family = "chroma"
        self.patch = 2
        self.guidance_embeds = False
        self.has_cfg = True
        self.default_guidance = CHROMA_GUIDANCE
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def t5_length(self) -> int:
        """T5 tokens per prompt: ChromaPipeline's max_sequence_length (512), or the tokenizer's own maximum when
        that is smaller."""
        return min(FLUX_T5_LENGTH, int(getattr(self.pipe.tokenizer, "model_max_length", None) or FLUX_T5_LENGTH))

    def cond_shapes(self):
        return (self.t5_length(), self.transformer.config.joint_attention_dim), None

    @torch.no_grad()
    def encode_prompt(self, prompts: str | list[str]) -> Cond:
        """Prompt(s) -> Cond(T5 states (B, L, D), mask of the attended tokens), by ChromaPipeline.encode_prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        length = self.t5_length()
        warn_truncated(self.pipe.tokenizer, prompts, length)
        embeds, _, mask = self.pipe.encode_prompt(prompts, device=self.device, do_classifier_free_guidance=False,
                                                  max_sequence_length=length)[:3]
        return Cond(embeds.to(self.dtype), None, mask.bool())

    def _exceptional(self, batch, variant, token_id, empty):
        raise ParameterError(f"inversion_prompt {variant!r} is TF-ICON's CLIP exceptional prompt; Chroma has no CLIP "
                             f"text encoder: use one of {self.text_variants}.")

    def model_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """σ: the pipeline passes timestep / 1000 (the transformer multiplies back)."""
        return sigma

    def _forward(self, latents, sigma, cond: Cond, guidance, attention_kwargs):
        """(function, arguments) of one forward: packed latents, ids, model time σ, and the pipeline's attention mask
        (the text mask in the text encoder's dtype, then the image tokens; module docstring)."""
        batch, _, h, w = latents.shape
        hidden = pack(latents.to(self.dtype))
        ids = image_ids(h // 2, w // 2, self.device, cond.embeds.dtype)
        txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=self.device, dtype=cond.embeds.dtype)
        image = torch.ones(batch, hidden.shape[1], dtype=torch.bool, device=self.device)
        mask = torch.cat([cond.token_mask().to(self.pipe.text_encoder.dtype), image], dim=1)
        return _chroma_forward, (self.transformer, hidden, cond.embeds, self.model_time(sigma).to(self.dtype), ids,
                                 txt_ids, mask, attention_kwargs)

    def _velocity(self, out: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return unpack(out, h, w)
