"""translate (Plug-and-Play) benchmark: UNet evaluations, sequential calls, wall time and peak memory per
`source_cache` mode, and the bytes the memory cache holds for SD-sized layers at 512² (computed from shapes).

    PYTHONPATH=src python benchmarks/translate.py            # tiny random-weight model on CPU
    from benchmarks.translate import run; run(pipe, size=512) # any pipeline (the lead's GPU run)
"""
from __future__ import annotations

import numpy as np
from PIL import Image

import zeroedit as ze
from zeroedit.methods.common import check_window as window

# SD 1.x/2.x decoder at 512² (64×64 latent): (tokens, channels) of the injected tensors.
SD_FEATURE = (16 * 16, 1280)  # up_blocks[1].resnets[1] conv2 output
SD_ATTENTION = [(16 * 16, 1280)] * 2 + [(32 * 32, 640)] * 3 + [(64 * 64, 320)] * 3  # ldm output blocks 4–11


def sd_cache_bytes(steps: int = 50, feature_steps=0.8, attention_steps=0.5, bytes_per_element: int = 2) -> dict:
    """Bytes of the memory-mode cache for SD at 512²: features for the first k_f steps and q and k of the 8
    layers for the first k_a steps, less the first step (evaluated in-batch, not cached)."""
    k_f, k_a = window(feature_steps, steps, "feature_steps"), window(attention_steps, steps, "attention_steps")
    feature = SD_FEATURE[0] * SD_FEATURE[1] * bytes_per_element
    attention = sum(2 * tokens * channels for tokens, channels in SD_ATTENTION) * bytes_per_element
    cached_f, cached_a = max(k_f - 1, 0), max(k_a - 1, 0)
    return dict(feature_bytes_per_step=feature, qk_bytes_per_step=attention, cached_feature_steps=cached_f,
                cached_attention_steps=cached_a, total_bytes=cached_f * feature + cached_a * attention)


def _image(size: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def run(pipe, size: int = 128, prompts=("a photo of a bronze horse",), steps: int = 50, repeats: int = 1, **kw) -> dict:
    """Run translate in both cache modes; returns per-mode evals, calls, seconds, peak memory and cache bytes."""
    image = _image(size)
    figures = {}
    for mode in ("memory", "recompute"):
        best = None
        for _ in range(repeats):
            out = ze.translate(pipe, image, list(prompts), steps=steps, source_cache=mode, output_type="latent", **kw)
            stats = out.stats
            row = dict(unet_evals=stats.unet_evals, unet_calls=stats.unet_calls, seconds=round(stats.seconds, 3),
                       peak_memory_bytes=stats.peak_memory_bytes, cache_bytes=sum(stats.store_bytes.values()))
            best = row if best is None or row["seconds"] < best["seconds"] else best
        figures[mode] = best
    figures["sd_512_cache_fp16"] = sd_cache_bytes(steps)
    return figures


if __name__ == "__main__":
    import json
    import logging

    logging.disable(logging.WARNING)
    pipe = ze.load("tiny")
    pipe.set_progress_bar_config(disable=True)
    print("tiny, 1 prompt:", json.dumps(run(pipe), indent=1))
    print("tiny, 2 prompts:", json.dumps(run(pipe, prompts=("a bronze horse", "a zebra")), indent=1))
