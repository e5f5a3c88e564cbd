"""`zeroedit batch jobs.jsonl --out DIR`: run many jobs, resumably, on one or many processes.

One job per line: {"method": "translate", "id": "cat1", "model": "tiny", "image": "cat.png", "prompt": "..."}
(paths relative to the jobs file; "id" defaults to the line number; "model" to --model or the method's paper
model). Every image and sidecar is written atomically (tmp + os.replace); each finished job appends one record
{"id", "status": "ok"|"error", "outputs", "stats" | "error"} to its process's shard `results.part<rank>.jsonl`;
at the end the main process merges all shards into `results.jsonl` (one record per job, in job order). A re-run
skips every job that already has a record, so a crash or Ctrl-C loses nothing and duplicates nothing; it first
removes the temporary files (`.NAME.tmpPID`) a kill left behind.

Every line is checked before any model work (`check_jobs`: JSON, method, argument names and values, required
arguments, input files present; ~100,000 lines in seconds): a bad line becomes an error record at once and is
named on stderr (unless quiet), the other jobs run. The jobs file is UTF-8 (a byte-order mark is accepted); other
bytes are a UserError naming the line. Records are written through `Records`: each line is flushed as its job
ends (a killed process loses none), fsync'd at most once per SYNC_SECONDS and at the end (a power cut or an OS
crash loses at most the last SYNC_SECONDS of records; their jobs run again on resume, overwriting their own
outputs). Outputs are named by the job's id: `ID.png`,
or `ID~0.png`, `ID~1.png`, ... for several images, and `ID.json`; ids cannot contain `~`, so two jobs' files
never collide (job "h" with two prompts writes h~0.png, h~1.png; job "h-0" writes h-0.png). Under
`accelerate launch` the jobs are split with `PartialState().split_between_processes`.

`--max-batch N` (N > 1): each process groups its unfinished jobs by a compatibility key (method, model, image
size after loading, steps and every other flag; jobs may differ in images, prompts and seeds), chunks each group
by N and runs every chunk as one `zeroedit.jobs.JobSession`: N jobs share every UNet call (N jobs cost the
sequential calls of one), each output equals that job run alone (to float tolerance: kernels depend on the
batch size). Jobs of different sizes are never padded into one batch. A job whose inputs are bad fails alone
before its chunk starts. Records are appended when the chunk ends (each with "batch": the chunk's job ids and
its shared UNet calls); a chunk interrupted midway is run again on resume.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from . import runner
from .runner import UserError, guarded, job_arguments, run_job  # noqa: F401 — batch.run_job as before

logger = logging.getLogger(__name__)
RESULTS = "results.jsonl"
METHODS = runner.METHODS
ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")  # any other character of an id becomes "_" (never runner.SEPARATOR)
SYNC_SECONDS = 1.0  # records are fsync'd at most this often (and at the end)
LISTED = 5  # refused jobs named on stderr before the count of the others


def read_jobs(path: Path) -> list[dict]:
    """Parse the jobs file; a line that is not a JSON object becomes a job that fails with the parse error.
    Ids are file names: characters other than letters, digits, `.`, `_`, `-` become `_`, a leading `.` too;
    two ids equal up to case are duplicates (they would share files on macOS and Windows)."""
    if not path.is_file():
        raise UserError(f"jobs file {str(path)!r} does not exist.")
    jobs, seen = [], set()
    for number, line in enumerate(runner.read_text(path, "jobs file").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            job = json.loads(line)
            if not isinstance(job, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deeply
            job = {"_error": f"line {number} is not a JSON object: {str(error)[:200]}"}
        job_id = re.sub(r"^\.", "_", ID_CHARS.sub("_", str(job.get("id", f"job{number:05d}"))))
        if job_id.lower() in seen:
            job, job_id = {"_error": f"line {number}: duplicate id {job_id!r}"}, f"job{number:05d}"
        seen.add(job_id.lower())
        jobs.append(dict(job, id=job_id))
    return jobs


def read_records(out: Path) -> dict[str, dict]:
    """Every record already written (merged file and shards); a torn last line (killed mid-write) is ignored."""
    records = {}
    for file in [out / RESULTS] + sorted(out.glob("results.part*.jsonl")):
        if not file.is_file():
            continue
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():  # a damaged line is skipped
            try:
                record = json.loads(line)
                records[record["id"]] = record
            except (ValueError, KeyError, TypeError):
                continue
    return records


def check_job(job: dict, base: Path, model: str | None) -> None:
    """The checks of one job that need no model: `runner.job_arguments` (JSON, method, argument names and
    values, required arguments) and every input file present. Raises UserError."""
    _, values, _ = job_arguments(job, base, model)
    missing = runner.missing_files(values)
    if missing:
        raise UserError(f"input file not found: {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                                                   else "") + ".")


def check_jobs(jobs: list[dict], base: Path, model: str | None) -> tuple[list[dict], list[dict]]:
    """Check every job before any model work (`check_job`): (the good jobs, an error record per bad one)."""
    good, refused = [], []
    for job in jobs:
        record = guarded(job, lambda record: check_job(job, base, model))
        if "status" in record:
            refused.append(record)
        else:
            good.append(job)
    return good, refused


def refusal_note(refused: list[dict], total: int) -> str:
    """One line naming the first LISTED refused jobs (id: error) and counting the others."""
    listed = "; ".join(f"{r['id']}: {r['error']}" for r in refused[:LISTED])
    more = f"; and {len(refused) - LISTED} more" if len(refused) > LISTED else ""
    return (f"batch: {len(refused)} of {total} job(s) refused before any model work (error records; the others "
            f"run): {listed}{more}")


PER_JOB = {"image", "background", "reference", "reference_mask", "region", "references", "prompt", "source_prompt",
           "negative_prompt", "caption", "source", "target", "direction", "seed"}  # may differ inside one batch


def batch_key(job: dict, base: Path, model: str | None) -> tuple:
    """Compatibility key: jobs with equal keys run in one sampling batch. Method, model, the loaded size of
    the main image(s), and every argument except the per-job inputs (PER_JOB). Validates the job's images."""
    from .images import prepare_image
    method, values, job_model = job_arguments(job, base, model)
    sizes = []
    for name in ("image", "background"):
        if values.get(name) is not None:
            items = values[name] if isinstance(values[name], list) else [values[name]]
            sizes.append(tuple(prepare_image(item, values.get("size") if method == "invert" else None).size
                               for item in items))
    flags = {k: v for k, v in values.items() if k not in PER_JOB}
    return method, job_model, tuple(sizes), json.dumps(flags, sort_keys=True, default=str)


def plan(todo: list[dict], base: Path, model: str | None, max_batch: int) -> tuple[list[list[dict]], list[dict]]:
    """Group jobs by `batch_key` (first appearance order) in chunks of at most `max_batch`; jobs whose
    inputs are bad come back as error records instead."""
    groups: dict = {}
    failed = []
    for job in todo:
        keys = []
        record = guarded(job, lambda record: keys.append(batch_key(job, base, model)))
        if keys:
            groups.setdefault(keys[0], []).append(job)
        else:
            failed.append(record)
    chunks = [group[i:i + max_batch] for group in groups.values() for i in range(0, len(group), max_batch)]
    return chunks, failed


def run_group(group: list[dict], base: Path, out: Path, model: str | None, device=None, memory=None) -> list[dict]:
    """Run compatible jobs as one JobSession (one sampling batch); one record per job, in group order."""
    from .jobs import JobSession
    method, values, job_model = job_arguments(group[0], base, model)
    memory = group[0].get("memory") or memory
    try:  # once, before the jobs' threads start
        pipe = runner.load_pipeline(job_model, method, device, None, True, memory, values)
    except Exception:  # noqa: BLE001 — e.g. a missing model: every job gets its own error record, as unbatched
        return [run_job(job, base, out, model, device, memory=memory) for job in group]
    if getattr(pipe, "unet", None) is None:  # SD3/FLUX: no job batching on transformers yet, one job after another
        return [run_job(job, base, out, model, device, memory=memory) for job in group]
    session = JobSession(pipe.unet)
    outcomes = session.run([lambda job=job: run_job(job, base, out, model, device, memory=memory) for job in group])
    for _, error in outcomes:
        if error is not None:
            raise error  # only KeyboardInterrupt/SystemExit get here: run_job turns the rest into records
    shared = {"jobs": [job["id"] for job in group], "unet_calls": session.calls, "unet_evals": session.evals,
              "unet_backward": session.backward}
    return [dict(record, batch=shared) for record, _ in outcomes]


class Records:
    """Appends records to a shard (module docstring): every line is flushed when added (a killed process loses
    none; a kill mid-write can at most tear the last line, which reads skip), fsync'd at most once per
    SYNC_SECONDS and on close."""

    def __init__(self, shard: Path):
        self.file = open(shard, "a", encoding="utf-8")
        self.synced = time.monotonic()

    def add(self, *records: dict):
        if not records:
            return
        self.file.write("".join(json.dumps(record) + "\n" for record in records))
        self.file.flush()
        if time.monotonic() - self.synced >= SYNC_SECONDS:
            self.sync()

    def sync(self):
        os.fsync(self.file.fileno())
        self.synced = time.monotonic()

    def close(self):
        try:
            self.file.flush()
            self.sync()
        finally:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def merge(out: Path, jobs: list[dict]) -> list[dict]:
    """Merge shards and the previous results into results.jsonl (job order), then remove the shards."""
    records = read_records(out)
    order = {job["id"]: i for i, job in enumerate(jobs)}
    merged = sorted(records.values(), key=lambda r: (order.get(r["id"], len(order)), r["id"]))
    text = "".join(json.dumps(r) + "\n" for r in merged)
    runner.write_atomically(out / RESULTS, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    for shard in out.glob("results.part*.jsonl"):
        shard.unlink()
    return merged


def _state():
    """accelerate's PartialState when launched with several processes, else None (plain single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState
    return PartialState(cpu=not torch.cuda.is_available())  # CPU processes (tests) use gloo


def check_max_batch(max_batch) -> int:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise UserError(f"--max-batch must be a whole number ≥ 1 (jobs per sampling batch), got {max_batch!r}.")
    return max_batch


def run_batch(jobs_path: Path, out: Path, model: str | None = None, quiet: bool = True, max_batch: int = 1,
              memory=None) -> int:
    """Run every unfinished job of `jobs_path` into `out`, up to `max_batch` compatible jobs per sampling
    batch; return the number of failed jobs (all records). `memory`: a GPU budget ("24GB") planned per model and
    method (zeroedit.memory), unless a job names its own ("memory" key)."""
    max_batch = check_max_batch(max_batch)
    if memory is not None:
        from .memory import check_memory
        check_memory(memory)
    jobs_path, out = Path(jobs_path), Path(out)
    jobs = read_jobs(jobs_path)
    out.mkdir(parents=True, exist_ok=True)
    state = _state()
    rank = state.process_index if state else 0
    if state is None or state.is_main_process:
        stale = runner.remove_stale_tmp(out)  # left by a kill mid-write; nobody writes before the barrier below
        if stale:
            logger.info("removed %d stale temporary file(s) of a killed run: %s", len(stale), ", ".join(stale))
    done = read_records(out)
    base = jobs_path.parent.resolve()
    todo, refused = check_jobs([job for job in jobs if job["id"] not in done], base, model)  # every line, no model
    if refused and not quiet and (state is None or state.is_main_process):
        print(refusal_note(refused, len(refused) + len(todo)), file=sys.stderr, flush=True)
    todo.sort(key=lambda job: (str(job.get("model") or model or ""), job.get("method") == "personalize"))  # fewer loads
    device = None
    if state is not None:
        state.wait_for_everyone()  # every process has read the same records before any writes one
        if state.device.type == "cuda":
            device = str(state.device)
        with state.split_between_processes(todo) as mine:
            todo = list(mine)
    from tqdm.auto import tqdm
    with Records(out / f"results.part{rank}.jsonl") as records:
        if state is None or state.is_main_process:
            records.add(*(dict(record, process=rank) for record in refused))
        if max_batch == 1:
            for job in tqdm(todo, desc=f"batch[{rank}]", disable=quiet):
                records.add(dict(run_job(job, base, out, model, device, quiet=True, memory=memory), process=rank))
        else:
            groups, failed = plan(todo, base, model, max_batch)
            records.add(*(dict(record, process=rank) for record in failed))
            for group in tqdm(groups, desc=f"batch[{rank}] groups", disable=quiet):
                records.add(*(dict(record, process=rank) for record in run_group(group, base, out, model, device,
                                                                                  memory)))
    if state is not None:
        state.wait_for_everyone()
    failed = 0
    if state is None or state.is_main_process:
        merged = merge(out, jobs)
        failed = sum(r["status"] != "ok" for r in merged)
        if not quiet:
            print(f"batch: {len(merged) - failed} ok, {failed} failed, {len(todo)} run now; records in {out / RESULTS}")
    if state is not None:
        state.wait_for_everyone()
        if not state.is_main_process:
            failed = sum(r["status"] != "ok" for r in read_records(out).values())
    return failed
