"""DDIM on the sampling grid, both directions (Song et al. 2021, Eq. 12 with η = 0).

The grid is diffusers' DDIMScheduler grid ("leading" spacing + steps_offset): for 50 steps
t = 1, 21, …, 981. The clean end of the trajectory is the scheduler's final level (ᾱ[0] for SD's
`set_alpha_to_one=False`), so `ddim_sample` equals diffusers' DDIM sampler with η = 0 step for step.

Inversion conventions (`ddim_invert(..., convention=...)`): which model time each inverse step evaluates
ε at and which ᾱ levels it moves between. Each is one short function returning the steps:
- "zeroedit" (default): ε at the latent it moves (ε(x_{t_j}, t_j) takes x_{t_j} to x_{t_{j+1}}), starting
  from the clean latent at model time 0. Hence the inversion evaluates the UNet at exactly the
  (latent, timestep) pairs that a reconstruction/source branch needs at every sampling step but the
  first — what PnP's source cache reuses.
- "pnp" = "diffusers": ε at the *target* timestep from the previous latent: Plug-and-Play's preprocessing
  (pnp-diffusers `preprocess.py`) and diffusers' DDIMInverseScheduler (so diffusers' Pix2PixZero port).
- "pix2pix-zero": the official pix2pix-zero inversion (`src/utils/ddim_inv.py` with its
  `utils/scheduler.py`): the grid without its two ends and `alphas_cumprod[t − 1]` indexing.
Measured on the toy model (benchmarks/reference_inversion.py, 50 steps, decoded round trip vs the input):
"pnp"/"diffusers" reconstructs best (PnP's empty-prompt inversion: +0.5 dB over "zeroedit"; pix2pix-zero's
regularised one: +3.5 dB over "zeroedit", +0.6 dB over "pix2pix-zero"). translate keeps "zeroedit" by default
because only it makes PnP's source cache exact; edit uses "diffusers"; `preset="reference"` uses each
reference's own.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ..errors import ParameterError

ModelFn = Callable[[torch.Tensor, int, int], torch.Tensor]  # (x, model time t, step index) -> model output


def ddim_timesteps(backbone, steps: int) -> list[int]:
    """Ascending DDIM grid (diffusers' "leading" spacing with the scheduler's steps_offset)."""
    config = backbone.pipe.scheduler.config
    ratio = backbone.num_train_timesteps // steps
    offset = int(config.get("steps_offset", 0) or 0)
    return [i * ratio + offset for i in range(steps)]


def final_alpha(backbone) -> float:
    """ᾱ of the clean end of the grid: 1 if the scheduler sets `set_alpha_to_one`, else ᾱ[0]."""
    if backbone.pipe.scheduler.config.get("set_alpha_to_one", False):
        return 1.0
    return float(backbone.alphas_cumprod[0])


def level_alpha_sigma(backbone, t: int | None) -> tuple[float, float]:
    """sqrt(ᾱ), sqrt(1−ᾱ) at grid level t; t=None is the clean end (see final_alpha)."""
    abar = final_alpha(backbone) if t is None else float(backbone.alphas_cumprod[t])
    return abar ** 0.5, (1 - abar) ** 0.5


def ddim_step(backbone, model_out: torch.Tensor, x: torch.Tensor, t_from: int | None, t_to: int | None) -> torch.Tensor:
    """One deterministic DDIM move of x from level t_from to level t_to (either direction):
    x_to = α_to·x̂₀ + σ_to·ε̂, with (ε̂, x̂₀) from the model output at t_from."""
    a_from, s_from = level_alpha_sigma(backbone, t_from)
    a_to, s_to = level_alpha_sigma(backbone, t_to)
    eps, x0 = backbone.to_eps_x0(model_out, x, a_from, s_from)
    return (a_to * x0 + s_to * eps).to(x.dtype)


class InverseStep(NamedTuple):
    """One DDIM inversion step: the UNet runs at model time `t` on the current latent, which is taken to be at
    ᾱ index `level_from` (None: the clean end, see final_alpha) and moved to ᾱ index `level_to`; the result
    stands for the sampling-grid timestep `label` (the key of the latent a sampler starts from)."""
    t: int
    level_from: int | None
    level_to: int
    label: int


def zeroedit_steps(timesteps: list[int]) -> list[InverseStep]:
    """zeroedit: ε evaluated at the latent being moved, at its own time (model time 0 for the clean latent);
    N steps, clean → t_0 → … → t_{N−1}."""
    levels = [None] + list(timesteps)
    return [InverseStep(0 if levels[j] is None else levels[j], levels[j], levels[j + 1], levels[j + 1])
            for j in range(len(timesteps))]


def pnp_steps(timesteps: list[int]) -> list[InverseStep]:
    """Plug-and-Play (pnp-diffusers `preprocess.py`, `ddim_inversion`): ε evaluated at the *target* timestep
    t_j on the previous latent x_{t_{j−1}}, used for x̂₀ with ᾱ of the previous level and for the move;
    the first step starts from the clean end (`final_alpha_cumprod`). N steps, as zeroedit's. diffusers'
    DDIMInverseScheduler takes the same steps (convention "diffusers")."""
    levels = [None] + list(timesteps)
    return [InverseStep(levels[j + 1], levels[j], levels[j + 1], levels[j + 1]) for j in range(len(timesteps))]


def pix2pix_zero_steps(timesteps: list[int]) -> list[InverseStep]:
    """pix2pix-zero (official `src/utils/ddim_inv.py`: `timesteps.flip(0)[1:-1]`, stepped by its
    `utils/scheduler.py` `step(..., reverse=True)`): the UNet runs at t_1 … t_{N−2} only (48 of 50 steps) on
    a latent taken to be at ᾱ[t − 1] and moved to ᾱ[t + ratio − 1]. The clean latent is thus treated as at
    ᾱ[t_1 − 1] (ᾱ[20] for 50 steps) and the result, at ᾱ[t_{N−1} − 1] (ᾱ[980]), is sampled from t_{N−1} (981)."""
    grid = list(timesteps)
    return [InverseStep(grid[j], grid[j] - 1, grid[j + 1] - 1, grid[j + 1]) for j in range(1, len(grid) - 1)]


CONVENTIONS = {"zeroedit": zeroedit_steps, "pnp": pnp_steps, "diffusers": pnp_steps, "pix2pix-zero": pix2pix_zero_steps}


def inverse_steps(timesteps: list[int], convention: str = "zeroedit") -> list[InverseStep]:
    """The steps of a DDIM inversion up the ascending grid `timesteps` under `convention` (module docstring)."""
    if convention not in CONVENTIONS:
        raise ParameterError(f"convention must be one of {sorted(CONVENTIONS)}, got {convention!r}.")
    return CONVENTIONS[convention](timesteps)


@torch.no_grad()
def ddim_invert(backbone, model_fn: ModelFn, x0: torch.Tensor, timesteps: list[int], callback=None,
                convention: str = "zeroedit") -> list[torch.Tensor]:
    """DDIM inversion from the clean latent up the ascending grid. Returns the trajectory [x_clean, then the
    latent after each step] — for "zeroedit" and "pnp" [x_clean, x_{t_0}, …, x_{t_{N−1}}] (N+1 latents, N
    UNet calls; "zeroedit" calls at model times 0, t_0, …, t_{N−2}, "pnp" at t_0, …, t_{N−1}); for
    "pix2pix-zero" N−1 latents ending at the latent for t_{N−1} (N−2 calls, at t_1, …, t_{N−2}).
    `callback(j, label, x)` after each step (label: the grid timestep the latent stands for)."""
    trajectory, x = [x0], x0
    for j, step in enumerate(inverse_steps(timesteps, convention)):
        x = ddim_step(backbone, model_fn(x, step.t, j), x, step.level_from, step.level_to)
        trajectory.append(x)
        if callback is not None:
            callback(j, step.label, x)
    return trajectory


@torch.no_grad()
def ddim_sample(backbone, model_fn: ModelFn, x: torch.Tensor, timesteps: list[int], callback=None) -> torch.Tensor:
    """DDIM sampling (η = 0) down the grid from the latent at the top (timesteps ascending, as from
    `ddim_timesteps`); N UNet calls at t_{N−1}, …, t_0, ending at the clean level."""
    descending = list(reversed(timesteps))
    for i, t in enumerate(descending):
        t_to = descending[i + 1] if i + 1 < len(descending) else None
        x = ddim_step(backbone, model_fn(x, t, i), x, t, t_to)
        if callback is not None:
            callback(i, t, x)
    return x
