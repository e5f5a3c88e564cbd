"""Bad lines in a big jobs file (issue 26, bad inputs 6): how long `zeroedit batch` takes to find a bad last line
of a 100,000-line jobs file (every line is checked before any model work: `batch.read_jobs` + `batch.check_jobs`),
and how fast jobs that fail at run time are recorded (records flushed per job, fsync'd once a second, against
one fsync per record as before).

    PYTHONPATH=src python benchmarks/batch_check.py                     # 100,000 lines; 2,000 failing jobs
    PYTHONPATH=src python benchmarks/batch_check.py --lines 10000 --failing 500
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from zeroedit import batch, runner


def jobs_file(folder: Path, lines: int, image: str) -> Path:
    """`lines` translate jobs on the toy model; the last line is cut mid-JSON."""
    good = [json.dumps({"method": "translate", "id": f"j{i}", "image": image, "prompt": "a dog", "steps": 2,
                        "model": "toy"}) for i in range(lines - 1)]
    path = folder / "jobs.jsonl"
    path.write_text("\n".join(good + ['{"method": "translate", "id": "last", "image": ']) + "\n", encoding="utf-8")
    return path


def check(folder: Path, lines: int) -> dict:
    """Seconds to read and check every line (what runs before any model loads); the refused ids."""
    shutil.copyfile(runner.asset("cat.png"), folder / "cat.png")
    path = jobs_file(folder, lines, "cat.png")
    start = time.perf_counter()
    jobs = batch.read_jobs(path)
    read = time.perf_counter() - start
    good, refused = batch.check_jobs(jobs, folder, None)
    return dict(lines=lines, read_s=read, check_s=time.perf_counter() - start - read, good=len(good),
                refused=[r["id"] for r in refused])


def failing(folder: Path, count: int, sync_seconds: float) -> dict:
    """`count` jobs whose image exists but is not a PNG (they pass the check, fail in the method): jobs/s of
    `batch.run_batch` with records fsync'd every `sync_seconds` (0: one fsync per record)."""
    (folder / "corrupt.png").write_bytes(b"\x89PNG not really")
    path = jobs_file(folder, count + 1, "corrupt.png")
    runner.load_pipeline("toy", "translate")  # loaded once, outside the timing
    batch.SYNC_SECONDS, saved = sync_seconds, batch.SYNC_SECONDS
    try:
        start = time.perf_counter()
        failed = batch.run_batch(path, folder / f"out{sync_seconds}", quiet=True)
        seconds = time.perf_counter() - start
    finally:
        batch.SYNC_SECONDS = saved
    return dict(jobs=count + 1, failed=failed, seconds=seconds, jobs_per_s=(count + 1) / seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--failing", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        found = check(Path(root), args.lines)
        print(f"check of {found['lines']:,} lines: read {found['read_s']:.2f} s + check {found['check_s']:.2f} s; "
              f"{found['good']:,} good, refused {found['refused']}")
        for sync in (batch.SYNC_SECONDS, 0.0):
            folder = Path(root) / f"failing{sync}"
            folder.mkdir()
            run = failing(folder, args.failing, sync)
            label = f"fsync at most every {sync:g} s" if sync else "one fsync per record (before)"
            print(f"{run['jobs']:,} failing jobs, {label}: {run['seconds']:.1f} s, {run['jobs_per_s']:.0f} jobs/s "
                  f"({run['failed']} error records)")


if __name__ == "__main__":
    main()
