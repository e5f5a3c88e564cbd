"""How exact are the rectified-flow inversions? Round trip at 8/15/30 steps.

    python benchmarks/flow_inversion.py
    python benchmarks/flow_inversion.py --model tiny-z-image   # another family: its σ grid and its tiny model

1. Exact-velocity oracle (tests/oracles.py `GaussianFlow`): data ~ N(0, diag(s²)) with s = (0.3, 0.7, 1.0, 1.5)
   per channel, whose flow ODE is solved in closed form; each solver inverts 0 → 1 and samples back on a
   uniform σ grid, so the errors are discretisation errors alone: relative error of the inverted latent vs
   the exact x(1), and of the round trip vs x₀ (and the factor Euler / solver).
2. The same on FLUX's shifted σ grid at 1024² (mu for 4096 image tokens), where the steps crowd near σ = 1.
3. The tiny random-weight FLUX pipeline: latent round-trip error and calls (random weights are no smooth
   velocity field: trend and cost only).
With --model (any ze.load name of a flow model): 2. on that model's own σ grid at 1024² (its scheduler config,
backbone.sigmas) and 3. on that model.
`run(pipe, steps=(8, 15, 30))` returns the figures as a dict (tiny FLUX by default; any flow pipe on CUDA).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import zeroedit as ze  # noqa: E402
from oracles import GaussianFlow, flow_round_trip  # noqa: E402
from zeroedit.backbones.flow import calculate_shift  # noqa: E402
from zeroedit.inversion import FLOW_SOLVERS, solver_calls  # noqa: E402

STEPS = (8, 15, 30)


def flux_grid(steps: int) -> list[float]:
    """FLUX.1-dev's σ grid at 1024² (4096 image tokens), ascending, as FluxPipeline builds it."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    import numpy as np
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=calculate_shift(4096, scheduler.config))
    return [float(s) for s in scheduler.sigmas][::-1]


def model_grid(pipe, steps: int) -> list[float]:
    """The pipeline's own σ grid at 1024² (a 128×128 latent), ascending, as its backbone builds it."""
    from zeroedit.backbones import backbone_for
    return backbone_for(pipe).sigmas(steps, (128, 128))[::-1]


def oracle_table(steps=STEPS, grid="uniform") -> dict:
    """grid: "uniform", "flux" (FLUX.1-dev's at 1024²) or a flow pipeline (its own grid at 1024²)."""
    oracle = GaussianFlow(torch.tensor([0.3, 0.7, 1.0, 1.5]))
    x0 = oracle.sample((2, 4, 16, 16))
    table = {}
    for n in steps:
        sigmas = None if grid == "uniform" else flux_grid(n) if grid == "flux" else model_grid(grid, n)
        table[n] = {name: flow_round_trip(solver, oracle, x0, n, sigmas) for name, solver in FLOW_SOLVERS.items()}
    return table


def run(pipe=None, steps=STEPS, image=None) -> dict:
    """Round trip of each solver on a flow pipeline (default: tiny FLUX): latent error and calls."""
    pipe = pipe if pipe is not None else ze.load("tiny-flux")
    if image is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_image
        image = make_image(0)
    out = {}
    for n in steps:
        for name in FLOW_SOLVERS:
            inversion = ze.invert(pipe, image, method=name, steps=n)
            back = ze.reconstruct(pipe, inversion, output_type="latent")
            x0 = inversion.latents[0]
            error = ((back.latents - x0).norm() / x0.norm()).item()
            out[(n, name)] = dict(error=error, calls=inversion.stats.unet_calls + back.stats.unet_calls,
                                  seconds=inversion.stats.seconds + back.stats.seconds)
    return out


def _print_oracle(title: str, table: dict):
    print(f"\n{title}\n")
    print("| steps | solver | calls | inversion error | round-trip error | Euler / solver (round trip) |")
    print("|---|---|---|---|---|---|")
    for n, row in table.items():
        for name, (top, back) in row.items():
            factor = row["euler"][1] / back
            print(f"| {n} | {name} | {solver_calls(name, n)} | {top:.2e} | {back:.2e} | {factor:.0f}× |")


def main():
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a flow model for tables 2 and 3 (default: FLUX.1-dev's grid, tiny-flux)")
    args = parser.parse_args()
    pipe = None if args.model is None else ze.load(args.model)
    _print_oracle("Exact Gaussian flow, uniform σ grid", oracle_table())
    if pipe is None:
        _print_oracle("Exact Gaussian flow, FLUX.1-dev σ grid at 1024² (mu for 4096 tokens)", oracle_table(grid="flux"))
    else:
        _print_oracle(f"Exact Gaussian flow, {args.model}'s σ grid at 1024²", oracle_table(grid=pipe))
    print(f"\n{args.model or 'Tiny random-weight FLUX'} (latent round trip, relative error; not a smooth field)\n")
    print("| steps | solver | calls (invert + reconstruct) | round-trip error |")
    print("|---|---|---|---|")
    for (n, name), row in run(pipe).items():
        print(f"| {n} | {name} | {row['calls']} | {row['error']:.3f} |")


if __name__ == "__main__":
    main()
