"""`zeroedit eval` end to end on the toy world (issue 20, part 3): no weights needed besides the bundled toy model.

1. write n toy edit cases as a PIE-Bench-layout data set (zeroedit.metrics.toy.write_dataset: mapping_file.json
   with RLE masks, annotation_images/);
2. build translate jobs with the PIE-Bench reader (zeroedit.datasets.piebench_jobs) for two settings: PnP (its
   injection windows) and the naive baseline (the same inversion + prompt swap, no injection);
3. run them with `zeroedit batch` on the toy model;
4. score both folders with `zeroedit eval --benchmark toy`: the toy detectors (ground truth) beside PSNR / MSE /
   SSIM of the unedited part, as PIE-Bench computes them.

    PYTHONPATH=src python benchmarks/eval_toy.py --n 24 --steps 20 --out /tmp/toy-eval
The same by hand:
    python -c "from zeroedit.metrics.toy import write_dataset; write_dataset('DATA', 24)"
    python -c "from zeroedit import datasets as d; d.write_jobs(d.piebench_jobs('DATA/mapping_file.json', \
        model='toy', steps=20, guidance_scale=5.0, negative_prompt=''), 'jobs.jsonl')"
    zeroedit batch jobs.jsonl --out pnp
    zeroedit eval pnp --benchmark toy --data DATA/mapping_file.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

from zeroedit import cli, datasets
from zeroedit.batch import run_batch
from zeroedit.metrics.toy import write_dataset

SETTINGS = {"PnP (features 0.8, q/k 0.5)": {}, "inversion + prompt swap": dict(feature_steps=0, attention_steps=0)}


def run(out, n: int = 24, steps: int = 20, guidance: float = 5.0, model: str = "toy", quiet: bool = True) -> int:
    """Data set, batches and eval under `out`; returns the eval command's exit code (report in out/eval)."""
    out = Path(out)
    mapping = write_dataset(out / "data", n)
    folders = []
    for index, (name, kw) in enumerate(SETTINGS.items()):
        jobs = datasets.piebench_jobs(mapping, model=model, steps=steps, guidance_scale=guidance, negative_prompt="",
                                      **kw)
        folder = out / f"run{index}"
        run_batch(datasets.write_jobs(jobs, out / f"jobs{index}.jsonl"), folder, quiet=quiet)
        folders.append(str(folder))
    return cli.main(["eval", *folders, "--benchmark", "toy", "--data", str(mapping), "--out", str(out / "eval"),
                     "--label", *SETTINGS])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="toy-eval")
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--model", default="toy")
    options = parser.parse_args()
    raise SystemExit(run(options.out, options.n, options.steps, options.guidance, options.model, quiet=False))
