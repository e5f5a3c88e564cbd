"""How exact are the rectified-flow inversions? Round trip at 8/15/30 steps.

    python benchmarks/flow_inversion.py

1. Exact-velocity oracle (tests/oracles.py `GaussianFlow`): data ~ N(0, diag(s²)) with s = (0.3, 0.7, 1.0, 1.5)
   per channel, whose flow ODE is solved in closed form; each solver inverts 0 → 1 and samples back on a
   uniform σ grid, so the errors are discretisation errors alone: relative error of the inverted latent vs
   the exact x(1), and of the round trip vs x₀ (and the factor Euler / solver).
2. The same on FLUX's shifted σ grid at 1024² (mu for 4096 image tokens), where the steps crowd near σ = 1, and on
   each other family's grid at 1024² (`family_grid`: the backbone's σ of its tiny model, whose scheduler config is
   the published one; Qwen-Image: exponential shift, mu for 4096 tokens, shift_terminal 0.02).
3. The tiny random-weight pipelines (FLUX.1 and each later family in this checkout): latent round-trip error and
   calls (random weights are no smooth velocity field: trend and cost only).
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


def family_grid(pipe, steps: int, side: int = 1024) -> list[float]:
    """A flow pipeline's σ grid at side² px, ascending, as its backbone builds it for sampling."""
    from zeroedit.backbones import backbone_for
    backbone = backbone_for(pipe)
    return backbone.sigmas(steps, (side // backbone.vae_scale,) * 2)[::-1]


def tiny_families() -> list[str]:
    """tiny-flux and the tiny models of the later families whose builder this checkout has."""
    from importlib.util import find_spec
    from zeroedit.loading import TINY_FAMILIES
    return ["tiny-flux"] + [name for name, (module, _) in TINY_FAMILIES.items() if find_spec(module) is not None]


def oracle_table(steps=STEPS, grid="uniform") -> dict:
    """grid: "uniform", "flux" (FLUX.1-dev at 1024²) or a pipeline (its grid at 1024², `family_grid`)."""
    oracle = GaussianFlow(torch.tensor([0.3, 0.7, 1.0, 1.5]))
    x0 = oracle.sample((2, 4, 16, 16))
    table = {}
    for n in steps:
        sigmas = None if grid == "uniform" else flux_grid(n) if grid == "flux" else family_grid(grid, n)
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
    _print_oracle("Exact Gaussian flow, uniform σ grid", oracle_table())
    _print_oracle("Exact Gaussian flow, FLUX.1-dev σ grid at 1024² (mu for 4096 tokens)", oracle_table(grid="flux"))
    pipes = {name: ze.load(name) for name in tiny_families()}
    for name, pipe in pipes.items():
        if name != "tiny-flux":
            _print_oracle(f"Exact Gaussian flow, {type(pipe).__name__}'s σ grid at 1024²", oracle_table(grid=pipe))
    for name, pipe in pipes.items():
        print(f"\nTiny random-weight {name} (latent round trip, relative error; not a smooth field)\n")
        print("| steps | solver | calls (invert + reconstruct) | round-trip error |")
        print("|---|---|---|---|")
        for (n, solver), row in run(pipe).items():
            print(f"| {n} | {solver} | {row['calls']} | {row['error']:.3f} |")


if __name__ == "__main__":
    main()
