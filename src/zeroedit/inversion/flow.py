"""Rectified-flow ODE solvers, both directions (inversion: σ ascending 0 → 1; sampling: σ descending 1 → 0).

Rectified flow: x_σ = (1 − σ)·x₀ + σ·ε and the model's velocity v(x, σ) ≈ ε − x₀ drives dx/dσ = v. Each solver
is one pure function `(model_fn, x, sigmas, callback=None) -> trajectory` in k-diffusion's style: the same
function inverts (ascending σ) and samples (descending σ). `model_fn(x, σ, step, stage)` returns the velocity;
`stage` is "start" (at σ_i) or "mid" (at the midpoint of step i), so a caller can key what it records by
(step, stage). Arithmetic in float32; the trajectory is [x at sigmas[0], …, x at sigmas[-1]].

Calls per solver for N steps: euler N, rf-solver 2N, fireflow N + 1.
"""
from __future__ import annotations

from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, float, int, str], torch.Tensor]  # (x, σ, step index, "start" | "mid") -> velocity


def _done(trajectory, callback, i, sigma, x):
    """Append the step's result; `callback(i, σ, x)` observes it and may return replacement latents (a tensor);
    anything else it returns (None, diffusers' kwargs dict) is ignored, as by the UNet inversions."""
    if callback is not None:
        replaced = callback(i, sigma, x)
        x = replaced.float() if isinstance(replaced, torch.Tensor) else x
    trajectory.append(x)
    return x


@torch.no_grad()
def euler(model_fn: ModelFn, x: torch.Tensor, sigmas: list[float], callback=None) -> list[torch.Tensor]:
    """Euler steps of the flow ODE, x_{i+1} = x_i + (σ_{i+1} − σ_i)·v(x_i, σ_i): plain flow-ODE inversion when
    σ ascends (the first-order baseline of RF-Solver and FireFlow; diffusers' FlowMatchEulerDiscreteScheduler
    step when it descends). One call per step."""
    x, trajectory = x.float(), [x.float()]
    for i in range(len(sigmas) - 1):
        sigma, h = sigmas[i], sigmas[i + 1] - sigmas[i]
        x = x + h * model_fn(x, sigma, i, "start").float()
        x = _done(trajectory, callback, i, sigmas[i + 1], x)
    return trajectory


@torch.no_grad()
def rf_solver(model_fn: ModelFn, x: torch.Tensor, sigmas: list[float], callback=None) -> list[torch.Tensor]:
    """RF-Solver (Wang et al. 2024, "Taming Rectified Flow for Inversion and Editing"): the
    second-order Taylor expansion x_{i+1} = x_i + h·v + ½h²·v', with v' estimated by the finite difference
    (v(x_mid, σ_i + h/2) − v(x_i, σ_i)) / (h/2) from the midpoint x_mid = x_i + (h/2)·v. Two calls per step
    (algebraically the explicit midpoint rule)."""
    x, trajectory = x.float(), [x.float()]
    for i in range(len(sigmas) - 1):
        sigma, h = sigmas[i], sigmas[i + 1] - sigmas[i]
        v = model_fn(x, sigma, i, "start").float()
        v_mid = model_fn(x + 0.5 * h * v, sigma + 0.5 * h, i, "mid").float()
        derivative = (v_mid - v) / (0.5 * h)
        x = x + h * v + 0.5 * h * h * derivative
        x = _done(trajectory, callback, i, sigmas[i + 1], x)
    return trajectory


@torch.no_grad()
def fireflow(model_fn: ModelFn, x: torch.Tensor, sigmas: list[float], callback=None) -> list[torch.Tensor]:
    """FireFlow (Deng et al. 2024, "FireFlow: Fast Inversion of Rectified Flow for Image Semantic Editing"):
    the midpoint rule x_{i+1} = x_i + h·v(x_i + (h/2)·v̂_i, σ_i + h/2), where v̂_i is the previous
    step's midpoint velocity reused in place of v(x_i, σ_i) (evaluated only at the first step). N + 1 calls."""
    x, trajectory = x.float(), [x.float()]
    v_hat = None
    for i in range(len(sigmas) - 1):
        sigma, h = sigmas[i], sigmas[i + 1] - sigmas[i]
        if v_hat is None:
            v_hat = model_fn(x, sigma, i, "start").float()
        v_hat = model_fn(x + 0.5 * h * v_hat, sigma + 0.5 * h, i, "mid").float()
        x = x + h * v_hat
        x = _done(trajectory, callback, i, sigmas[i + 1], x)
    return trajectory


SOLVERS = {"euler": euler, "rf-solver": rf_solver, "fireflow": fireflow}


def solver_calls(method: str, steps: int) -> int:
    """Model calls of `method` over `steps` steps."""
    return {"euler": steps, "rf-solver": 2 * steps, "fireflow": steps + 1}[method]
