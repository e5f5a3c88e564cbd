"""Shared plumbing of every method: argument checks, seeds, the step callback, outputs."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ParameterError
from ..images import to_pil

OUTPUT_TYPES = ("pil", "latent", "np", "pt")


def check_steps(steps, name: str = "steps", minimum: int = 1) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < minimum:
        raise ParameterError(f"{name} must be an integer ≥ {minimum}, got {steps!r}.")
    return int(steps)


def check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ParameterError(f"{name} must be a fraction in [0, 1], got {value!r}.")
    return float(value)


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ParameterError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value


def check_prompts(prompt, name: str = "prompt") -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ParameterError(f"{name} must be a string or a non-empty list of strings, got {prompt!r}.")
    return prompts


def generator(seed) -> torch.Generator:
    """A CPU generator (noise is drawn on the CPU and moved, so a seed gives the same noise on any device)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ParameterError(f"seed must be an integer or None, got {seed!r}.")
    gen = torch.Generator("cpu")
    gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item()))
    return gen


def randn(shape, gen: torch.Generator, device, dtype) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def step_end(pipe, callback, step: int, timestep, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' `callback_on_step_end(pipe, step, timestep, {"latents": latents})`; may replace latents."""
    if callback is None:
        return latents
    returned = callback(pipe, step, timestep, {"latents": latents})
    if isinstance(returned, dict) and returned.get("latents") is not None:
        return returned["latents"]
    return latents


def finish(backbone, latents: torch.Tensor, output_type: str):
    """Final latents -> outputs in diffusers' `output_type` convention."""
    if output_type == "latent":
        return latents
    images = backbone.decode(latents)
    if output_type == "pt":
        return (images.clamp(-1, 1) + 1) / 2
    if output_type == "np":
        return ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return to_pil(images)
