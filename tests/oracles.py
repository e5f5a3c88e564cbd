"""Test oracles: models whose exact answer is known (used by tests and benchmarks/inversion.py)."""
import torch

from zeroedit.backbones import Backbone
from zeroedit.inversion.dpm_solver import VPSchedule


class GaussianModel:
    """A backbone whose 'UNet' is the exact ε-predictor for data ~ N(0, s²): ε*(x, t) = σ x / (α² s² + σ²).
    With an exact model, inversion then sampling must reconstruct the latent up to discretisation error."""

    def __init__(self, pipe, s=0.7):
        real = Backbone(pipe)
        self.alphas_cumprod, self.num_train_timesteps, self.pipe, self.s = real.alphas_cumprod, 1000, pipe, s
        self.to_eps_x0 = real.to_eps_x0
        self.schedule = VPSchedule(self.alphas_cumprod)

    def eps_discrete(self, x, t, i):
        abar = float(self.alphas_cumprod[int(t)])
        return (1 - abar) ** 0.5 * x / (abar * self.s ** 2 + 1 - abar)

    def eps_continuous(self, x, model_time, i):
        t = (float(model_time) / 1000.0) + 1.0 / 1000
        alpha, sigma, _ = self.schedule.alpha_sigma_lambda(t)
        return sigma * x / (alpha ** 2 * self.s ** 2 + sigma ** 2)


class GaussianFlow:
    """The exact rectified-flow velocity for data ~ N(0, diag(s²)) (one s per channel).

    x_σ = (1 − σ)·x₀ + σ·ε has per-channel std r(σ) = sqrt((1 − σ)²·s² + σ²), so the velocity field of the
    flow ODE is v*(x, σ) = E[ε − x₀ | x_σ = x] = (σ − (1 − σ)·s²)·x / r(σ)², and its exact flow map is
    x(σ) = x(0)·r(σ)/s: inversion to σ = 1 and sampling back are known in closed form, so a solver's error is
    its discretisation error alone."""

    def __init__(self, s: torch.Tensor):
        self.s = s.reshape(1, -1, 1, 1).to(torch.float64)

    def r(self, sigma: float) -> torch.Tensor:
        return ((1 - sigma) ** 2 * self.s ** 2 + sigma ** 2).sqrt()

    def velocity(self, x, sigma, step=None, stage=None):
        return ((sigma - (1 - sigma) * self.s ** 2) * x.double() / self.r(sigma) ** 2).to(x.dtype)

    def exact(self, x0: torch.Tensor, sigma: float) -> torch.Tensor:
        return x0 * self.r(sigma) / self.s

    def sample(self, shape, seed: int = 0) -> torch.Tensor:
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return noise * self.s


def flow_round_trip(solver, oracle: GaussianFlow, x0: torch.Tensor, steps: int, sigmas=None) -> tuple[float, float]:
    """(relative error of the inverted latent vs the exact x(1), relative round-trip error vs x0) of `solver`
    (inversion/flow.py) with the exact velocity on a uniform σ grid (or `sigmas`, ascending)."""
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64).tolist() if sigmas is None else list(sigmas)
    top = solver(oracle.velocity, x0, grid)[-1]
    back = solver(oracle.velocity, top, grid[::-1])[-1]
    exact_top = oracle.exact(x0, grid[-1])
    return (((top - exact_top).norm() / exact_top.norm()).item(), ((back - x0).norm() / x0.norm()).item())
