"""DDIM on the sampling grid, both directions (Song et al. 2021, Eq. 12 with η = 0).

The grid is diffusers' DDIMScheduler grid ("leading" spacing + steps_offset): for 50 steps
t = 1, 21, …, 981. The clean end of the trajectory is the scheduler's final level (ᾱ[0] for SD's
`set_alpha_to_one=False`), so `ddim_sample` equals diffusers' DDIM sampler with η = 0 step for step.

Inversion evaluates ε at the latent it moves (ε(x_{t_j}, t_j) takes x_{t_j} to x_{t_{j+1}}), starting
from the clean latent at model time 0. Hence the inversion evaluates the UNet at exactly the
(latent, timestep) pairs that a reconstruction/source branch needs at every sampling step but the
first — what PnP's source cache reuses.
"""
from __future__ import annotations

from typing import Callable

import torch

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


@torch.no_grad()
def ddim_invert(backbone, model_fn: ModelFn, x0: torch.Tensor, timesteps: list[int], callback=None) -> list[torch.Tensor]:
    """DDIM inversion from the clean latent up the ascending grid. Returns the trajectory
    [x_clean, x_{t_0}, …, x_{t_{N−1}}] (N+1 latents); the UNet is called N times, at model times
    0, t_0, …, t_{N−2}, each on the latent being moved."""
    levels = [None] + list(timesteps)
    trajectory, x = [x0], x0
    for j in range(len(timesteps)):
        model_time = 0 if levels[j] is None else levels[j]
        x = ddim_step(backbone, model_fn(x, model_time, j), x, levels[j], levels[j + 1])
        trajectory.append(x)
        if callback is not None:
            callback(j, levels[j + 1], x)
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
