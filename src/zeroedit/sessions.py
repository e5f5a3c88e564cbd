"""Which job session (zeroedit.jobs) the calling thread runs in: one thread-local slot.

The backbones read it to route a job's model calls through its session, and control/ to attach a job's rules
to the session instead of installing processors — without importing jobs, which builds on both (the layers
depend one way: jobs -> control/, backbones -> sessions).
"""
from __future__ import annotations

import threading

_local = threading.local()


def member():
    """The calling thread's job (a `jobs._Member`), or None outside a session."""
    return getattr(_local, "member", None)


def set_member(job) -> None:
    """Make `job` (None: no job) the calling thread's job."""
    _local.member = job


def current(model=None):
    """The session the calling thread's job runs in (for `model`, when given), else None."""
    job = member()
    if job is None or (model is not None and job.session.unet is not model):
        return None
    return job.session
