"""Batched jobs benchmark (issue 10, part 4): images per hour running N jobs one at a time vs as sampling
batches of `max_batch` (zeroedit.jobs.JobSession, what `zeroedit batch --max-batch N` uses), end to end
(VAE encode, inversion, sampling, decode), with the UNet calls per job and the shared calls per batch.

    PYTHONPATH=src python benchmarks/batch_jobs.py                        # tiny model, CPU: 8 translate jobs
    PYTHONPATH=src python benchmarks/batch_jobs.py --jobs 8 --steps 10 --max-batch 8 --method edit
    from benchmarks.batch_jobs import run; run(pipe, size=512, jobs=16, max_batch=16)   # a CUDA pipe
"""
from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

import zeroedit as ze
from zeroedit.jobs import JobSession

PROMPTS = ["a bronze horse", "a marble statue", "a watercolor painting", "a red car", "a zebra", "an oil painting",
           "a snowy landscape", "a wooden toy"]


def _image(seed: int, size: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # smooth: upsampled noise
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


def _job(pipe, method: str, index: int, size: int, steps: int):
    """Job `index` of the benchmark: its own image, prompt and seed; output_type="pil" (decode included)."""
    image, prompt = _image(index, size), PROMPTS[index % len(PROMPTS)]
    if method == "translate":
        return lambda: ze.translate(pipe, image, prompt, steps=steps, seed=index)
    if method == "edit":
        return lambda: ze.edit(pipe, image, "cat", "dog", caption=f"a photo of {prompt}", steps=steps, seed=index)
    if method == "compose":
        box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
        return lambda: ze.compose(pipe, image, _image(100 + index, size // 2), region=box, prompt=prompt, steps=steps,
                                  seed=index)
    if method == "personalize":
        references = {"cat": _image(index, 224), "dog": _image(50 + index, 224)}
        return lambda: ze.personalize(pipe, "a cat and a dog", references, steps=steps, height=size, width=size,
                                      seed=index)
    raise ValueError(f"unknown method {method!r}")


def _sync(pipe):
    if pipe.unet.device.type == "cuda":
        torch.cuda.synchronize(pipe.unet.device)


def run(pipe, method: str = "translate", jobs: int = 8, steps: int = 10, max_batch: int = 8, size: int | None = None,
        repeats: int = 1) -> dict:
    """Time `jobs` jobs one at a time and in batches of `max_batch`; best of `repeats`. Returns seconds, images
    per hour, the speed-up, the UNet calls/evaluations of one job and the shared calls of one batch."""
    size = size or pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    pipe.set_progress_bar_config(disable=True)
    functions = [_job(pipe, method, i, size, steps) for i in range(jobs)]
    warm = functions[0]()  # first-call overheads (allocator, kernels) out of both timings
    sequential = batched = float("inf")
    shared = None
    for _ in range(repeats):
        _sync(pipe)
        start = time.perf_counter()
        for function in functions:
            function()
        _sync(pipe)
        sequential = min(sequential, time.perf_counter() - start)
        start, sessions = time.perf_counter(), []
        for first in range(0, jobs, max_batch):
            session = JobSession(pipe.unet)
            outcomes = session.run(functions[first:first + max_batch])
            errors = [error for _, error in outcomes if error is not None]
            if errors:
                raise errors[0]
            sessions.append(session)
        _sync(pipe)
        batched = min(batched, time.perf_counter() - start)
        shared = dict(unet_calls=sessions[0].calls, unet_evals=sessions[0].evals, unet_backward=sessions[0].backward)
    return dict(method=method, device=str(pipe.unet.device), dtype=str(pipe.unet.dtype), size=size, steps=steps,
                jobs=jobs, max_batch=max_batch, torch_threads=torch.get_num_threads(),
                per_job=dict(unet_calls=warm.stats.unet_calls, unet_evals=warm.stats.unet_evals,
                             unet_backward=warm.stats.unet_backward),
                per_batch_shared=shared,
                one_at_a_time=dict(seconds=round(sequential, 3), images_per_hour=round(3600 * jobs / sequential)),
                batched=dict(seconds=round(batched, 3), images_per_hour=round(3600 * jobs / batched)),
                speedup=round(sequential / batched, 2))


if __name__ == "__main__":
    import argparse
    import json
    import logging

    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="translate", choices=["translate", "edit", "compose", "personalize"])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()
    if args.model in ("sd15", "sd21", "sdxl"):  # random weights of the real sizes (speed does not depend on them)
        import sys
        from pathlib import Path
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from benchmarks.sized import build_sized
        model = build_sized(args.model, args.device or "cuda")
        if args.method == "personalize":
            from zeroedit.tiny_ip import add_tiny_ip_adapter
            add_tiny_ip_adapter(model).to(device=args.device or "cuda", dtype=torch.float16)
    else:
        model = ze.load(args.model, device=args.device, dtype=args.dtype,
                        ip_adapter=True if args.method == "personalize" and args.model in ("tiny", "tiny-xl") else None)
    print(json.dumps(run(model, args.method, args.jobs, args.steps, args.max_batch, args.size, args.repeats), indent=1))
