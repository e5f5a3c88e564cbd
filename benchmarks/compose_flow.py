"""compose on flow models (issue 17): which content-free text minimises the inversion round-trip error, per solver.

    python benchmarks/compose_flow.py --model toy-flow           # the toy flow model, toy-world images (CPU)
    python benchmarks/compose_flow.py --model tiny-flux --images 2

For each `inversion_prompt` variant of FlowBackbone.exceptional_cond ("exceptional", "exceptional-clip",
"empty", "zeros") and each solver: invert the images (σ 0 → 1) and sample back (1 → 0) with the same text and
solver, no guidance (FLUX-dev: guidance embedding 1), as compose's background/reference inversion; report the
latent RMSE and the PSNR of the decoded round trip against the decoded input latent (the VAE's own loss left out;
mean over images). `run(pipe, images=None, steps=20,
solvers=...) -> dict` works with any SD3/FLUX pipeline on any device.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import zeroedit as ze  # noqa: E402
from zeroedit.backbones import FlowBackbone  # noqa: E402
from zeroedit.backbones.flow import TEXT_VARIANTS  # noqa: E402
from zeroedit.images import prepare_image, to_tensor  # noqa: E402
from zeroedit.inversion import FLOW_SOLVERS  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of images in [-1, 1] (8-bit scale)."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2 * 255).pow(2).mean().item()
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))


@torch.no_grad()
def round_trip(backbone, x0, cond, solver: str, steps: int) -> torch.Tensor:
    sigmas = backbone.sigmas(steps, x0.shape[-2:])

    def velocity(x, sigma, i, stage):
        return backbone.transformer_call(x, sigma, cond, 1.0)
    top = FLOW_SOLVERS[solver](velocity, x0, sigmas[::-1])[-1]
    return FLOW_SOLVERS[solver](velocity, top, sigmas)[-1]


def run(pipe, images=None, steps: int = 20, solvers=("fireflow", "rf-solver", "euler")) -> dict:
    """{(variant, solver): {"latent_rmse", "psnr", "seconds"}} over `images` (None: 4 toy-world images)."""
    backbone = FlowBackbone(pipe)
    if images is None:
        from zeroedit.toy import quality as Q
        images = Q.inversion_images(4)
    pixels = to_tensor([prepare_image(img) for img in images])
    x0 = backbone.encode_image(pixels).float()
    reference = backbone.decode(x0)
    out = {}
    for variant in TEXT_VARIANTS:
        cond = backbone.exceptional_cond(x0.shape[0], variant)
        for solver in solvers:
            start = time.perf_counter()
            back = round_trip(backbone, x0, cond, solver, steps)
            decoded = backbone.decode(back)
            out[(variant, solver)] = dict(latent_rmse=(back - x0).pow(2).mean().sqrt().item(),
                                          psnr=float(np.mean([psnr(d, r) for d, r in zip(decoded, reference)])),
                                          seconds=round(time.perf_counter() - start, 1))
    return out


def markdown(results: dict, title: str) -> str:
    solvers = list(dict.fromkeys(s for _, s in results))
    lines = [f"**{title}** — round trip (invert → sample, same text, no guidance): latent RMSE / image PSNR (dB)\n",
             "| inversion_prompt | " + " | ".join(solvers) + " |", "|---|" + "---|" * len(solvers)]
    for variant in dict.fromkeys(v for v, _ in results):
        cells = [f"{results[(variant, s)]['latent_rmse']:.4f} / {results[(variant, s)]['psnr']:.2f}" for s in solvers]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _images(model: str, n: int):
    if model == "toy-flow":
        from zeroedit.toy import quality as Q
        return Q.inversion_images(n)
    from conftest import make_image
    return [make_image(i) for i in range(n)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-flow")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    pipe = ze.load(args.model, device=args.device)
    results = run(pipe, _images(args.model, args.images), args.steps)
    print(markdown(results, f"{args.model}, {args.images} images, {args.steps} steps"))
    return results


if __name__ == "__main__":
    main()
