"""Every method at its defaults on one flow model: sequential transformer calls, sample-evaluations, backward passes
and seconds (zeroedit's Stats), or the typed error a method raises on that family.

    OMP_NUM_THREADS=1 python benchmarks/family_costs.py --model tiny-z-image   # any ze.load name or folder

Inputs: the bundled cat / background / reference images at 160×96 (non-square), one object for compose.
Each method runs once (no warm-up): on the tiny models the seconds are CPU seconds of a cold-ish call and
depend on the machine's load; the calls and evaluations do not.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import zeroedit as ze  # noqa: E402
from zeroedit.cli import asset  # noqa: E402
from zeroedit.errors import ZeroEditError  # noqa: E402


def cases(size=(160, 96)):
    """(name, callable(pipe) -> Result) for every method at its defaults."""
    from PIL import Image
    cat, background = Image.open(asset("cat.png")).convert("RGB"), Image.open(asset("background.png")).convert("RGB")
    reference, mask = Image.open(asset("reference.png")).convert("RGB"), Image.open(asset("reference_mask.png")).convert("L")
    cat, background = cat.resize(size), background.resize(size)
    box = (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4)
    inversions = {}

    def invert(pipe, method):
        inversions[method] = ze.invert(pipe, cat, method=method)
        return inversions[method]

    rows = [(f"invert {m} (50 steps)", lambda p, m=m: invert(p, m)) for m in ("euler", "rf-solver", "fireflow")]
    rows += [(f"reconstruct {m}", lambda p, m=m: ze.reconstruct(p, inversions[m])) for m in ("euler", "rf-solver", "fireflow")]
    return rows + [
        ("translate (fireflow 8)", lambda p: ze.translate(p, cat, "a painting of a dog", source_prompt="a cat")),
        ("translate flowedit", lambda p: ze.translate(p, cat, "a painting of a dog", source_prompt="a cat",
                                                      method="flowedit", seed=0)),
        ("compose (fireflow 20, 1 object)", lambda p: ze.compose(p, background, reference, region=box, reference_mask=mask,
                                                                 prompt="a red ball on a hill", seed=0)),
        ("edit (50 steps)", lambda p: ze.edit(p, cat, "cat", "dog", seed=0)),
        ("personalize (30 steps)", lambda p: ze.personalize(p, "a cat on a hill", {"cat": reference}, seed=0)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-z-image")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names")
    args = parser.parse_args()
    pipe = ze.load(args.model)
    wanted = [s for s in args.only.split(",") if s]
    print(f"\n{args.model}\n\n| method | calls | evaluations | backward | seconds |\n|---|---|---|---|---|")
    for name, run in cases():
        if wanted and not any(w in name for w in wanted):
            continue
        try:
            stats = run(pipe).stats
        except ZeroEditError as error:
            print(f"| {name} | — ({type(error).__name__}) | | | |")
            continue
        print(f"| {name} | {stats.unet_calls} | {stats.unet_evals} | {stats.unet_backward} | {stats.seconds:.2f} |")


if __name__ == "__main__":
    main()
