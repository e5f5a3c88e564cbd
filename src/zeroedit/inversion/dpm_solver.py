"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", Alg. 2: multistep, data prediction) in continuous time,
as TF-ICON's reference uses it, for sampling and — run forward in time — for inversion.

Noise schedule: the discrete ᾱ of the model turned continuous as in `dpm_solver_pytorch`'s
NoiseScheduleVP("discrete"): log α(t) piecewise linear through t_n = (n+1)/N, n = 0…N−1; the
model sees time 1000·t − 1 (non-integer), i.e. 999 at t = 1. The time grid is uniform in t over
[1/N, 1]. The second-order update is the "dpmsolver" (midpoint) type, the reference default;
order-2 multistep throughout after a first-order warm-up step, ending at t = 1/N with an order-2
step (no final denoise to σ = 0), as in the reference.
"""
from __future__ import annotations

from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x, model time (float tensor), step index) -> model output


class VPSchedule:
    """Continuous-time VP schedule from a model's discrete ᾱ (see module docstring)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.N = len(alphas_cumprod)
        self.t_grid = torch.linspace(0.0, 1.0, self.N + 1, dtype=torch.float64)[1:]
        self.log_alpha_grid = 0.5 * torch.log(alphas_cumprod.to(torch.float64))

    def log_alpha(self, t: float) -> float:
        t = torch.as_tensor(float(t), dtype=torch.float64)
        idx = torch.clamp(torch.searchsorted(self.t_grid, t) - 1, 0, self.N - 2)
        t0, t1 = self.t_grid[idx], self.t_grid[idx + 1]
        y0, y1 = self.log_alpha_grid[idx], self.log_alpha_grid[idx + 1]
        return float(y0 + (t - t0) * (y1 - y0) / (t1 - t0))

    def alpha_sigma_lambda(self, t: float) -> tuple[float, float, float]:
        import math
        log_alpha = self.log_alpha(t)
        sigma = math.sqrt(max(1.0 - math.exp(2 * log_alpha), 1e-20))
        return math.exp(log_alpha), sigma, log_alpha - math.log(sigma)

    def model_time(self, t: float) -> float:
        return (float(t) - 1.0 / self.N) * 1000.0

    def times(self, steps: int, invert: bool = False) -> list[float]:
        """steps+1 uniform times from 1 down to 1/N (or up, for inversion)."""
        grid = torch.linspace(1.0, 1.0 / self.N, steps + 1, dtype=torch.float64).tolist()
        return grid[::-1] if invert else grid


class MultistepDPMSolverPP:
    """Stateful DPM-Solver++ multistep (data prediction). `push(t, x0)` adds the model's x̂₀ at time t;
    `step(x, t_next)` moves x from the last pushed time to t_next with the highest order the history allows."""

    def __init__(self, schedule: VPSchedule, order: int = 2):
        if order not in (1, 2):
            raise ValueError("order must be 1 or 2")
        self.schedule, self.order = schedule, order
        self.history: list[tuple[float, torch.Tensor]] = []

    def push(self, t: float, x0: torch.Tensor):
        self.history = (self.history + [(t, x0)])[-self.order:]

    def step(self, x: torch.Tensor, t_next: float, order: int | None = None) -> torch.Tensor:
        order = min(order or self.order, len(self.history))
        (t_prev, m_prev) = self.history[-1]
        _, s_prev, lam_prev = self.schedule.alpha_sigma_lambda(t_prev)
        a_t, s_t, lam_t = self.schedule.alpha_sigma_lambda(t_next)
        h = lam_t - lam_prev
        phi_1 = torch.expm1(torch.tensor(-h, dtype=torch.float64)).item()
        x_next = (s_t / s_prev) * x.float() - a_t * phi_1 * m_prev.float()
        if order == 2:
            t_prev1, m_prev1 = self.history[-2]
            lam_prev1 = self.schedule.alpha_sigma_lambda(t_prev1)[2]
            r0 = (lam_prev - lam_prev1) / h
            d1 = (m_prev.float() - m_prev1.float()) / r0
            x_next = x_next - 0.5 * a_t * phi_1 * d1
        return x_next.to(x.dtype)


def x0_from_model(backbone, schedule: VPSchedule, model_out: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """x̂₀ at continuous time t from an eps- or v-prediction output."""
    alpha, sigma, _ = schedule.alpha_sigma_lambda(t)
    return backbone.to_eps_x0(model_out, x, alpha, sigma)[1]


@torch.no_grad()
def dpmpp_trajectory(backbone, model_fn: ModelFn, x: torch.Tensor, times: list[float], order: int = 2,
                     callback=None) -> list[torch.Tensor]:
    """Run DPM-Solver++ multistep along `times` (descending to sample, ascending to invert). Returns the
    trajectory [x at times[0], …, x at times[-1]]; the UNet is called len(times) − 1 times."""
    schedule = VPSchedule(backbone.alphas_cumprod)
    solver = MultistepDPMSolverPP(schedule, order)
    trajectory = [x]
    for i, t in enumerate(times[:-1]):
        model_time = torch.tensor(schedule.model_time(t), device=x.device, dtype=torch.float32)
        solver.push(t, x0_from_model(backbone, schedule, model_fn(x, model_time, i), x, t))
        x = solver.step(x, times[i + 1])
        trajectory.append(x)
        if callback is not None:
            callback(i, times[i + 1], x)
    return trajectory
