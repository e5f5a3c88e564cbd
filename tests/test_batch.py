"""Batch: partial failure, resume without duplicates, kill + resume, 2-process accelerate split."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from zeroedit import batch, cli, runner

ASSETS = Path(cli.asset("cat.png")).parent
ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), HF_HUB_OFFLINE="1",
           OMP_NUM_THREADS="1")


def write_jobs(folder: Path, n=5, corrupt=1) -> Path:
    shutil.copyfile(ASSETS / "cat.png", folder / "cat.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG not really")
    lines = [{"method": "invert", "id": f"j{i}", "image": "corrupt.png" if i < corrupt else "cat.png", "steps": 2,
              "model": "tiny"} for i in range(n)]
    jobs = folder / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return jobs


def records(out: Path):
    return [json.loads(line) for line in (out / batch.RESULTS).read_text().splitlines()]


def test_partial_failure_then_rerun_does_nothing(tmp_path, monkeypatch):
    jobs, out = write_jobs(tmp_path), tmp_path / "out"
    assert cli.main(["batch", str(jobs), "--out", str(out), "--quiet"]) == 3  # partial failure
    recs = records(out)
    assert [r["id"] for r in recs] == [f"j{i}" for i in range(5)]
    assert [r["status"] for r in recs] == ["error"] + ["ok"] * 4 and recs[0]["kind"] == "user"
    assert sorted(p.name for p in out.glob("*.png")) == [f"j{i}.png" for i in range(1, 5)]
    assert not list(out.glob(".*tmp*")) and not list(out.glob("results.part*"))
    calls = []
    monkeypatch.setattr(runner, "run_method", lambda *a, **k: calls.append(a))
    assert cli.main(["batch", str(jobs), "--out", str(out), "--quiet"]) == 3
    assert calls == [] and records(out) == recs


def test_killed_run_resumes_without_duplicates(tmp_path, monkeypatch):
    jobs, out = write_jobs(tmp_path, n=4, corrupt=0), tmp_path / "out"
    real, calls = runner.run_method, []

    def dying(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of job 3
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_method", dying)
    assert cli.main(["batch", str(jobs), "--out", str(out), "--quiet"]) == 130
    monkeypatch.setattr(runner, "run_method", real)
    assert cli.main(["batch", str(jobs), "--out", str(out), "--quiet"]) == 0
    recs = records(out)
    assert [r["id"] for r in recs] == ["j0", "j1", "j2", "j3"] and all(r["status"] == "ok" for r in recs)
    assert sorted(p.name for p in out.glob("*.png")) == ["j0.png", "j1.png", "j2.png", "j3.png"]


def test_bad_lines_and_unknown_methods_are_error_records(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"method": "invert", "id": "a", "image": "nope.png", "model": "tiny"}\nnot json\n'
                    '{"method": "dance", "id": "b"}\n')
    assert cli.main(["batch", str(jobs), "--out", str(tmp_path / "o"), "--quiet"]) == 3
    assert [r["status"] for r in records(tmp_path / "o")] == ["error"] * 3


def test_two_process_accelerate_covers_every_job_once(tmp_path):
    jobs, out = write_jobs(tmp_path, n=4, corrupt=0), tmp_path / "out"
    # `accelerate launch --multi_gpu` runs torch.distributed.run; on CPU (`--cpu`) accelerate only offers mpirun,
    # so the test launches the same torchrun environment directly; PartialState picks it up (gloo).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29621",
           "-m", "zeroedit.cli", "batch", str(jobs), "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    recs = records(out)
    assert sorted(r["id"] for r in recs) == ["j0", "j1", "j2", "j3"]
    assert {r["process"] for r in recs} == {0, 1}
    assert not list(out.glob("results.part*"))


def test_sigkill_mid_run_then_rerun_completes_without_duplicates(tmp_path, monkeypatch):
    """A real kill -9 of `zeroedit batch` while it works; the re-run runs only the jobs without a record."""
    import signal
    import time
    jobs, out = write_jobs(tmp_path, n=8, corrupt=0), tmp_path / "out"
    jobs.write_text(jobs.read_text().replace('"steps": 2', '"steps": 20'))
    process = subprocess.Popen([sys.executable, "-m", "zeroedit.cli", "batch", str(jobs), "--out", str(out), "--quiet"],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard, deadline = out / "results.part0.jsonl", time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if shard.is_file() and len(shard.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    finished = {json.loads(line)["id"] for line in shard.read_text().splitlines()}
    assert 2 <= len(finished) < 8, "the kill should land mid-run"
    real, calls = runner.run_method, []
    monkeypatch.setattr(runner, "run_method", lambda *a, **k: (calls.append(k.get("name")), real(*a, **k))[1])
    assert cli.main(["batch", str(jobs), "--out", str(out), "--quiet"]) == 0
    recs = records(out)
    assert [r["id"] for r in recs] == [f"j{i}" for i in range(8)] and all(r["status"] == "ok" for r in recs)
    assert sorted(calls) == sorted(set(f"j{i}" for i in range(8)) - finished)  # nothing run twice
    assert sorted(p.name for p in out.glob("*.png")) == [f"j{i}.png" for i in range(8)]
    assert not list(out.glob(".*tmp*"))


def test_output_names_never_collide(tmp_path):
    """Job "h" with two prompts and job "h-0" (issue 15 §4): every file is its own; a case-only duplicate id
    is refused (it would share files on macOS/Windows)."""
    shutil.copyfile(ASSETS / "cat.png", tmp_path / "cat.png")
    lines = [{"method": "translate", "id": "h", "image": "cat.png", "prompt": ["a red cat", "a blue cat"], "steps": 2,
              "model": "tiny"},
             {"method": "translate", "id": "h-0", "image": "cat.png", "prompt": "a green cat", "steps": 2, "model": "tiny"},
             {"method": "translate", "id": "H", "image": "cat.png", "prompt": "a cat", "steps": 2, "model": "tiny"}]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    assert cli.main(["batch", str(jobs), "--out", str(out), "--quiet"]) == 3  # "H" duplicates "h"
    recs = {r["id"]: r for r in records(out)}
    assert recs["h"]["outputs"] == ["h~0.png", "h~1.png", "h.json"]
    assert recs["h-0"]["outputs"] == ["h-0.png", "h-0.json"]
    assert recs["job00003"]["status"] == "error" and "duplicate id" in recs["job00003"]["error"]
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".json")) == \
        ["h-0.json", "h-0.png", "h.json", "h~0.png", "h~1.png"]
    assert json.loads((out / "h-0.json").read_text())["args"]["prompt"] == "a green cat"
    assert json.loads((out / "h.json").read_text())["outputs"] == ["h~0.png", "h~1.png"]


def test_ids_are_file_names_without_the_separator():
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        jobs = Path(folder) / "jobs.jsonl"
        jobs.write_text('{"id": "a~0/../b"}\n{"id": ".hidden"}\n')
        ids = [job["id"] for job in batch.read_jobs(jobs)]
    assert ids == ["a_0_.._b", "_hidden"] and not any(runner.SEPARATOR in i for i in ids)


def test_resume_removes_stale_temporary_files(tmp_path):
    """A kill mid-write leaves `.NAME.tmpPID` files; the resume removes them (and nothing else)."""
    jobs, out = write_jobs(tmp_path, n=2, corrupt=0), tmp_path / "out"
    out.mkdir()
    stale = [out / ".j0.png.tmp4242", out / ".j1.json.tmp17", out / ".results.jsonl.tmp99"]
    for file in stale:
        file.write_bytes(b"half-written")
    keep = out / "notes.tmp.txt"
    keep.write_text("the user's own file")
    assert cli.main(["batch", str(jobs), "--out", str(out), "--quiet"]) == 0
    assert not any(file.exists() for file in stale) and keep.is_file()
    assert sorted(p.name for p in out.glob("*.png")) == ["j0.png", "j1.png"]


def test_every_line_is_checked_before_any_model_loads(tmp_path, monkeypatch):
    """Bad lines anywhere (issue 26 §6) become error records, written before the first model load; the good
    jobs still run."""
    shutil.copyfile(ASSETS / "cat.png", tmp_path / "cat.png")
    good = {"method": "invert", "id": "ok", "image": "cat.png", "steps": 2, "model": "tiny"}
    bad = [{"method": "invert", "id": "gone", "image": "missing.png", "model": "tiny"},  # no such input file
           {"method": "invert", "id": "typo", "image": "cat.png", "stepz": 2, "model": "tiny"},  # unknown key
           {"method": "translate", "id": "bare", "image": "cat.png", "model": "tiny"}]  # no prompt
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in [good] + bad) + '{"method": "invert", "id": \n')
    out, seen = tmp_path / "out", []
    real = runner.load_pipeline

    def load(*args, **kwargs):  # what the shard holds when the first model loads
        seen.append(sorted(json.loads(line)["id"] for line in (out / "results.part0.jsonl").read_text().splitlines()))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "load_pipeline", load)
    assert cli.main(["batch", str(jobs), "--out", str(out), "--quiet"]) == 3
    assert seen[0] == ["bare", "gone", "job00005", "typo"]
    recs = {r["id"]: r for r in records(out)}
    assert recs["ok"]["status"] == "ok" and [recs[i]["status"] for i in seen[0]] == ["error"] * 4
    assert "missing.png" in recs["gone"]["error"] and "stepz" in recs["typo"]["error"]
    assert "--prompt" in recs["bare"]["error"] and "line 5" in recs["job00005"]["error"]


def test_refused_jobs_are_named_on_stderr_unless_quiet(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"method": "invert", "id": "m{i}", "image": "no{i}.png"}}\n' for i in range(7)))
    assert batch.run_batch(jobs, tmp_path / "out", quiet=False) == 7
    err = capsys.readouterr().err
    assert "7 of 7 job(s) refused before any model work" in err and "m0: input file not found" in err
    assert "m4:" in err and "m5:" not in err and "and 2 more" in err  # the first five, then a count
    assert batch.run_batch(jobs, tmp_path / "out2", quiet=True) == 7 and "refused" not in capsys.readouterr().err


def test_records_are_flushed_per_job_and_synced_in_batches(tmp_path, monkeypatch):
    """Each record is readable as soon as it is added (a killed process loses none); fsync runs at most once per
    SYNC_SECONDS, and always on close."""
    syncs = []
    monkeypatch.setattr(batch.os, "fsync", lambda fd: syncs.append(fd))
    monkeypatch.setattr(batch, "SYNC_SECONDS", 3600.0)
    shard = tmp_path / "results.part0.jsonl"
    with batch.Records(shard) as writer:
        for i in range(50):
            writer.add({"id": f"j{i}", "status": "error"})
            assert len(shard.read_text().splitlines()) == i + 1
        writer.add(*({"id": f"k{i}", "status": "ok"} for i in range(3)))
        assert syncs == []
    assert len(syncs) == 1 and len(batch.read_records(tmp_path)) == 53
    monkeypatch.setattr(batch, "SYNC_SECONDS", 0.0)  # 0: one fsync per add, the former behaviour
    with batch.Records(shard) as writer:
        writer.add({"id": "x"})
        writer.add({"id": "y"})
    assert len(syncs) == 1 + 2 + 1


def test_a_results_file_with_a_damaged_line_is_still_read(tmp_path):
    (tmp_path / batch.RESULTS).write_bytes(b'{"id": "a", "status": "ok"}\n{"id": "b\xe9\n{"id": "c", "status": "ok"}\n')
    assert sorted(batch.read_records(tmp_path)) == ["a", "c"]


def test_a_memory_budget_plans_every_job_and_a_job_may_name_its_own(tmp_path):
    """`zeroedit batch --memory`: each job's model is loaded under the memory plan of its method (recorded in its
    sidecar); a job's own "memory" key wins; a budget that is not a size stops the batch before any model loads."""
    shutil.copy(runner.asset("cat.png"), tmp_path / "cat.png")
    jobs = [{"method": "invert", "id": "planned", "image": "cat.png", "steps": 2, "model": "tiny"},
            {"method": "translate", "id": "own", "image": "cat.png", "prompt": "a dog", "steps": 2, "model": "tiny",
             "memory": "2GB"}]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    assert batch.run_batch(path, tmp_path / "out", memory="100GB") == 0
    planned = json.loads((tmp_path / "out" / "planned.json").read_text())["memory"]
    own = json.loads((tmp_path / "out" / "own.json").read_text())["memory"]
    assert planned["method"] == "invert" and planned["budget_bytes"] == 100 * 10**9
    assert own["method"] == "translate" and own["budget_bytes"] == 2 * 10**9
    code = cli.main(["batch", str(path), "--out", str(tmp_path / "bad"), "--memory", "lots"])
    assert code == 2 and not (tmp_path / "bad" / "results.jsonl").exists()
