"""edit (pix2pix-zero) benchmark: UNet forward evaluations and backward passes, sequential calls, wall time,
peak memory at defaults, the bytes the guidance gradient keeps per step (measured on the given pipe), and the bytes
of cross-attention probabilities computed for SD-1.5-sized layers at 512² (ours vs the reference implementations).

    PYTHONPATH=src python benchmarks/edit.py                   # tiny random-weight model on CPU
    from benchmarks.edit import run; run(pipe, size=512)       # any SD 1.x/2.x pipeline (the lead's GPU run)
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import zeroedit as ze

# SD 1.x attn2 layers at 512² (64×64 latent): query tokens of the 16 cross-attention layers, 8 heads, 77 tokens.
SD15_ATTN2_TOKENS = [64 * 64] * 2 + [32 * 32] * 2 + [16 * 16] * 2 + [8 * 8] + [16 * 16] * 3 + [32 * 32] * 3 + [64 * 64] * 3
SD15_HEADS, TEXT_TOKENS = 8, 77


def sd15_xa_bytes(steps: int = 50, model_bytes: int = 2) -> dict:
    """Cross-attention probability bytes for SD-1.5 at 512². Ours: the reference branch's maps (1 batch
    element, model dtype) live for one step only. Reference implementations: both CFG halves in fp32, kept for
    every step before the edit pass."""
    per_element = SD15_HEADS * TEXT_TOKENS * sum(SD15_ATTN2_TOKENS)
    ours = per_element * model_bytes
    reference_step = 2 * per_element * 4
    return dict(ours_bytes_per_step=ours, ours_bytes_held=ours, reference_bytes_per_step=reference_step,
                reference_bytes_held=reference_step * steps)


def _image(size: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def run(pipe, size: int = 128, steps: int = 50, seed: int = 0, **kw) -> dict:
    """One edit at defaults (cat → dog, fallback caption); returns evals (forward/backward), calls, seconds,
    peak memory and the measured per-step bytes autograd keeps for the guidance gradient (stats.store_bytes
    "guidance": every saved activation of the gradient call, the reference maps among them)."""
    direction = ze.directions.build(pipe, "cat", "dog")  # built (and cached) outside the timed edit
    out = ze.edit(pipe, _image(size), "cat", "dog", direction=direction, steps=steps, seed=seed,
                  output_type="latent", **kw)
    s = out.stats
    return dict(size=size, steps=steps, unet_forward_evals=s.unet_evals, unet_calls=s.unet_calls,
                unet_backward=s.unet_backward, seconds=round(s.seconds, 2), peak_memory_bytes=s.peak_memory_bytes,
                guidance_bytes_per_step=s.store_bytes.get("guidance"),
                diffusers_pix2pix_zero=dict(unet_calls=200, unet_backward=50), sd15_512=sd15_xa_bytes(steps))


if __name__ == "__main__":
    torch.set_num_threads(1)
    for key, value in run(ze.load("tiny")).items():
        print(f"{key}: {value}")
