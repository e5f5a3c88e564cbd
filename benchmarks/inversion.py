"""How exact are the inversions? Round trip (invert, then sample back with the same solver) at 10/20/50 steps.

    python benchmarks/inversion.py

1. Exact-model oracle (tests/oracles.py): the ε-predictor of Gaussian data is known in closed form, so the
   round-trip error is the solver's discretisation error alone: DDIM vs DPM-Solver++ (order 2).
2. The tiny random-weight SD (latent MSE and pixel PSNR of the decoded reconstruction vs the decoded clean
   latent), for the DDIM/empty-prompt and DPM-Solver++/exceptional-prompt pairs. Random weights are no
   smooth score, so these errors are large; they show the trend with steps and the cost (calls/evals).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import zeroedit as ze  # noqa: E402
from oracles import GaussianModel  # noqa: E402
from zeroedit.cli import asset  # noqa: E402
from zeroedit.inversion import ddim_invert, ddim_sample, ddim_timesteps, dpmpp_trajectory  # noqa: E402
from zeroedit.inversion.dpm_solver import VPSchedule  # noqa: E402


def oracle_errors(pipe, steps: int) -> tuple[float, float]:
    """Latent MSE of the round trip for DDIM and DPM-Solver++ with the exact Gaussian model."""
    model = GaussianModel(pipe)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * model.s
    grid = ddim_timesteps(model, steps)
    ddim = ddim_sample(model, model.eps_discrete, ddim_invert(model, model.eps_discrete, x0, grid)[-1], grid)
    schedule = VPSchedule(model.alphas_cumprod)
    up = dpmpp_trajectory(model, model.eps_continuous, x0, schedule.times(steps, invert=True))
    down = dpmpp_trajectory(model, model.eps_continuous, up[-1], schedule.times(steps))[-1]
    return (ddim - x0).pow(2).mean().item(), (down - x0).pow(2).mean().item()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1]."""
    mse = (a.float() - b.float()).pow(2).mean().clamp_min(1e-12)
    return (10 * torch.log10(4.0 / mse)).item()


def tiny_round_trip(pipe, method: str, prompt: str, steps: int) -> dict:
    inv = ze.invert(pipe, asset("background.png"), method=method, prompt=prompt, steps=steps, size=128)
    rec = ze.reconstruct(pipe, inv, output_type="latent")
    with torch.no_grad():
        clean, back = pipe.vae.decode(inv.latents[0] / pipe.vae.config.scaling_factor).sample, \
            pipe.vae.decode(rec.latents / pipe.vae.config.scaling_factor).sample
    return dict(mse=(rec.latents - inv.latents[0]).pow(2).mean().item(), psnr=psnr(back, clean),
                calls=inv.stats.unet_calls + rec.stats.unet_calls, evals=inv.stats.unet_evals + rec.stats.unet_evals)


def main():
    pipe = ze.load("tiny")
    print("| steps | oracle DDIM MSE | oracle DPM-Solver++ MSE | tiny DDIM \"\" MSE / PSNR | tiny DPM++ exceptional MSE / PSNR | calls (inv+rec) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for steps in (10, 20, 50):
        ddim, dpmpp = oracle_errors(pipe, steps)
        a = tiny_round_trip(pipe, "ddim", "", steps)
        b = tiny_round_trip(pipe, "dpmpp", "exceptional", steps)
        print(f"| {steps} | {ddim:.2e} | {dpmpp:.2e} | {a['mse']:.3f} / {a['psnr']:.1f} dB | "
              f"{b['mse']:.3f} / {b['psnr']:.1f} dB | {a['calls']} |", flush=True)


if __name__ == "__main__":
    main()
