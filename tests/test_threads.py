"""Threads (issue 15 §3): calls on one pipeline from several threads run one after the other (the UNet's lock,
jobs.exclusive), so each output equals its solo run exactly and the pipeline is restored; a JobSession holds
the lock for the whole session while its own job threads go on without it."""
import threading

import pytest
import torch

import zeroedit as ze
from zeroedit.jobs import JobSession

from conftest import make_image, processors_snapshot


def _jobs(pipe):
    return {
        "translate": lambda: ze.translate(pipe, make_image(0), "a dog", steps=3, output_type="latent"),
        "compose": lambda: ze.compose(pipe, make_image(1, (192, 128)), make_image(2, (64, 64)),
                                      region=(40, 30, 100, 90), steps=3, tau_a=1.0, seed=0, output_type="latent"),
    }


def _run_threads(targets):
    errors = []

    def guarded(target):
        try:
            target()
        except BaseException as error:  # noqa: BLE001 — reported below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    return errors


def test_two_threads_two_methods_equal_their_solo_runs(tiny_pipe):
    jobs = _jobs(tiny_pipe)
    solo = {name: job().latents for name, job in jobs.items()}
    before = processors_snapshot(tiny_pipe)
    start, results = threading.Barrier(2), {}

    def worker(tag, order):
        start.wait()
        for name in order:
            results[tag, name] = jobs[name]().latents

    errors = _run_threads([lambda: worker(0, ["translate", "compose"]), lambda: worker(1, ["compose", "translate"])])
    assert not errors, errors
    assert processors_snapshot(tiny_pipe) == before
    assert len(results) == 4
    for (tag, name), latents in results.items():
        assert torch.equal(latents, solo[name]), (tag, name)


def test_an_error_in_one_thread_leaves_the_other_alone(tiny_pipe):
    jobs = _jobs(tiny_pipe)
    solo = jobs["translate"]().latents
    before = processors_snapshot(tiny_pipe)

    def boom(pipe, step, t, kwargs):
        raise RuntimeError("stop")

    failing = lambda: ze.compose(tiny_pipe, make_image(1, (192, 128)), make_image(2, (64, 64)),  # noqa: E731
                                 region=(40, 30, 100, 90), steps=3, callback_on_step_end=boom)
    out = {}
    errors = _run_threads([failing, lambda: out.setdefault("x", jobs["translate"]().latents)])
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert torch.equal(out["x"], solo) and processors_snapshot(tiny_pipe) == before


def test_a_session_and_a_plain_call_from_another_thread(tiny_pipe):
    """A JobSession in one thread (its jobs share one forward per step, no per-job lock) and a plain call from
    another thread: the plain call waits for the session, both give their solo results."""
    jobs = _jobs(tiny_pipe)
    session_jobs = [lambda i=i: ze.translate(tiny_pipe, make_image(i), "a cat", steps=2, output_type="latent")
                    for i in range(2)]
    solo_session = [job().latents for job in session_jobs]
    solo_compose = jobs["compose"]().latents
    before = processors_snapshot(tiny_pipe)
    out = {}
    session = JobSession(tiny_pipe.unet)
    errors = _run_threads([lambda: out.setdefault("session", session.run(session_jobs)),
                           lambda: out.setdefault("compose", jobs["compose"]().latents)])
    assert not errors, errors
    assert processors_snapshot(tiny_pipe) == before
    assert session.calls == 4  # 2 inversion + 2 sampling calls, shared by both jobs
    for (result, error), single in zip(out["session"], solo_session):
        assert error is None and (result.latents - single).abs().max() <= 1e-3  # batch-size kernels, see test_batch_jobs
    assert torch.equal(out["compose"], solo_compose)


@pytest.mark.parametrize("which", ["invert", "build"])
def test_invert_and_directions_take_the_lock_too(tiny_pipe, which):
    """While another thread holds the UNet's lock, invert and directions.build wait for it."""
    from zeroedit.jobs import model_lock
    lock, done = model_lock(tiny_pipe.unet), threading.Event()
    call = {"invert": lambda: ze.invert(tiny_pipe, make_image(0), steps=1),
            "build": lambda: ze.directions.build(tiny_pipe, "owl", "bat")}[which]
    lock.acquire()
    try:
        thread = threading.Thread(target=lambda: (call(), done.set()))
        thread.start()
        assert not done.wait(1.0)  # blocked on the lock
    finally:
        lock.release()
    thread.join(timeout=120)
    assert done.is_set()


@pytest.mark.parametrize("name", ["compose", "translate", "edit", "personalize", "invert", "reconstruct"])
def test_every_public_method_waits_for_the_lock(name, tiny_pipe):
    """Each entry point takes the pipeline's lock before anything else (methods.common.serialised): while another
    thread holds it, a call (here one missing its arguments, which fails at once when it runs) does not return."""
    from zeroedit import jobs
    from zeroedit.methods.common import check_pipe
    held, release, done = threading.Event(), threading.Event(), threading.Event()

    def hold():
        with jobs.exclusive(check_pipe(tiny_pipe)):
            held.set()
            release.wait(10)

    def call():
        try:
            getattr(ze, name)(tiny_pipe)
        except TypeError:
            pass
        finally:
            done.set()
    holder, caller = threading.Thread(target=hold), threading.Thread(target=call)
    holder.start()
    held.wait(5)
    caller.start()
    try:
        assert not done.wait(0.5), f"ze.{name} ran while another thread held the pipeline's lock"
    finally:
        release.set()
        holder.join()
    assert done.wait(5)
