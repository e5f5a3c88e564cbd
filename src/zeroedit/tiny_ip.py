"""Offline random-weight IP-Adapters for the tiny models: `ze.load("tiny", ip_adapter=True)`.

Builds, deterministically from a seed, a small CLIP image encoder (CLIPVisionModelWithProjection) and an
IP-Adapter state dict in the original format ({"image_proj": ImageProjection weights, "ip_adapter":
{"<odd i>.to_k_ip.weight", "<odd i>.to_v_ip.weight"}}), and loads it through diffusers' own
`pipe.load_ip_adapter`, so the pipeline is set up exactly as with a downloaded adapter: plain IP-Adapter
(4 image tokens from `image_embeds`) or, with `plus=True`, IP-Adapter Plus (a 4-block Resampler over the
encoder's `hidden_states[-2]`, 16 image tokens).
"""
from __future__ import annotations

import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from .devices import compute_dtype, execution_device

IMAGE_SIZE = 32
EMBED_DIM = 32  # projection_dim (image_embeds)
HIDDEN_SIZE = 32  # the vision transformer's width (hidden_states)


def tiny_image_encoder(seed: int = 0) -> CLIPVisionModelWithProjection:
    config = CLIPVisionConfig(hidden_size=HIDDEN_SIZE, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=IMAGE_SIZE, patch_size=8, projection_dim=EMBED_DIM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModelWithProjection(config).eval()


def _linear(gen, out_features: int, in_features: int) -> torch.Tensor:
    return torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5


def _norm(prefix: str, dim: int) -> dict:
    return {f"{prefix}.weight": torch.ones(dim), f"{prefix}.bias": torch.zeros(dim)}


def plain_projection(gen, cross: int, tokens: int = 4) -> dict:
    """IP-Adapter's ImageProjection (original keys): image_embeds -> `tokens` tokens of the text width."""
    return {"proj.weight": _linear(gen, cross * tokens, EMBED_DIM), "proj.bias": torch.zeros(cross * tokens),
            **_norm("norm", cross)}


def plus_projection(gen, cross: int, tokens: int = 16, hidden: int = 64, depth: int = 4) -> dict:
    """IP-Adapter Plus' Resampler (original keys; one 64-wide head per block, as diffusers infers heads from
    to_q's width / 64): the encoder's penultimate hidden states -> `tokens` learned-query tokens."""
    state = {"latents": torch.randn(1, tokens, hidden, generator=gen) / hidden ** 0.5,
             "proj_in.weight": _linear(gen, hidden, HIDDEN_SIZE), "proj_in.bias": torch.zeros(hidden),
             "proj_out.weight": _linear(gen, cross, hidden), "proj_out.bias": torch.zeros(cross), **_norm("norm_out", cross)}
    for i in range(depth):
        state |= {**_norm(f"layers.{i}.0.norm1", hidden), **_norm(f"layers.{i}.0.norm2", hidden),
                  f"layers.{i}.0.to_q.weight": _linear(gen, 64, hidden),
                  f"layers.{i}.0.to_kv.weight": _linear(gen, 128, hidden),
                  f"layers.{i}.0.to_out.weight": _linear(gen, hidden, 64), **_norm(f"layers.{i}.1.0", hidden),
                  f"layers.{i}.1.1.weight": _linear(gen, 4 * hidden, hidden),
                  f"layers.{i}.1.3.weight": _linear(gen, hidden, 4 * hidden)}
    return state


def ip_adapter_state_dict(unet, seed: int = 0, plus: bool = False) -> dict:
    """Random IP-Adapter weights in the original layout for this UNet's cross-attention layers."""
    cross = unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(seed + 1)
    image_proj = plus_projection(gen, cross) if plus else plain_projection(gen, cross)
    modules = dict(unet.named_modules())
    ip_adapter, key_id = {}, 1
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        hidden = modules[name[: -len(".processor")]].to_k.out_features
        for kind in ("to_k_ip", "to_v_ip"):
            ip_adapter[f"{key_id}.{kind}.weight"] = _linear(gen, hidden, cross)
        key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def add_tiny_ip_adapter(pipe, seed: int = 0, plus: bool = False):
    """Register a tiny image encoder and feature extractor, and load a random IP-Adapter (Plus when `plus`)
    with diffusers' own `load_ip_adapter`."""
    pipe.register_modules(image_encoder=tiny_image_encoder(seed).to(execution_device(pipe), compute_dtype(pipe.unet)),
                          feature_extractor=CLIPImageProcessor(size=IMAGE_SIZE, crop_size=IMAGE_SIZE))
    pipe.load_ip_adapter(ip_adapter_state_dict(pipe.unet, seed, plus), subfolder=None, weight_name=None,
                         image_encoder_folder=None)
    return pipe


def flux_ip_adapter_state_dict(transformer, seed: int = 0) -> dict:
    """Random FLUX IP-Adapter weights in the layout diffusers' FluxIPAdapterMixin reads (XLabs' format after its
    key renaming): {"image_proj": ImageProjection (image_embeds -> 4 tokens of the T5 width), "ip_adapter":
    {"<i>.to_k_ip.weight/bias", "<i>.to_v_ip.weight/bias"} for every double-stream block i}."""
    width, inner = transformer.config.joint_attention_dim, transformer.inner_dim
    gen = torch.Generator().manual_seed(seed + 2)
    ip_adapter = {}
    for i in range(transformer.config.num_layers):
        for kind in ("to_k_ip", "to_v_ip"):
            ip_adapter[f"{i}.{kind}.weight"] = _linear(gen, inner, width)
            ip_adapter[f"{i}.{kind}.bias"] = torch.zeros(inner)
    return {"image_proj": plain_projection(gen, width), "ip_adapter": ip_adapter}


def add_tiny_flux_ip_adapter(pipe, seed: int = 0):
    """Register a tiny image encoder and feature extractor on a FluxPipeline and load a random FLUX IP-Adapter with
    diffusers' own `load_ip_adapter` (FluxIPAdapterAttnProcessor on every double-stream block)."""
    transformer = pipe.transformer
    pipe.register_modules(image_encoder=tiny_image_encoder(seed).to(execution_device(pipe), compute_dtype(transformer)),
                          feature_extractor=CLIPImageProcessor(size=IMAGE_SIZE, crop_size=IMAGE_SIZE))
    pipe.load_ip_adapter(flux_ip_adapter_state_dict(transformer, seed), weight_name=None)
    return pipe
