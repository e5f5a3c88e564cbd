"""Offline random-weight tiny flow pipelines for tests: `load("tiny-sd3")`, `load("tiny-flux")`.

Built in-process, deterministically from a seed, never touching the network; real layouts, tiny widths:
- tiny-sd3: StableDiffusion3Pipeline. SD3Transformer2DModel with 2 joint (MM-DiT) blocks (the last one
  `context_pre_only`, as SD3's), 4 heads × 8; two CLIPTextModelWithProjection (the tiny CLIP of tiny.py) and a
  2-layer T5 encoder (d_model 64 = joint_attention_dim, so the CLIP states 2×32 are zero-padded to 64 as on
  SD3); FlowMatchEulerDiscreteScheduler with SD3's static shift 3.0.
- tiny-flux: FluxPipeline (FLUX.1-dev layout). FluxTransformer2DModel with 2 double- and 2 single-stream
  blocks, 4 heads × 8, RoPE axes (2, 2, 4), guidance embedding (`guidance_embeds=False` gives schnell's
  layout); CLIPTextModel (pooled) + T5; the scheduler config of FLUX.1-dev (dynamic shifting, mu from the
  image-token count).
- both: a ×8 AutoencoderKL (4 blocks) with 16 latent channels and the real models' scaling/shift factors.
- T5 tokenizer: a T5TokenizerFast (Unigram) whose vocabulary is written here: pad, eos, unk, the printable
  ASCII characters and the same with the word-start mark "▁"; model_max_length 32 (so prompts are 32 T5
  tokens instead of 256/512).
Default image size: 128 px (16×16 latent, 8×8 = 64 image tokens).
"""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                       SD3Transformer2DModel, StableDiffusion3Pipeline)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast

from .tiny import TINY_SIZE, _text_config, tiny_tokenizer

T5_LENGTH = 32
T5_WIDTH = 64
SD3_VAE = dict(scaling_factor=1.5305, shift_factor=0.0609)  # stabilityai/stable-diffusion-3-medium vae config
FLUX_VAE = dict(scaling_factor=0.3611, shift_factor=0.1159)  # black-forest-labs/FLUX.1-dev vae config
FLUX_DEV_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                          base_image_seq_len=256, max_image_seq_len=4096)


def tiny_t5_tokenizer(max_length: int = T5_LENGTH) -> T5TokenizerFast:
    """A T5 (Unigram) tokenizer with a locally written character vocabulary; see module docstring."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(chr(c), -1.0) for c in range(32, 127)] + [("▁" + chr(c), -1.0) for c in range(33, 127)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _t5() -> T5EncoderModel:
    config = T5Config(vocab_size=256, d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                      feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(config)


def _vae(factors: dict) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(16, 16, 32, 32), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=16, layers_per_block=1, norm_num_groups=8, sample_size=TINY_SIZE,
                         use_quant_conv=False, use_post_quant_conv=False, **factors)


def build_tiny_sd3(seed: int = 0) -> StableDiffusion3Pipeline:
    """Random-weight tiny SD3-shaped pipeline (see module docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=TINY_SIZE // 8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=8, num_attention_heads=4, joint_attention_dim=T5_WIDTH, caption_projection_dim=32,
            pooled_projection_dim=64, pos_embed_max_size=64)
        vae = _vae(SD3_VAE)
        text_encoder = CLIPTextModelWithProjection(_text_config())
        text_encoder_2 = CLIPTextModelWithProjection(_text_config())
        text_encoder_3 = _t5()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tiny_tokenizer(), text_encoder_2=text_encoder_2,
        tokenizer_2=tiny_tokenizer(), text_encoder_3=text_encoder_3, tokenizer_3=tiny_t5_tokenizer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_flux(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """Random-weight tiny FLUX.1-shaped pipeline (dev layout; schnell's with guidance_embeds=False)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=T5_WIDTH, pooled_projection_dim=32,
            guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4))
        vae = _vae(FLUX_VAE)
        text_encoder = CLIPTextModel(_text_config())
        text_encoder_2 = _t5()
    scheduler = FlowMatchEulerDiscreteScheduler(**(FLUX_DEV_SCHEDULER if guidance_embeds else dict(shift=1.0)))
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(),
                        text_encoder_2=text_encoder_2, tokenizer_2=tiny_t5_tokenizer(), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
