"""A 4000×3000 phone photo through every method (issue 15 §1): output size, working size, wall seconds and
peak RSS per method.

The photo is a smooth synthetic one, stored as a 3000×4000 JPEG with EXIF orientation 6 (as a phone stores a
landscape shot taken sideways): loaded upright it is 4000×3000. Every method runs in its own subprocess on the
tiny model (CPU), so the peak RSS (ru_maxrss: imports + model + the call) is that method's own.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/big_photo.py            # all methods, prints a table
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/big_photo.py --one translate --photo photo.jpg

Bars (issue 15): output 4000×3000, peak RSS < 1.5 GB, < 60 s per method. On a GPU, `run(pipe, photo)` runs
every method in-process on a given pipeline and reports CUDA peak memory instead.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

METHODS = ("compose", "translate", "edit", "personalize", "invert")
WIDTH, HEIGHT = 4000, 3000
BARS = dict(rss_bytes=1.5e9, seconds=60.0)


def make_photo(path: str, width: int = WIDTH, height: int = HEIGHT) -> str:
    """A smooth colourful width×height picture, saved sideways (height×width pixels) as JPEG with EXIF
    orientation 6, so that an EXIF-aware loader sees it upright at width×height."""
    rows = []
    for top in range(0, height, 500):  # in bands: a float array of the whole photo would be 144 MB
        yy, xx = np.mgrid[top:min(top + 500, height), 0:width].astype(np.float32) / max(width, height)
        bands = [np.sin(2 * np.pi * (a * xx + b * yy) + c) for a, b, c in ((1.3, 0.7, 0.0), (0.4, 2.1, 1.0),
                                                                           (2.2, 1.5, 2.0))]
        rows.append(((np.stack(bands, -1) * 0.5 + 0.5) * 255).astype(np.uint8))
    upright = Image.fromarray(np.concatenate(rows))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    upright.transpose(Image.ROTATE_90).save(path, quality=90, exif=exif.tobytes())
    return path


def run_method(pipe, method: str, photo: str, ip_pipe=None) -> dict:
    """One method on the photo with its default settings; returns the figures of the call."""
    import zeroedit as ze
    start = time.perf_counter()
    if method == "compose":
        out = ze.compose(pipe, photo, photo, region=(1500, 1000, 2500, 2000), prompt="a painting", seed=0)
    elif method == "translate":
        out = ze.translate(pipe, photo, "a painting of a landscape")
    elif method == "edit":
        out = ze.edit(pipe, photo, source="cat", target="dog", seed=0)
    elif method == "personalize":
        out = ze.personalize(ip_pipe or pipe, "a photo of a landscape", {"landscape": photo}, seed=0)
    else:
        inversion = ze.invert(pipe, photo)
        out = ze.reconstruct(pipe, inversion)
        out.stats.params.update(inversion.stats.params)
    seconds = time.perf_counter() - start
    params = out.stats.params
    return dict(method=method, output_size=list(out.image.size), working_size=params["size"],
                input_size=params.get("input_size"), seconds=round(seconds, 2), unet_calls=out.stats.unet_calls)


def run(pipe, photo: str | None = None, methods=METHODS, ip_pipe=None) -> dict:
    """Every method in this process on `pipe` (e.g. a CUDA pipeline; personalize needs an IP-Adapter: `ip_pipe`
    or pipe itself). Returns {method: figures}, with CUDA peak memory per method when on a GPU."""
    import torch
    with tempfile.TemporaryDirectory() as folder:
        photo = photo or make_photo(os.path.join(folder, "photo.jpg"))
        results = {}
        for method in methods:
            if method == "personalize" and getattr((ip_pipe or pipe).unet, "encoder_hid_proj", None) is None:
                continue
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            results[method] = run_method(pipe, method, photo, ip_pipe)
            if torch.cuda.is_available():
                results[method]["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        return results


def _one(method: str, photo: str) -> dict:
    """Child process: load the tiny model, run one method, add this process's peak RSS."""
    import zeroedit as ze
    pipe = ze.load("tiny", ip_adapter=method == "personalize")
    figures = run_method(pipe, method, photo)
    figures["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=METHODS, help="run one method in this process (used by the parent)")
    parser.add_argument("--photo", help="the photo to use (default: a new synthetic 4000×3000 one)")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args.one, args.photo)))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        photo = args.photo or make_photo(os.path.join(folder, "photo.jpg"))
        print(f"photo: {photo} ({os.path.getsize(photo) / 1e6:.1f} MB JPEG, stored {Image.open(photo).size}, "
              f"EXIF orientation 6)")
        print(f"{'method':<12} {'output':>10} {'working':>9} {'seconds':>8} {'peak RSS':>9}  bars")
        failures = 0
        for method in METHODS:
            done = subprocess.run([sys.executable, __file__, "--one", method, "--photo", photo], capture_output=True,
                                  text=True, check=False)
            if done.returncode:
                print(f"{method:<12} failed:\n{done.stderr[-2000:]}")
                failures += 1
                continue
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            ok = figures["peak_rss_bytes"] < BARS["rss_bytes"] and figures["seconds"] < BARS["seconds"] and \
                (method == "personalize" or figures["output_size"] == [WIDTH, HEIGHT])
            failures += not ok
            print(f"{method:<12} {'×'.join(map(str, figures['output_size'])):>10} "
                  f"{'×'.join(map(str, figures['working_size'])):>9} {figures['seconds']:>8.1f} "
                  f"{figures['peak_rss_bytes'] / 1e9:>7.2f}GB  {'ok' if ok else 'MISSED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
