"""Seconds, sequential transformer calls and peak memory of flow invert + translate on a FLUX-sized model.

    python benchmarks/flow_gpu.py            # on a CUDA device: FLUX.1-dev-sized random weights, bf16, 1024²
    python benchmarks/flow_gpu.py --model flux2-klein-4b   # FLUX.2 [klein] 4B-sized (also flux2-klein-9b, flux2-dev)
    python benchmarks/flow_gpu.py --tiny     # anywhere: the tiny FLUX pipeline at 128² (checks the script)
    python benchmarks/flow_gpu.py --model z-image [--tiny]   # Z-Image-sized (6 B) random weights / tiny-z-image

The FLUX.1-dev transformer config (19 double + 38 single blocks, 24 heads × 128 = 3072 wide, T5 width 4096,
pooled 768, guidance embedding, ~11.9 B parameters) is built with random weights directly on the device in
bf16 (a random fp32 init of 12 B parameters does not fit a CPU). The VAE has FLUX's config (16 latent
channels, 128/256/512/512, ×8). The text encoders keep FLUX's output widths (CLIP 768, T5 4096 with 512
tokens) but only one layer each: the real T5-XXL encode (~4.7 B parameters) runs once per prompt and is not
what editing methods differ in. Figures to compare with: FireFlow 24.5 s (8 steps) and RF-Solver 78.8 s
(25 steps) per edit on an RTX 3090 (FireFlow paper, Table 1).
FLUX.2 (`--model flux2-…`, `build_flux2_sized`): the published transformer config (zeroedit.tiny_flux2
`flux2_transformer_config`: [klein] 4B 5 + 20 blocks × 3072, 9B 8 + 24 × 4096, both true CFG; [dev] 8 + 48 ×
6144 with the guidance embedding), AutoencoderKLFlux2's own (= the real) config, and text encoders of the real
output width (Qwen3 2560 / 4096, Mistral-3 5120) with 28 / 31 thin layers (2 heads × 128, MLP 32 wide; the pipelines
read hidden states 9, 18, 27 / 10, 20, 30) and 512 text tokens, as the pipelines.
Z-Image (`--model z-image`): the 6 B transformer of zeroedit.tiny_zimage.zimage_transformer_config(real=True)
(30 + 2 + 2 single-stream layers, 3840 wide), FLUX's VAE config, a 2-layer Qwen3 text encoder of Qwen3-4B's width
(2560) with the tiny byte-level tokenizer, Z-Image-Turbo's scheduler; CFG (two branches per call) at
ZImagePipeline's guidance 5.
`run(pipe, size, cases)` returns {case: {seconds, calls, evals, peak_memory_gib}}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

import zeroedit as ze  # noqa: E402

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
FLUX_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
CASES = {  # name -> (kind, kwargs)
    "invert fireflow 8": ("invert", dict(method="fireflow", steps=8)),
    "translate default (fireflow 8, 1 step injected)": ("translate", dict()),
    "translate 4 prompts (fireflow 8)": ("translate", dict(prompt=["a", "b", "c", "d"])),
    "translate reference (rf-solver 25, 3 steps injected)": ("translate", dict(preset="reference")),
    "translate flowedit (28 steps, n_max 24)": ("translate", dict(method="flowedit", seed=0)),
}


def _sized(build, dtype):
    """Run `build()` with `dtype` as torch's default dtype and a fixed seed (random weights of the real sizes)."""
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        return build()
    finally:
        torch.set_default_dtype(previous)


def build_flux_sized(device: str = "cuda", dtype=torch.bfloat16, **overrides):
    """A FluxPipeline with FLUX.1-dev-sized random transformer and VAE (see module docstring), built on `device`;
    `overrides` change the transformer config (e.g. num_layers=1 to check the builder on a CPU)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    from zeroedit.tiny import tiny_tokenizer
    from zeroedit.tiny_flow import FLUX_DEV_SCHEDULER, tiny_t5_tokenizer
    def build():
        with torch.device(device):
            clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                                                num_attention_heads=12, vocab_size=1000, max_position_embeddings=77,
                                                bos_token_id=512, eos_token_id=513, pad_token_id=513))
            t5 = T5EncoderModel(T5Config(vocab_size=256, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=1,
                                         feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1))
            return FluxTransformer2DModel(**{**FLUX_DEV, **overrides}), AutoencoderKL(**FLUX_VAE), clip, t5
    transformer, vae, clip, t5 = _sized(build, dtype)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER), vae=vae, text_encoder=clip,
                        tokenizer=tiny_tokenizer(), text_encoder_2=t5, tokenizer_2=tiny_t5_tokenizer(512),
                        transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux2_sized(variant: str = "klein-4b", device: str = "cuda", dtype=torch.bfloat16, **overrides):
    """A Flux2KleinPipeline ("klein-4b", "klein-9b") or Flux2Pipeline ("dev") with FLUX.2-sized random
    transformer and VAE, built on `device` (see module docstring); `overrides` change the transformer config."""
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline,
                           Flux2Transformer2DModel)
    from zeroedit.tiny_flow import FLUX_DEV_SCHEDULER
    from zeroedit.tiny import tiny_qwen3_tokenizer
    from zeroedit.tiny_flux2 import _mistral3, _qwen3, flux2_transformer_config, tiny_mistral_tokenizer
    config = {**flux2_transformer_config(real=True, variant=variant), **overrides}

    def build():
        with torch.device(device):
            width = config["joint_attention_dim"] // 3
            return (Flux2Transformer2DModel(**config), AutoencoderKLFlux2(),
                    _mistral3(width, 128) if variant == "dev" else _qwen3(width, 128))
    transformer, vae, text_encoder = _sized(build, dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    if variant == "dev":
        pipe = Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder.eval(),
                             tokenizer=tiny_mistral_tokenizer(512), transformer=transformer)
    else:
        pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder.eval(),
                                  tokenizer=tiny_qwen3_tokenizer(512), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_zimage_sized(device: str = "cuda", dtype=torch.bfloat16, **overrides):
    """A ZImagePipeline with the Z-Image-sized random transformer (see module docstring), built on `device`;
    `overrides` change the transformer config (e.g. n_layers=1, dim=64 to check the builder on a CPU)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model
    from zeroedit.tiny import tiny_qwen3_tokenizer
    from zeroedit.tiny_zimage import ZIMAGE_TURBO_SCHEDULER, zimage_transformer_config
    config = {**zimage_transformer_config(real=True), **overrides}
    tokenizer = tiny_qwen3_tokenizer()

    def build():
        with torch.device(device):
            width = config["cap_feat_dim"]
            text = Qwen3Config(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=3 * width,
                               num_hidden_layers=2, num_attention_heads=width // 128,
                               num_key_value_heads=max(1, width // 256), head_dim=128, pad_token_id=256)
            return ZImageTransformer2DModel(**config), AutoencoderKL(**FLUX_VAE), Qwen3Model(text)
    transformer, vae, text_encoder = _sized(build, dtype)
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**ZIMAGE_TURBO_SCHEDULER), vae=vae,
                          text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


BUILDERS = {  # --model -> (build the sized pipeline on the GPU, the tiny model for --tiny)
    "flux1-dev": (build_flux_sized, "tiny-flux"),
    "flux2-klein-4b": (lambda: build_flux2_sized("klein-4b"), "tiny-flux2"),
    "flux2-klein-9b": (lambda: build_flux2_sized("klein-9b"), "tiny-flux2"),
    "flux2-dev": (lambda: build_flux2_sized("dev"), "tiny-flux2"),
    "z-image": (build_zimage_sized, "tiny-z-image"),
}


def _image(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return (np.stack([np.sin(6 * xx), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1) * 127 + 128).astype(np.uint8)


def run(pipe, size: int = 1024, cases=None, warmup: bool = True) -> dict:
    """Each case once (after one warm-up translate at 2 steps); seconds and peak memory from zeroedit's Timer."""
    image, results = _image(size), {}
    if warmup:
        ze.translate(pipe, image, "warm up", steps=2, output_type="latent")
    for name, (kind, kwargs) in (cases or CASES).items():
        kwargs = dict(kwargs)
        if kind == "invert":
            out = ze.invert(pipe, image, **kwargs)
        else:
            out = ze.translate(pipe, image, kwargs.pop("prompt", "a photo of a dog"), output_type="latent", **kwargs)
        stats = out.stats
        results[name] = dict(seconds=round(stats.seconds, 2), calls=stats.unet_calls, evals=stats.unet_evals,
                             peak_memory_gib=round(stats.peak_memory_bytes / 2 ** 30, 2))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny FLUX at 128² on any device (checks the script)")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--model", default="flux1-dev", choices=tuple(BUILDERS), help="the model whose sizes to build")
    args = parser.parse_args()
    build, tiny = BUILDERS[args.model]
    if args.tiny:
        pipe, size = ze.load(tiny), args.size or 128
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny")
        pipe, size = build(), args.size or 1024
        params = sum(p.numel() for p in pipe.transformer.parameters())
        print(f"transformer: {params / 1e9:.2f} B parameters, {torch.cuda.get_device_name()}")
    print(f"\n| {args.model}: case ({size}²) | seconds | sequential calls | sample-evaluations | peak memory GiB |")
    print("|---|---|---|---|---|")
    for name, row in run(pipe, size).items():
        print(f"| {name} | {row['seconds']} | {row['calls']} | {row['evals']} | {row['peak_memory_gib']} |")


if __name__ == "__main__":
    main()
