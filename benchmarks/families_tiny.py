"""Every method at its defaults on the tiny random-weight model of each flow family: sequential transformer calls,
sample-evaluations, backward passes and CPU seconds (one thread).

    OMP_NUM_THREADS=1 python benchmarks/families_tiny.py                      # every tiny flow family here
    OMP_NUM_THREADS=1 python benchmarks/families_tiny.py tiny-qwen-image tiny-qwen-image-edit

Inputs: a 128×128 background/image (the tiny models' native size), a 64×64 reference in a 64×64 region. edit
gets its caption (no captioner download); personalize runs where the family takes reference images or an adapter
(tiny-flux with its random IP-Adapter loaded; "—": UnsupportedModel, the reason printed). Each method runs once
to warm up, then once timed (`stats.seconds`).
Random weights: costs only, no quality.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import zeroedit as ze  # noqa: E402
from conftest import make_image  # noqa: E402
from zeroedit.errors import UnsupportedModel  # noqa: E402
from zeroedit.loading import TINY_FAMILIES  # noqa: E402

EXTRA = {"tiny-qwen-image-edit": ("zeroedit.tiny_qwenimage", "build_tiny_qwen_image_edit")}


def _load(name: str, ip_adapter: bool = False):
    if name in EXTRA:
        module, builder = EXTRA[name]
        return getattr(importlib.import_module(module), builder)(0)
    return ze.load(name, ip_adapter=ip_adapter)


def methods(name: str) -> dict:
    """method -> a call of it at its defaults on the tiny model `name` (FLUX.1 personalizes with its IP-Adapter
    loaded, the others without: an IP-Adapter processor needs image embeddings in every call)."""
    image, reference = make_image(0), make_image(1, (64, 64))
    pipe = _load(name)
    ip_pipe = _load(name, ip_adapter=True) if name == "tiny-flux" else pipe
    return {
        "translate": lambda: ze.translate(pipe, image, "a dog", source_prompt="a cat"),
        "translate flowedit": lambda: ze.translate(pipe, image, "a dog", source_prompt="a cat", method="flowedit",
                                                   seed=0),
        "compose": lambda: ze.compose(pipe, image, reference, (32, 32, 96, 96), prompt="a cat", seed=0),
        "edit": lambda: ze.edit(pipe, image, "cat", "dog", caption="a cat"),
        "invert": lambda: ze.invert(pipe, image),
        "personalize": lambda: ze.personalize(ip_pipe, "a cat and a dog",
                                              {"cat": reference, "dog": make_image(2, (64, 64))}, seed=0),
    }


def run(name: str) -> list[tuple]:
    rows = []
    for method, call in methods(name).items():
        try:
            call()
            out = call()
        except UnsupportedModel as error:
            rows.append((name, method, "—", "—", "—", str(error).split("; ")[-1][:110]))
            continue
        stats = out.stats
        rows.append((name, method, stats.unet_calls, stats.unet_evals, stats.unet_backward, f"{stats.seconds:.2f}"))
    return rows


def main(names: list[str]):
    torch.set_num_threads(1)
    names = names or ["tiny-flux", *TINY_FAMILIES, *EXTRA]
    print("| model | method | calls | evaluations | backward | CPU s |")
    print("|---|---|---|---|---|---|")
    for name in names:
        try:
            rows = run(name)
        except ImportError as error:  # a family whose tiny builder is not in this checkout
            print(f"| {name} | — | — | — | — | {error} |")
            continue
        for row in rows:
            print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
