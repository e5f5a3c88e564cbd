"""The VAE half every backbone shares: images <-> latents with the VAE's own shift and scale.

latents = (posterior mean − shift_factor) × scaling_factor, and back, as diffusers' pipelines do (SD/SDXL
VAEs have no shift_factor: 0; SD3/FLUX VAEs have one). Each backbone says in which dtype its VAE runs.
"""
from __future__ import annotations

import torch


class LatentCodec:
    """Mixin: `encode_image` / `decode` through `self.vae`, on `self.device`, in `self._vae_dtype()`."""

    vae = None

    def _vae_dtype(self) -> torch.dtype:
        return self.vae.dtype

    def _shift(self) -> float:
        return self.vae.config.get("shift_factor", None) or 0.0

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents: (posterior mean (or a seeded sample) − shift) × scaling factor."""
        dtype = self._vae_dtype()
        with vae_in(self.vae, dtype):
            dist = self.vae.encode(images.to(self.device, dtype)).latent_dist
            latents = dist.sample(generator) if sample else dist.mean
        return ((latents - self._shift()) * self.vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 3, H, W) in [-1, 1]."""
        dtype = self._vae_dtype()
        with vae_in(self.vae, dtype):
            return self.vae.decode(latents.to(dtype) / self.vae.config.scaling_factor + self._shift()).sample.float()


class vae_in:
    """Temporarily run the VAE in `dtype` (diffusers' force_upcast for fp16 SDXL VAEs), then restore it."""

    def __init__(self, vae, dtype):
        self.vae, self.dtype, self.original = vae, dtype, vae.dtype

    def __enter__(self):
        if self.dtype != self.original:
            self.vae.to(self.dtype)

    def __exit__(self, *exc):
        if self.dtype != self.original:
            self.vae.to(self.original)
        return False
