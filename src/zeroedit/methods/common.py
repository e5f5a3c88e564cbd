"""Shared plumbing of every method: argument checks, one lock per UNet, seeds, the step callback, inputs at the
working size and outputs back at the input's size.

Every check here raises a `zeroedit.errors` type before any model work; each exists once and every method
uses it (no copy of a check beside its twin).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import jobs
from ..backbones import check_pipe
from ..devices import offload_models
from ..errors import ParameterError, shorten
from ..images import fit, load_image, to_pil, to_unit_tensor, working_size

OUTPUT_TYPES = ("pil", "latent", "np", "pt")
SEED_LIMIT = 2 ** 64


# ----------------------------------------------------------------------------------------- checks
def check_number(value, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite real number (not a bool) within [minimum, maximum]; NaN and ±inf are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ParameterError(f"{name} must be a number, got {shorten(value)}.")
    value = float(value)
    if not math.isfinite(value):
        raise ParameterError(f"{name} must be a finite number, got {shorten(value)}.")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "-∞" if minimum is None else f"{minimum:g}"
        high = "∞" if maximum is None else f"{maximum:g}"
        raise ParameterError(f"{name} must be in [{low}, {high}], got {shorten(value)}.")
    return value


def check_steps(steps, name: str = "steps", minimum: int = 1, maximum: int | None = None) -> int:
    """An integer number of steps in [minimum, maximum] (`maximum`: see `step_limit`)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < minimum \
            or (maximum is not None and steps > maximum):
        bound = f"in {minimum}…{maximum}" if maximum is not None else f"≥ {minimum}"
        why = " (the most the scheduler's timestep grid holds)" if maximum is not None else ""
        raise ParameterError(f"{name} must be an integer {bound}{why}, got {shorten(steps)}.")
    return int(steps)


def step_limit(backbone) -> int:
    """The most steps a timestep grid of this model holds: its training timesteps minus the scheduler's
    steps_offset (999 on SD: 1000 steps would index timestep 1000, more would repeat t = 1)."""
    return backbone.num_train_timesteps - int(backbone.pipe.scheduler.config.get("steps_offset", 0) or 0)


def check_fraction(value, name: str) -> float:
    return check_number(value, name, 0.0, 1.0)


def check_window(value, steps: int, name: str) -> int:
    """The number of steps of an injection window: a fraction of `steps` (floor, robust to 0.29·100) or an int count."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if not 0 <= value <= steps:
            raise ParameterError(f"{name} as a step count must be in 0…{steps}, got {value}.")
        return int(value)
    return int(math.floor(steps * check_fraction(value, name) + 1e-6))


def check_choice(value, name: str, choices) -> str:
    if not any(value is c or (c is not None and isinstance(value, type(c)) and value == c) for c in choices):
        raise ParameterError(f"{name} must be one of {', '.join(map(repr, choices))}; got {shorten(value)}.")
    return value


def check_prompts(prompt, name: str = "prompt") -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ParameterError(f"{name} must be a string or a non-empty list of strings, got {shorten(prompt)}.")
    return prompts


def check_text(value, name: str) -> str:
    """A non-blank string (a concept, a phrase), stripped."""
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{name} must be a non-blank string, got {shorten(value)}.")
    return value.strip()


def check_seed(seed) -> int | None:
    """None (a fresh random seed) or an integer in [0, 2**64)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
        raise ParameterError(f"seed must be an integer in [0, 2**64) or None, got {shorten(seed)}.")
    return int(seed)


def check_callback(callback, name: str = "callback_on_step_end"):
    if callback is not None and not callable(callback):
        raise ParameterError(f"{name} must be a function callback(pipe, step, timestep, kwargs) or None, "
                             f"got {type(callback).__name__}.")
    return callback


def check_output_type(output_type) -> str:
    return check_choice(output_type, "output_type", OUTPUT_TYPES)


# ----------------------------------------------------------------------------------------- model families
# Each method's SD3/FLUX implementation by method name: methods/*_flow.py register themselves here (methods/
# __init__.py imports them) and reuse their UNet file's rules and geometry; the public functions dispatch here
# on flow pipelines, so neither file imports the other back.
FLOW_VARIANTS: dict = {}


# ----------------------------------------------------------------------------------------- one call at a time
def serialised(method):
    """Decorator of every method taking `pipe` first: refuse what is not a pipeline (ModelError), then hold the
    pipeline's UNet lock for the whole call (`zeroedit.jobs.exclusive`: calls from several threads on one
    pipeline run one after the other; inside a JobSession job the session holds it); afterwards, under model CPU
    offload, every model is back on the CPU (zeroedit/devices.py `offload_models`)."""
    @functools.wraps(method)
    def call(pipe, *args, **kwargs):
        with jobs.exclusive(check_pipe(pipe)):
            try:
                return method(pipe, *args, **kwargs)
            finally:
                offload_models(pipe)  # under model CPU offload: every model back on the CPU, as before the call
    return call


# ----------------------------------------------------------------------------------------- randomness, steps
def generator(seed) -> torch.Generator:
    """A CPU generator (noise is drawn on the CPU and moved, so a seed gives the same noise on any device)."""
    seed = check_seed(seed)
    gen = torch.Generator("cpu")
    gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item()))
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


# ----------------------------------------------------------------------------------------- sizes
def load_input(image, backbone, size=None, allow_large: bool = False, what: str = "image"):
    """Load an input image (upright, RGB) and fit it to the working size (images.working_size: the model's
    native long side by default). Returns (the image at its own size, the image at the working size)."""
    original = load_image(image, what)
    target = working_size(original.size, backbone.native_size, backbone.size_multiple, size, allow_large)
    return original, fit(original, target)


def finish(backbone, latents: torch.Tensor, output_type: str, size: tuple[int, int] | None = None, paste=None):
    """Final latents -> outputs in diffusers' `output_type` convention, resized to `size` = (w, h) (the input's
    own size; latents stay at the working size). `paste` = (background, mask) PIL images at `size`: the result
    is mask·output + (1 − mask)·background (compose's full-resolution background)."""
    if output_type == "latent":
        return latents
    images = backbone.decode(latents)
    size = tuple(size) if size is not None else (images.shape[-1], images.shape[-2])
    if output_type == "pil":
        pictures = [fit(picture, size) for picture in to_pil(images)]
        return [Image.composite(p, paste[0], paste[1]) for p in pictures] if paste is not None else pictures
    images = (images.clamp(-1, 1) + 1) / 2
    if (images.shape[-1], images.shape[-2]) != size:
        images = F.interpolate(images, size=(size[1], size[0]), mode="bicubic", antialias=True,
                               align_corners=False).clamp(0, 1)
    if paste is not None:
        weight = to_unit_tensor(paste[1]).to(images.device)
        images = images * weight + to_unit_tensor(paste[0]).to(images.device) * (1 - weight)
    return images if output_type == "pt" else images.permute(0, 2, 3, 1).cpu().numpy()
