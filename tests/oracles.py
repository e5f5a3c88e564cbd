"""Test oracles: models whose exact answer is known (used by tests and benchmarks/inversion.py)."""
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
