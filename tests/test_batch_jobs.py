"""Batched jobs (issue 10, part 4): a JobSession runs N jobs as one sampling batch.

Equality to single runs is asserted to a float tolerance on the final latents, not bit for bit: on the CPU,
oneDNN/MKL pick their conv and GEMM kernels by batch size (the tiny UNet's first conv differs by ~5e-7 between
batch 1 and 4 on identical samples), and DDIM/DPM-Solver steps carry that forward; the tolerance (1e-3 on
latents of magnitude ~1) is far below the gap between two different jobs (asserted too).
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import zeroedit as ze
from zeroedit import batch, cli
from zeroedit.errors import ParameterError
from zeroedit.images import load_image
from zeroedit.jobs import JobSession

from conftest import make_image, processors_snapshot

TOL = 1e-3


@pytest.fixture(scope="module")
def ip_pipe():
    return ze.load("tiny", ip_adapter=True)


def batched_equals_single(pipe, jobs):
    """Run `jobs` (functions of nothing) alone, then as one session; compare per job; return the session."""
    singles = [job() for job in jobs]
    before = processors_snapshot(pipe)
    session = JobSession(pipe.unet)
    outcomes = session.run(jobs)
    assert processors_snapshot(pipe) == before
    for (result, error), single in zip(outcomes, singles):
        assert error is None, error
        assert result.latents.shape == single.latents.shape
        assert (result.latents - single.latents).abs().max() <= TOL
        assert result.stats.unet_calls == single.stats.unet_calls  # each job still counts its own calls
        assert result.stats.unet_evals == single.stats.unet_evals
        assert result.stats.unet_backward == single.stats.unet_backward
    assert (singles[0].latents - singles[1].latents).abs().max() > 100 * TOL  # the jobs really differ
    assert session.calls == singles[0].stats.unet_calls  # N jobs cost the sequential calls of one
    assert session.evals == sum(s.stats.unet_evals for s in singles)
    return session, singles


def test_translate_batched_equals_single(tiny_pipe):
    jobs = [lambda i=i, p=p: ze.translate(tiny_pipe, make_image(i), p, steps=4, output_type="latent")
            for i, p in enumerate(["a dog", "a red car", ["a tree", "a house"]])]  # P = 1, 1, 2 prompts
    batched_equals_single(tiny_pipe, jobs)


def test_compose_batched_equals_single(tiny_pipe):
    bg, seg = make_image(0, (192, 128)), np.ones((64, 64), bool)
    jobs = [lambda i=i: ze.compose(tiny_pipe, bg if i else make_image(5, (192, 128)), make_image(i + 1, (64, 64)),
                                   region=(40, 30, 100, 90), reference_mask=seg, prompt=f"painting {i}", steps=4,
                                   tau_a=1.0, seed=i, output_type="latent") for i in range(2)]  # tau_a: inject
    batched_equals_single(tiny_pipe, jobs)


def test_edit_batched_equals_single_one_backward_per_step(tiny_pipe):
    jobs = [lambda i=i, t=t: ze.edit(tiny_pipe, make_image(i), "cat", t, steps=3, reg_steps=1, seed=i,
                                     output_type="latent") for i, t in enumerate(["dog", "horse"])]
    session, singles = batched_equals_single(tiny_pipe, jobs)
    assert session.backward == singles[0].stats.unet_backward == 3  # one shared backward per step


def test_personalize_batched_equals_single(ip_pipe):
    objects = [("cat", "dog"), ("bird", "tree")]  # different phrases: each job's relevance rule is its own
    jobs = [lambda i=i, a=a, b=b: ze.personalize(ip_pipe, f"a {a} and a {b}", {a: make_image(i), b: make_image(i + 2)},
                                                 steps=3, seed=i, output_type="latent")
            for i, (a, b) in enumerate(objects)]
    batched_equals_single(ip_pipe, jobs)


def test_incompatible_requests_run_as_separate_calls_never_padded(tiny_pipe):
    sizes = [(128, 128), (192, 128)]  # one session, two latent sizes: two calls per step, each exact
    jobs = [lambda size=size: ze.translate(tiny_pipe, make_image(0, size), "a dog", steps=3, output_type="latent")
            for size in sizes]
    singles = [job() for job in jobs]
    session = JobSession(tiny_pipe.unet)
    outcomes = session.run(jobs)
    for (result, error), single in zip(outcomes, singles):
        assert error is None and (result.latents - single.latents).abs().max() <= TOL
    assert session.calls == 2 * singles[0].stats.unet_calls


def test_a_job_raising_mid_run_leaves_the_others_alone(tiny_pipe):
    def failing_callback(pipe, step, t, kwargs):
        if step == 2:
            raise RuntimeError("boom")
        return kwargs

    good = lambda: ze.translate(tiny_pipe, make_image(0), "a dog", steps=4, output_type="latent")  # noqa: E731
    bad = lambda: ze.translate(tiny_pipe, make_image(1), "a cat", steps=4, output_type="latent",  # noqa: E731
                               callback_on_step_end=failing_callback)
    early = lambda: ze.translate(tiny_pipe, make_image(1), "a cat", steps=0)  # noqa: E731 — ParameterError
    single = good()
    before = processors_snapshot(tiny_pipe)
    outcomes = JobSession(tiny_pipe.unet).run([bad, good, early])
    assert processors_snapshot(tiny_pipe) == before
    assert isinstance(outcomes[0][1], RuntimeError) and isinstance(outcomes[2][1], ParameterError)
    assert outcomes[1][1] is None and (outcomes[1][0].latents - single.latents).abs().max() <= TOL


# ----------------------------------------------------------------------------------------- CLI / batch files
def write_jobs(folder: Path, lines) -> Path:
    shutil.copyfile(cli.asset("cat.png"), folder / "cat.png")
    jobs = folder / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return jobs


def records(out: Path):
    return [json.loads(line) for line in (out / batch.RESULTS).read_text().splitlines()]


def translate_job(i, **kw):
    return dict({"method": "translate", "id": f"t{i}", "model": "tiny", "image": "cat.png", "prompt": f"a dog {i}",
                 "steps": 3, "seed": i}, **kw)


def test_cli_batch_one_record_per_job_outputs_equal_and_resume(tmp_path, monkeypatch):
    lines = [translate_job(i) for i in range(3)] + [translate_job(3, image="missing.png")]
    jobs = write_jobs(tmp_path, lines)
    one, many = tmp_path / "one", tmp_path / "many"
    assert cli.main(["batch", str(jobs), "--out", str(one), "--quiet"]) == 3  # default --max-batch 1: today's path
    real, calls = batch.run_group, []

    def dying(group, *args, **kwargs):
        calls.append([job["id"] for job in group])
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C before the second batch
        return real(group, *args, **kwargs)

    monkeypatch.setattr(batch, "run_group", dying)
    assert cli.main(["batch", str(jobs), "--out", str(many), "--quiet", "--max-batch", "2"]) == 130
    assert calls == [["t0", "t1"], ["t2"]]  # the bad job failed alone, before any batch
    monkeypatch.setattr(batch, "run_group", real)
    assert cli.main(["batch", str(jobs), "--out", str(many), "--quiet", "--max-batch", "2"]) == 3  # resume
    recs = records(many)
    assert [r["id"] for r in recs] == ["t0", "t1", "t2", "t3"]
    assert [r["status"] for r in recs] == ["ok"] * 3 + ["error"] and recs[3]["kind"] == "user"
    assert recs[0]["batch"]["jobs"] == ["t0", "t1"] and recs[0]["batch"]["unet_calls"] == recs[0]["stats"]["unet_calls"]
    assert recs[2]["batch"]["jobs"] == ["t2"]
    for i in range(3):
        a = np.asarray(load_image(one / f"t{i}.png"), dtype=int)
        b = np.asarray(load_image(many / f"t{i}.png"), dtype=int)
        assert np.abs(a - b).max() <= 1  # PNG of latents equal to 1e-3: at most one grey level apart
    assert cli.main(["batch", str(jobs), "--out", str(many), "--quiet", "--max-batch", "2"]) == 3
    assert records(many) == recs  # nothing left to run, nothing duplicated


def test_mixed_sizes_are_grouped_separately(tmp_path):
    from PIL import Image
    jobs = write_jobs(tmp_path, [translate_job(0), translate_job(1, image="wide.png"), translate_job(2),
                                 translate_job(3, steps=2)])
    Image.fromarray(make_image(0, (192, 128))).save(tmp_path / "wide.png")
    todo = batch.read_jobs(jobs)
    groups, failed = batch.plan(todo, tmp_path, None, max_batch=8)
    assert failed == [] and sorted([job["id"] for job in g] for g in groups) == [["t0", "t2"], ["t1"], ["t3"]]
    groups, _ = batch.plan(todo, tmp_path, None, max_batch=1)
    assert len(groups) == 4


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_max_batch_must_be_positive(tmp_path, capsys, value):
    jobs = write_jobs(tmp_path, [translate_job(0)])
    assert cli.main(["batch", str(jobs), "--out", str(tmp_path / "o"), "--max-batch", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max-batch" in err
    assert not (tmp_path / "o" / batch.RESULTS).exists()


def test_compiled_jobs_share_a_compiled_forward(tiny_pipe):
    """compile= inside a job batch: the combined forward runs through torch.compile (a counting backend
    here) with every job's rules active, and gives the eager batch's outputs."""
    from torch._dynamo.testing import CompileCounter
    counter = CompileCounter()
    jobs = [lambda i=i: ze.translate(tiny_pipe, make_image(i), "a dog", steps=2, output_type="latent")
            for i in range(2)]
    eager = [result for result, _ in JobSession(tiny_pipe.unet).run(jobs)]
    compiled_jobs = [lambda i=i: ze.translate(tiny_pipe, make_image(i), "a dog", steps=2, output_type="latent",
                                              compile={"backend": counter}) for i in range(2)]
    before = processors_snapshot(tiny_pipe)
    session = JobSession(tiny_pipe.unet)
    outcomes = session.run(compiled_jobs)
    assert processors_snapshot(tiny_pipe) == before and counter.frame_count > 0
    assert session.calls == eager[0].stats.unet_calls
    for (result, error), reference in zip(outcomes, eager):
        assert error is None, error
        assert (result.latents - reference.latents).abs().max() <= TOL
