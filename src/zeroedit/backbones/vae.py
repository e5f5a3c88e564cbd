"""The VAE half every backbone shares: images <-> latents with the VAE's own shift and scale.

latents = (posterior mean − shift_factor) × scaling_factor, and back, as diffusers' pipelines do (SD/SDXL
VAEs have no shift_factor: 0; SD3/FLUX VAEs have one). Each backbone says in which dtype its VAE runs.
"""
from __future__ import annotations

import logging

import torch

from ..devices import compute_dtype, recasts

logger = logging.getLogger(__name__)


class LatentCodec:
    """Mixin: `encode_image` / `decode` through `self.vae`, on `self.device`, in `self._vae_dtype()`."""

    vae = None

    def _vae_dtype(self) -> torch.dtype:
        return compute_dtype(self.vae)

    def _shift(self) -> float:
        return self.vae.config.get("shift_factor", None) or 0.0

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents: (posterior mean (or a seeded sample) − shift) × scaling factor."""
        with vae_in(self.vae, self._vae_dtype()) as dtype:
            dist = self.vae.encode(images.to(self.device, dtype)).latent_dist
            latents = dist.sample(generator) if sample else dist.mean
        return ((latents - self._shift()) * self.vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 3, H, W) in [-1, 1]."""
        with vae_in(self.vae, self._vae_dtype()) as dtype:
            latents = latents.to(self.device, dtype) / self.vae.config.scaling_factor + self._shift()
            return self.vae.decode(latents).sample.float()


class vae_in:
    """Temporarily run the VAE in `dtype` (diffusers' force_upcast for fp16 SDXL VAEs), then restore it; `with
    vae_in(vae, dtype) as used:` gives the dtype it runs in. `.to(dtype)` and back on a plain or accelerate-offloaded
    VAE; a VAE whose memory feature a cast would break (group offloading, layerwise casting, quantized weights:
    zeroedit/devices.py `recasts`) keeps its own dtype, with a logged warning, and comes back as given."""

    def __init__(self, vae, dtype):
        self.vae, self.original = vae, compute_dtype(vae)
        self.dtype = dtype if dtype == self.original or not recasts(vae) else self.original
        if self.dtype != dtype:
            logger.warning("the VAE runs in %s, not %s: its group offloading, layerwise casting or quantization "
                           "cannot be recast without breaking it (an fp16 SDXL VAE may overflow; the fp16-fix VAE "
                           "does not).", self.original, dtype)

    def __enter__(self) -> torch.dtype:
        if self.dtype != self.original:
            self.vae.to(self.dtype)
        return self.dtype

    def __exit__(self, *exc):
        if self.dtype != self.original:
            self.vae.to(self.original)
        return False
