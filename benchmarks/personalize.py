"""personalize overhead: MIP relevance merge vs plain IP-Adapter summation (weighting="uniform"), same run,
alternating, median of `--repeats`.

    python benchmarks/personalize.py                  # tiny model on CPU, 2 objects, 30 steps
    python benchmarks/personalize.py --device cuda    # SDXL-sized random weights at 1024², fp16
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import zeroedit as ze  # noqa: E402
from zeroedit.cli import asset  # noqa: E402


def run(pipe, size: int | None = None, repeats: int = 5, steps: int = 30) -> dict:
    """Median seconds of relevance vs uniform weighting with 2 objects (first round = warm-up, not counted);
    `size` = height = width in px (None: the pipeline's default)."""
    repeats = max(int(repeats), 1)
    refs = {"cat": Image.open(asset("cat.png")), "ball": Image.open(asset("reference.png"))}
    times = {"relevance": [], "uniform": []}
    for _ in range(repeats + 1):  # the first round warms up
        for weighting in times:
            out = ze.personalize(pipe, "a cat and a ball", refs, weighting=weighting, steps=steps, height=size,
                                 width=size, seed=0, output_type="latent")
            times[weighting].append(out.stats.seconds)
    median = {k: statistics.median(v[1:]) for k, v in times.items()}
    return dict(relevance_s=round(median["relevance"], 3), uniform_s=round(median["uniform"], 3),
                ratio=round(median["relevance"] / median["uniform"], 3), unet_calls=out.stats.unet_calls,
                unet_evals=out.stats.unet_evals, peak_gib=round(out.stats.peak_memory_bytes / 2**30, 2))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if args.device == "cpu":
        pipe, size = ze.load("tiny", ip_adapter=True), 128
    else:
        from benchmarks.sized import build_sized
        from zeroedit.tiny_ip import add_tiny_ip_adapter
        pipe, size = add_tiny_ip_adapter(build_sized("sdxl", args.device)), 1024
        pipe.to(args.device, torch.float16)
    print(run(pipe, size, args.repeats, args.steps))


if __name__ == "__main__":
    main()
