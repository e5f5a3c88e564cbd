"""Qwen-Image adapter: `QwenImagePipeline` (Qwen/Qwen-Image, a 20 B MM-DiT) and `QwenImageEditPlusPipeline`
(Qwen-Image-Edit-2509/2511: the same transformer with several input images), as diffusers' pipelines run them
(pipelines/qwenimage/pipeline_qwenimage.py, pipeline_qwenimage_edit_plus.py):
- text: Qwen2.5-VL's last hidden states of the prompt in the pipeline's chat template, the template's system prefix
  dropped (34 tokens; Edit-Plus 64), through the pipeline's own `encode_prompt`; each text keeps its own length
  (a batch is right-padded and masked: `Cond.mask`, the transformer's `encoder_hidden_states_mask`), at most 512
  tokens on QwenImagePipeline (its `max_sequence_length`; Edit-Plus does not cut); no pooled vector. Edit-Plus with
  images: "Picture k: <image>" labels before the prompt, the images shown to the Qwen2.5-VL vision tower
  (`encode_prompt(prompt, images=)`, one prompt).
- latents: AutoencoderKLQwenImage (Wan-style: a frame axis, one frame here) posterior mode, normalised per channel
  by the VAE's latents_mean / latents_std; packed 2×2 into tokens (FLUX's packing) with `img_shapes` for the RoPE
  only inside the call.
- time: σ grid linspace(1, 1/steps) shifted by mu = calculate_shift(image tokens) (the scheduler's own exponential
  time shift and shift_terminal); the transformer takes σ (the pipeline passes t / 1000).
- guidance: true CFG, `true_cfg_scale` 4.0 by default, renormalised per token: comb · ‖cond‖ / ‖comb‖ with
  comb = uncond + s·(cond − uncond) (`guided`). zeroedit batches [uncond, cond] in ONE call (Cond.cat pads the
  shorter text and masks it; the pipeline makes two calls). The config's `guidance_embeds` is not used by
  diffusers' Qwen-Image transformer (its time embedding takes no guidance), so it is ignored here too.
- token layout: [text, image, references] in every block (QwenDoubleStreamAttnProcessor2_0 concatenates text then
  image; Edit-Plus appends the reference images' tokens after the image's): control/seam.py `TextFirst`;
  double-stream blocks `transformer_blocks.i.attn` only (control/layers.py BLOCKS).
- references (Edit-Plus): `transformer_call(..., references=[latents, ...])` appends each reference's packed tokens
  after the image tokens and its (1, h/2, w/2) to img_shapes; the velocity is the image tokens'. Reference images are
  prepared as the pipeline does (`reference_inputs`: VAE input at 1024² area, vision-tower input at 384² area,
  aspect kept), both areas scaled by (native size / 1024)² below the 1024 px native size (the tiny model).

`QwenImage21Pipeline` (Qwen-Image 2.1) is NOT this family: its QwenImage21Transformer2DModel differs in more than
config — one-stream blocks with a shared modulation, patch size 1, condition images substituted into the text
stream at the VLM's image slots, block-causal attention (causal text, bidirectional inside each image block), an
optional KV cache of the text/condition prefix, Qwen3-VL text. Its processors call the dispatcher (the default
QwenImage21AttnProcessor once per prefix segment plus once for the target image, against all keys; the flex one
once), so a 2.1 adapter would need: (1) a token layout for its joint sequence (text and condition images
interleaved, the target image last: TextFirst's image slice at the end holds), and a seam that acts on the call
whose queries are the target image (the last call of a layer, its queries a suffix of its keys: a Split over
unequal query and key ranges), not on the first; (2) the KV cache off (rules change prefix keys and values);
(3) its own text path (Qwen3VL processor chat template, img_mask) and patch-1 packing. It is refused by
backbone_for until then.
"""
from __future__ import annotations

import torch

from ..errors import ParameterError
from .flow import FAMILIES, FlowBackbone, pack, unpack
from .unet import Cond
from .vae import vae_in

QWEN_TEXT_LENGTH = 512  # QwenImagePipeline.__call__'s max_sequence_length default
QWEN_CFG = 4.0  # QwenImagePipeline.__call__'s true_cfg_scale default
QWEN_NATIVE_AREA = 1024 * 1024  # Edit-Plus's VAE_IMAGE_SIZE: the area the references are resized to
# Pipelines whose encode_prompt takes a list of images ("Picture k") and whose transformer call takes their latents
# (QwenImageEditPipeline takes one image in another template: not supported as a reference pipeline).
REFERENCE_PIPELINES = ("QwenImageEditPlusPipeline",)


class QwenImageBackbone(FlowBackbone):
    """Wraps a diffusers QwenImagePipeline or QwenImageEditPlusPipeline; see module docstring."""

    text_variants = ("empty", "zeros")  # no CLIP: no exceptional prompt (_exceptional)
    unsupported = {"personalize": "QwenImagePipeline has no input for reference images: load a Qwen-Image-Edit-Plus "
                                  "model as QwenImageEditPlusPipeline (e.g. Qwen/Qwen-Image-Edit-2509), which takes "
                                  "several."}

    def _setup(self):
        self.family, self.is_flux = "qwen-image", False
        self.patch = self.transformer.config.patch_size
        self.guidance_embeds, self.has_cfg, self.default_guidance = False, True, QWEN_CFG
        self.vae_scale = 2 ** len(self.vae.temperal_downsample)
        self.takes_references = type(self.pipe).__name__ in REFERENCE_PIPELINES

    # ---------------------------------------------------------------- text
    @torch.no_grad()
    def encode_prompt(self, prompts: str | list[str], images: list | None = None) -> Cond:
        """Prompt(s) -> Cond(states (B, L, D), mask (B, L) where the texts' lengths differ) through the pipeline's
        own encode_prompt; `images` (Edit-Plus): the vision tower's inputs (PIL, from `reference_inputs`)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        kwargs = {} if images is None else {"image": images}
        embeds, mask = self.pipe.encode_prompt(prompts, device=self.device, max_sequence_length=QWEN_TEXT_LENGTH,
                                               **kwargs)
        return Cond(embeds.to(self.dtype), None, None if mask is None else mask.bool())

    def encode_negative(self, prompts: str | list[str], images: list | None = None) -> Cond:
        return self.encode_prompt(prompts, images)

    def _exceptional(self, batch: int, variant: str, token_id: int, empty: Cond) -> Cond:
        """Families without CLIP have no exceptional prompt (TF-ICON's is made for CLIP)."""
        raise ParameterError(f"inversion_prompt={variant!r}: TF-ICON's exceptional prompt is made for CLIP text "
                             "encoders and Qwen-Image has none (its text encoder is Qwen2.5-VL); use 'zeros' or "
                             "'empty'.")

    def cond_shapes(self):
        """Each text has its own length (tokens None); no pooled vector."""
        return (None, self.transformer.config.joint_attention_dim), None

    def prompt_start(self, cond: Cond, prompt: str) -> int:
        """Position of the prompt's first token in its encoded sequence (one text): what follows the template's
        prompt slot ("<|im_end|>\\n<|im_start|>assistant\\n") and the prompt's own tokens counted from the end. The
        prompt is tokenized as on its own: special tokens end it, and begin it on Edit-Plus with images
        (<|vision_end|>); the plain template's "user\\n" splits from a first word too."""
        tokenizer = self.pipe.tokenizer
        suffix = self.pipe.prompt_template_encode.split("{}")[-1]
        length = int(cond.token_mask()[0].sum())
        return length - len(tokenizer(suffix).input_ids) - len(tokenizer(prompt).input_ids)

    def token_offsets(self, prompt: str, cond: Cond) -> list[tuple[int, int]]:
        """Character span in `prompt` of each token of its encoding `cond` ((0, 0) for the template's and the
        images' tokens), for finding a phrase's tokens."""
        own = self.pipe.tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
        return [(0, 0)] * self.prompt_start(cond, prompt) + [tuple(offset) for offset in own]

    # ---------------------------------------------------------------- latents
    def _channel_stats(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(latents)
        return mean, torch.tensor(config.latents_std).view(shape).to(latents)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False):
        """Images (B, 3, H, W) in [-1, 1] -> (posterior mode (or a seeded sample) − latents_mean) / latents_std, one
        frame (as QwenImageEditPlusPipeline._encode_vae_image)."""
        with vae_in(self.vae, self._vae_dtype()):
            dist = self.vae.encode(images.to(self.device, self._vae_dtype())[:, :, None]).latent_dist
            latents = (dist.sample(generator) if sample else dist.mode())[:, :, 0]
        mean, std = self._channel_stats(latents)
        return ((latents - mean) / std).to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 3, H, W) in [-1, 1] (QwenImagePipeline's decode: × std + mean, one frame)."""
        dtype = self._vae_dtype()
        with vae_in(self.vae, dtype):
            mean, std = self._channel_stats(latents.to(dtype))
            return self.vae.decode((latents.to(dtype) * std + mean)[:, :, None]).sample[:, :, 0].float()

    @property
    def native_size(self) -> int:
        """The pipeline's default side: default_sample_size × the VAE factor (1024; the tiny model sets 128)."""
        return int(getattr(self.pipe, "default_sample_size", 128)) * self.vae_scale

    def reference_inputs(self, images: list) -> tuple[list, list[torch.Tensor]]:
        """Reference images (PIL) -> (the vision tower's images, their latents (1, C, h, w)), resized as
        QwenImageEditPlusPipeline does (calculate_dimensions of an area at the image's aspect, the VAE input through
        the pipeline's image processor), the areas scaled by (native side / 1024)² below 1024 px (module docstring)."""
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as edit_plus
        scale = min(1.0, self.native_size ** 2 / QWEN_NATIVE_AREA)
        shown, latents = [], []
        for image in images:
            ratio = image.width / image.height
            width, height = edit_plus.calculate_dimensions(edit_plus.CONDITION_IMAGE_SIZE * scale, ratio)
            shown.append(self.pipe.image_processor.resize(image, height, width))
            width, height = edit_plus.calculate_dimensions(edit_plus.VAE_IMAGE_SIZE * scale, ratio)
            latents.append(self.encode_image(self.pipe.image_processor.preprocess(image, height, width)))
        return shown, latents

    def reference_counts(self, references: list[torch.Tensor]) -> list[int]:
        """Tokens of each reference image (2×2 patches of its latent)."""
        return [h * w for h, w in (self.token_grid(latent.shape[-2:]) for latent in references)]

    # ---------------------------------------------------------------- the transformer
    def model_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """The transformer takes σ (QwenImagePipeline passes timestep / 1000)."""
        return sigma

    def _forward(self, latents, sigma, cond: Cond, guidance, attention_kwargs, references=None):
        """Packed image tokens, then each reference's (Edit-Plus), with their img_shapes; the text mask; σ."""
        batch, _, h, w = latents.shape
        tokens, shapes = [pack(latents.to(self.dtype))], [(1, h // 2, w // 2)]
        for reference in references or ():
            tokens.append(pack(reference.to(self.dtype)).expand(batch, -1, -1))
            shapes.append((1, reference.shape[-2] // 2, reference.shape[-1] // 2))
        return _qwen_forward, (self.transformer, torch.cat(tokens, dim=1), cond.embeds, cond.mask,
                               self.model_time(sigma), [shapes] * batch, attention_kwargs)

    def _velocity(self, out: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The image tokens' output (the references' are dropped, as the Edit-Plus pipeline does) as (B, C, h, w)."""
        return unpack(out[:, : (h // 2) * (w // 2)], h, w)

    def guided(self, out: torch.Tensor, scale: float) -> torch.Tensor:
        """Qwen-Image's true CFG over one call's [uncond, cond] halves, renormalised per token (2×2 patch × channels)
        to the conditional prediction's norm: comb · ‖cond‖ / ‖comb‖ (QwenImagePipeline.__call__)."""
        h, w = out.shape[-2:]
        uncond, cond = (pack(part) for part in out.float().chunk(2))
        comb = uncond + scale * (cond - uncond)
        return unpack(comb * (cond.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True)), h, w)


def _qwen_forward(transformer, hidden, text, mask, timestep, img_shapes, attention_kwargs=None):
    """The transformer forward every call runs (eagerly, or traced by torch.compile)."""
    kwargs = dict(attention_kwargs=dict(attention_kwargs)) if attention_kwargs else {}
    return transformer(hidden_states=hidden, encoder_hidden_states=text, encoder_hidden_states_mask=mask,
                       timestep=timestep, img_shapes=img_shapes, return_dict=False, **kwargs)[0]


FAMILIES["QwenImageTransformer2DModel"] = QwenImageBackbone
