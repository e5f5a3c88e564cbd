"""Offline random-weight IP-Adapters for the tiny models: `ze.load("tiny", ip_adapter=True)`.

Builds, deterministically from a seed, a small CLIP image encoder (CLIPVisionModelWithProjection) and an
IP-Adapter state dict in the original format ({"image_proj": ImageProjection weights, "ip_adapter":
{"<odd i>.to_k_ip.weight", "<odd i>.to_v_ip.weight"}}), and loads it through diffusers' own
`pipe.load_ip_adapter`, so the pipeline is set up exactly as with a downloaded adapter (plain IP-Adapter,
4 image tokens from `image_embeds`).
"""
from __future__ import annotations

import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

IMAGE_SIZE = 32
EMBED_DIM = 32


def tiny_image_encoder(seed: int = 0) -> CLIPVisionModelWithProjection:
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=IMAGE_SIZE, patch_size=8, projection_dim=EMBED_DIM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModelWithProjection(config).eval()


def ip_adapter_state_dict(unet, seed: int = 0, tokens: int = 4) -> dict:
    """Random IP-Adapter weights in the original layout for this UNet's cross-attention layers."""
    cross = unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(seed + 1)
    image_proj = {"proj.weight": torch.randn(cross * tokens, EMBED_DIM, generator=gen) / EMBED_DIM ** 0.5,
                  "proj.bias": torch.zeros(cross * tokens), "norm.weight": torch.ones(cross),
                  "norm.bias": torch.zeros(cross)}
    modules = dict(unet.named_modules())
    ip_adapter, key_id = {}, 1
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        hidden = modules[name[: -len(".processor")]].to_k.out_features
        for kind in ("to_k_ip", "to_v_ip"):
            ip_adapter[f"{key_id}.{kind}.weight"] = torch.randn(hidden, cross, generator=gen) / cross ** 0.5
        key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def add_tiny_ip_adapter(pipe, seed: int = 0):
    """Register a tiny image encoder and feature extractor, and load a random IP-Adapter with diffusers."""
    pipe.register_modules(image_encoder=tiny_image_encoder(seed).to(pipe.unet.device, pipe.unet.dtype),
                          feature_extractor=CLIPImageProcessor(size=IMAGE_SIZE, crop_size=IMAGE_SIZE))
    pipe.load_ip_adapter(ip_adapter_state_dict(pipe.unet, seed), subfolder=None, weight_name=None,
                         image_encoder_folder=None)
    return pipe
