"""Offline random-weight tiny Z-Image pipeline for tests: `load("tiny-z-image")`, and the real Z-Image
transformer's configuration for the GPU benchmarks (`zimage_transformer_config(real=True)`).

Built in-process, deterministically from a seed, never touching the network; the real layout, tiny widths:
- ZImageTransformer2DModel: 2 noise-refiner (image only), 2 context-refiner (text only) and 2 main
  single-stream layers over [image, text], 4 heads × 8 (RoPE axes (2, 2, 4) = head_dim), patch 2, 16 latent
  channels, caption width 32 = the text encoder's hidden size.
- text encoder: a 3-layer Qwen3Model (hidden 32, 4 query / 2 key-value heads × 8) built from a config; the
  pipeline reads its hidden_states[-2].
- tokenizer: tiny.py's Qwen3 tokenizer (byte-level BPE without merges, Qwen's chat markers, a reduced Qwen3 chat
  template, shared with tiny FLUX.2 [klein]); model_max_length 512 (ZImagePipeline's max_sequence_length).
- VAE: tiny_flow's ×8 AutoencoderKL with 16 latent channels and FLUX.1's scaling/shift factors (Z-Image uses
  FLUX.1's VAE).
- scheduler: FlowMatchEulerDiscreteScheduler(shift=3.0), static shift, as Z-Image-Turbo's scheduler config (shift
  3.0 as public re-implementations state it; not re-checked against the hub offline).
Default image size: 128 px (16×16 latent, 8×8 = 64 image tokens, padded to 64).
"""
from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3Model

from .tiny import tiny_qwen3_tokenizer
from .tiny_flow import FLUX_VAE, _vae

TEXT_WIDTH = 32
ZIMAGE_TURBO_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)



def _qwen3(vocab_size: int) -> Qwen3Model:
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                         pad_token_id=256)  # <|endoftext|>
    return Qwen3Model(config)


def zimage_transformer_config(real: bool = False) -> dict:
    """ZImageTransformer2DModel arguments: the tiny model's, or (real=True) Z-Image's 6.15 B transformer, the
    Tongyi-MAI/Z-Image-Turbo transformer/config.json values as copies of that file in public repositories give them
    (dim 3840, 30 layers + 2 + 2 refiners, 30 heads × 128, Qwen3-4B's 2560-wide captions, RoPE axes (32, 48, 48)
    of lengths (1536, 512, 512); diffusers' class defaults differ only in the first length, 1024). Not re-checked
    against the hub offline."""
    if real:
        return dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                    n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560,
                    rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])
    return dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=2,
                n_heads=4, n_kv_heads=4, norm_eps=1e-5, qk_norm=True, cap_feat_dim=TEXT_WIDTH, rope_theta=256.0,
                t_scale=1000.0, axes_dims=[2, 2, 4], axes_lens=[1024, 512, 512])


def build_tiny_z_image(seed: int = 0) -> ZImagePipeline:
    """Random-weight tiny Z-Image-shaped pipeline (see module docstring)."""
    tokenizer = tiny_qwen3_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(**zimage_transformer_config())
        vae = _vae(FLUX_VAE)
        text_encoder = _qwen3(len(tokenizer))
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**ZIMAGE_TURBO_SCHEDULER), vae=vae,
                          text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
