"""FLUX.2 backbone: `Flux2Pipeline` (FLUX.2 [dev], Mistral-3 text encoder, guidance embedding) and
`Flux2KleinPipeline` (FLUX.2 [klein] 4B / 9B, Qwen3 text encoder; true CFG unless `is_distilled`), on
`Flux2Transformer2DModel`. What differs from FLUX.1, each as diffusers' pipelines do it
(pipelines/flux2/pipeline_flux2.py, pipeline_flux2_klein.py):
- text: the pipeline's own `encode_prompt` (chat template — [dev]: its system message; [klein]: Qwen's with an
  empty thinking block —, padded to `max_sequence_length`, hidden states of three layers stacked per token);
  no pooled vector, and the transformer gets no text mask (the padding tokens are attended), so every prompt is
  `text_length()` tokens and Cond.mask stays None.
- latents: AutoencoderKLFlux2's mode, patchified 2×2 and normalised by the VAE's BatchNorm running statistics.
  zeroedit's spatial latents are those normalised patchified latents (B, 4C, H/16, W/16): one token per position,
  so `patch` = 1 at the transformer and `vae_scale` = 16 (the VAE's 8 × the patchify's 2).
- one call: tokens = the positions in raster order; 4-axis position ids (T, H, W, L): image (0, h, w, 0), text
  (0, 0, 0, l), reference image k (10·(k + 1), h, w, 0) (`references=`, appended after the image tokens; the
  velocity is the image tokens' only, as the pipelines slice noise_pred[:, :N]); model time σ (the pipelines pass
  t / 1000).
- σ grid: linspace(1, 1/N) shifted with mu = compute_empirical_mu(image tokens, N) (depends on the steps too).
- guidance: [dev] the distilled guidance embedding (4.0, Flux2Pipeline's default); [klein] base true CFG with
  the negative prompt "" (4.0, Flux2KleinPipeline's default), batched [uncond, cond] in one call where the
  pipeline makes two; [klein] distilled (`is_distilled`): neither.
- token layout: [text, image, references] in every block (control/seam.py TextFirst); blocks: control/layers.py.
- no CLIP: the content-free texts are "empty" and "zeros" (TF-ICON's exceptional prompt needs CLIP).
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu, format_input

from ..errors import ImageError
from .flow import FAMILIES, FlowBackbone
from .unet import Cond
from .vae import vae_in

logger = logging.getLogger(__name__)

FLUX2_GUIDANCE = 4.0  # Flux2Pipeline's and Flux2KleinPipeline's default guidance_scale
FLUX2_TEXT_LENGTH = 512  # both pipelines' default max_sequence_length
REFERENCE_AREA = 1024 * 1024  # the pipelines resize larger reference images to this area


@dataclasses.dataclass
class References:
    """Reference images as FLUX.2 takes them: packed normalised latents (1, N, C) of every image one after the
    other, their position ids (N, 4) and each image's token count."""

    tokens: torch.Tensor
    ids: torch.Tensor
    counts: list[int]


def _flux2_forward(transformer, hidden, text, timestep, img_ids, txt_ids, guidance, attention_kwargs=None):
    """One Flux2Transformer2DModel forward (eagerly, or traced by torch.compile)."""
    kwargs = {"joint_attention_kwargs": dict(attention_kwargs)} if attention_kwargs else {}
    return transformer(hidden_states=hidden, encoder_hidden_states=text, timestep=timestep, img_ids=img_ids,
                       txt_ids=txt_ids, guidance=guidance, return_dict=False, **kwargs)[0]


class Flux2Backbone(FlowBackbone):
    """FLUX.2 [dev] / [klein] adapter (module docstring)."""

    text_variants = ("empty", "zeros")
    takes_references = True
    image_block_outputs = False  # single-stream blocks return [text, image, references] as one sequence

    def _setup(self):
        config = self.pipe.config
        self.family, self.is_flux, self.patch = "flux2", False, 1
        self.vae_scale = 2 ** len(self.vae.config.block_out_channels)  # ×2^(blocks − 1) VAE, ×2 patchify
        self.guidance_embeds = bool(self.transformer.config.guidance_embeds)
        self.has_cfg = "is_distilled" in config and not config.is_distilled  # Flux2KleinPipeline's true CFG
        self.default_guidance = FLUX2_GUIDANCE
        self.qwen = hasattr(type(self.pipe), "_get_qwen3_prompt_embeds")  # [klein]; else [dev]'s Mistral-3

    # ---------------------------------------------------------------- text
    def text_length(self) -> int:
        """Tokens per prompt: the pipelines' max_sequence_length (512), or the tokenizer's own maximum when smaller
        (the tiny models')."""
        length = getattr(self._tokenizer(), "model_max_length", None) or FLUX2_TEXT_LENGTH
        return min(FLUX2_TEXT_LENGTH, int(length))

    def cond_shapes(self):
        return (self.text_length(), self.transformer.config.joint_attention_dim), None

    def chat_text(self, prompt: str) -> str:
        """The text the pipeline's tokenizer reads for `prompt` (its chat template applied)."""
        tokenizer = self.pipe.tokenizer
        if self.qwen:
            return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True, enable_thinking=False)
        messages = format_input([prompt], system_message=self.pipe.system_message)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
        return text[0] if isinstance(text, list) else text

    def _tokenizer(self):
        return getattr(self.pipe.tokenizer, "tokenizer", self.pipe.tokenizer)  # [dev]: inside its processor

    def token_offsets(self, prompt: str, cond: Cond | None = None) -> list[tuple[int, int]]:
        """Character span in `prompt` of each of the encoded sequence's `text_length()` tokens ((0, 0) for the chat
        template's and the padding's tokens), for finding a phrase's tokens (`cond`, the encoding: not needed here)."""
        start = self.chat_text("\x00").index("\x00")  # the template's text before the prompt
        encoded = self._tokenizer()(self.chat_text(prompt), padding="max_length", truncation=True,
                                    max_length=self.text_length(), add_special_tokens=False, return_offsets_mapping=True)
        inside = lambda a, b: start <= a < b <= start + len(prompt)  # noqa: E731
        return [(a - start, b - start) if inside(a, b) else (0, 0) for a, b in encoded["offset_mapping"]]

    def _warn_if_truncated(self, prompt: str):
        """The pipelines truncate the templated prompt to max_sequence_length tokens silently; zeroedit warns."""
        length = self.text_length()
        ids = self._tokenizer()(self.chat_text(prompt), add_special_tokens=False, truncation=True, max_length=length + 1)
        if len(ids.input_ids) > length:
            logger.warning("prompt truncated to the text encoder's %d tokens (with the chat template); the end of %r "
                           "is dropped.", length, prompt)

    @torch.no_grad()
    def encode_prompt(self, prompts: str | list[str], images: list | None = None) -> Cond:
        """Prompt(s) -> Cond(token states (B, text_length(), 3·hidden)) through the pipeline's own encode_prompt
        (`images`: FLUX.2's text encoder does not see the reference images, None)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for prompt in prompts:
            self._warn_if_truncated(prompt)
        embeds, _ = self.pipe.encode_prompt(prompts, device=self.device, max_sequence_length=self.text_length())
        return Cond(embeds.to(self.dtype))

    # ---------------------------------------------------------------- latents
    def _bn(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE BatchNorm's running mean and standard deviation, shaped (1, 4C, 1, 1) like `like`."""
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(like.device, like.dtype)
        return mean, std

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> normalised patchified latents (B, 4C, H/16, W/16) (the pipelines'
        `_encode_vae_image`: the posterior's mode, or a seeded sample)."""
        with vae_in(self.vae, self._vae_dtype()):
            dist = self.vae.encode(images.to(self.device, self._vae_dtype())).latent_dist
            latents = type(self.pipe)._patchify_latents(dist.sample(generator) if sample else dist.mode())
        mean, std = self._bn(latents)
        return ((latents - mean) / std).to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised patchified latents -> images (B, 3, H, W) in [-1, 1]."""
        with vae_in(self.vae, self._vae_dtype()):
            latents = latents.to(self._vae_dtype())
            mean, std = self._bn(latents)
            raw = type(self.pipe)._unpatchify_latents(latents * std + mean)
            return self.vae.decode(raw).sample.float()

    def encode_negative(self, prompts: str | list[str], images: list | None = None) -> Cond:
        return self.encode_prompt(prompts)

    def reference_inputs(self, images) -> tuple[None, References]:
        """(what the text encoder sees of the references: nothing on FLUX.2, the references as transformer_call
        takes them)."""
        return None, self.encode_references(images)

    def reference_counts(self, references: References) -> list[int]:
        """Tokens of each reference image."""
        return references.counts

    @torch.no_grad()
    def encode_references(self, images) -> References:
        """PIL reference images as the pipelines prepare them (`image=`): each larger than 1024² px resized to that
        area, cropped to multiples of 16 px, VAE-encoded as `encode_image`, packed; ids T = 10, 20, …"""
        processor, tensors = self.pipe.image_processor, []
        for image in images:
            try:
                processor.check_image_input(image)
            except ValueError as error:
                raise ImageError(f"reference image: {error}") from None
            if image.width * image.height > REFERENCE_AREA:
                image = processor._resize_to_target_area(image, REFERENCE_AREA)
            width, height = (side // self.vae_scale * self.vae_scale for side in image.size)
            tensors.append(processor.preprocess(image, height=height, width=width, resize_mode="crop"))
        latents = [self.encode_image(tensor) for tensor in tensors]
        ids = type(self.pipe)._prepare_image_ids(latents)[0]
        tokens = torch.cat([latent.flatten(2).transpose(1, 2) for latent in latents], dim=1)
        return References(tokens, ids.to(self.device), [latent[0, 0].numel() for latent in latents])

    # ---------------------------------------------------------------- time and one call
    def _mu(self, image_tokens: int, steps: int, config) -> float:
        return compute_empirical_mu(image_tokens, steps)

    def model_time(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def _forward(self, latents, sigma, cond: Cond, guidance, attention_kwargs, references: References | None = None):
        """Packed tokens (the pipelines' `_pack_latents`), 4-axis ids (`_prepare_latent_ids`, `_prepare_text_ids`),
        the references' tokens and ids after the image's, model time σ, the guidance embedding on [dev]."""
        batch = latents.shape[0]
        pipeline = type(self.pipe)
        hidden = latents.to(self.dtype).flatten(2).transpose(1, 2)
        img_ids = pipeline._prepare_latent_ids(latents)[0].to(self.device)
        if references is not None:
            hidden = torch.cat([hidden, references.tokens.to(hidden).expand(batch, -1, -1)], dim=1)
            img_ids = torch.cat([img_ids, references.ids.to(img_ids)])
        txt_ids = pipeline._prepare_text_ids(cond.embeds[:1])[0].to(self.device)
        return _flux2_forward, (self.transformer, hidden, cond.embeds, self.model_time(sigma).to(self.dtype), img_ids,
                                txt_ids, self._guidance_tensor(guidance, batch), attention_kwargs)

    def _velocity(self, out: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The image tokens of the output (not the references') as (B, C, h, w)."""
        return out[:, : h * w].transpose(1, 2).unflatten(2, (h, w))


FAMILIES["Flux2Transformer2DModel"] = Flux2Backbone
