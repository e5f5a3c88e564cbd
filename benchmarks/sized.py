"""Random-weight pipelines with the real models' sizes, for speed and memory benchmarks (no weights needed:
speed does not depend on them). Built directly on the target device in the target dtype.

  sd15: SD 1.5 UNet (860 M) + SD VAE + CLIP ViT-L/14 text encoder (123 M)
  sd21: SD 2.1 UNet (865 M, linear projections, 1024-d context) + SD VAE + OpenCLIP ViT-H text encoder (354 M)
  sdxl: SDXL UNet (2.6 B) + SDXL VAE + CLIP ViT-L + OpenCLIP ViT-bigG text encoders

The tokenizer is zeroedit's tiny local one (prompt length, not vocabulary, sets the cost).
"""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from zeroedit.tiny import _sd_scheduler_config, tiny_tokenizer

SD_VAE = dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2, norm_num_groups=32)
SD_BLOCKS = dict(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)


def _text(hidden, layers, heads, intermediate, projection=None, with_projection=False):
    config = CLIPTextConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=intermediate, vocab_size=49408, max_position_embeddings=77,
                            bos_token_id=512, eos_token_id=513, pad_token_id=513,
                            projection_dim=projection or hidden, hidden_act="gelu")
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def build_sized(kind: str = "sd21", device: str = "cuda", dtype=torch.float16):
    """A random-weight pipeline of the given size (see module docstring)."""
    torch.manual_seed(0)
    with torch.device(device):
        if kind in ("sd15", "sd21"):
            context = 768 if kind == "sd15" else 1024
            unet = UNet2DConditionModel(sample_size=64 if kind == "sd15" else 96, cross_attention_dim=context,
                                        attention_head_dim=8 if kind == "sd15" else (5, 10, 20, 20),
                                        use_linear_projection=kind == "sd21", **SD_BLOCKS)
            text = _text(768, 12, 12, 3072) if kind == "sd15" else _text(1024, 23, 16, 4096)
            vae = AutoencoderKL(**SD_VAE, scaling_factor=0.18215)
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tiny_tokenizer(), unet=unet,
                                           scheduler=DDIMScheduler(**_sd_scheduler_config()), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        elif kind == "sdxl":
            unet = UNet2DConditionModel(
                sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            vae = AutoencoderKL(**SD_VAE, scaling_factor=0.13025)
            scheduler = EulerDiscreteScheduler(**{k: v for k, v in _sd_scheduler_config().items()
                                                  if k not in ("clip_sample", "set_alpha_to_one")},
                                               timestep_spacing="leading")
            pipe = StableDiffusionXLPipeline(
                vae=vae, text_encoder=_text(768, 12, 12, 3072),
                text_encoder_2=_text(1280, 32, 20, 5120, projection=1280, with_projection=True),
                tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler,
                force_zeros_for_empty_prompt=True, add_watermarker=False)
        else:
            raise ValueError(f"kind must be sd15, sd21 or sdxl, got {kind!r}")
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
