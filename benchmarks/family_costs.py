"""Every method at its defaults on one model: sequential calls, sample-evaluations, backward passes, seconds.

    OMP_NUM_THREADS=1 python benchmarks/family_costs.py --model tiny-flux2     # any model ze.load takes

Inputs: the bundled 128 px samples resized to the model's native size, a box in the background's middle, two
personalize objects ("a cat and a dog", one reference image each). Each method runs once after one warm-up
translate at 2 steps; seconds are zeroedit's Timer (wall time of the call). A method the model does not run is
listed with the error it raises.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import zeroedit as ze  # noqa: E402
from zeroedit.cli import asset  # noqa: E402
from zeroedit.errors import ZeroEditError  # noqa: E402


def sample(name: str, size: int, mode: str = "RGB"):
    """A bundled sample image at size² px."""
    from PIL import Image
    return Image.open(asset(name)).convert(mode).resize((size, size))


def cases(size: int) -> list:
    """(name, callable(pipe) -> Result) for every method at its defaults."""
    background, reference, cat = sample("background.png", size), sample("reference.png", size), sample("cat.png", size)
    mask = sample("reference_mask.png", size, "L")
    box = (size // 4, size // 3, size // 4 + size // 2, size // 3 + size // 2)
    inversion = {}

    def invert(pipe):
        inversion["result"] = ze.invert(pipe, cat)
        return inversion["result"]

    return [
        ("invert (fireflow, 50 steps)", invert),
        ("reconstruct", lambda pipe: ze.reconstruct(pipe, inversion["result"])),
        ("translate (inject)", lambda pipe: ze.translate(pipe, cat, "a painting of a dog", source_prompt="a cat")),
        ("translate (flowedit)", lambda pipe: ze.translate(pipe, cat, "a painting of a dog", source_prompt="a cat",
                                                           method="flowedit", seed=0)),
        ("compose (1 object)", lambda pipe: ze.compose(pipe, background, reference, box, reference_mask=mask,
                                                       prompt="a red ball on a hill", seed=0)),
        ("edit", lambda pipe: ze.edit(pipe, cat, "cat", "dog", seed=0)),
        ("personalize (2 objects)", lambda pipe: ze.personalize(pipe, "a cat and a dog", {"cat": cat, "dog": reference},
                                                                seed=0)),
    ]


def run(pipe) -> dict:
    from zeroedit.backbones import backbone_for
    size = backbone_for(pipe).native_size
    ze.translate(pipe, sample("cat.png", size), "warm up", steps=2, output_type="latent")
    rows = {}
    for name, call in cases(size):
        try:
            stats = call(pipe).stats
        except ZeroEditError as error:
            rows[name] = f"— ({type(error).__name__})"
            continue
        rows[name] = dict(calls=stats.unet_calls, evals=stats.unet_evals, backward=stats.unet_backward,
                          seconds=round(stats.seconds, 2))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-flux2")
    args = parser.parse_args()
    pipe = ze.load(args.model)
    print(f"\n{args.model}: {type(pipe).__name__}\n")
    print("| method (defaults) | sequential calls | sample-evaluations | backward | seconds |")
    print("|---|---|---|---|---|")
    for name, row in run(pipe).items():
        if isinstance(row, str):
            print(f"| {name} | {row} | | | |")
        else:
            print(f"| {name} | {row['calls']} | {row['evals']} | {row['backward']} | {row['seconds']} |")


if __name__ == "__main__":
    main()
