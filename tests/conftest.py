"""Shared fixtures: offline tiny pipelines (built once per session; methods must leave them unchanged)."""
import contextlib
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*torchvision.*")

import zeroedit as ze  # noqa: E402
# `import zeroedit` loads no torch; load torch and diffusers here, once, so that import-time notices of their
# dependencies (e.g. a torchao built for another torch) are printed at collection, not in a test's captured stderr.
from diffusers import StableDiffusionPipeline  # noqa: E402, F401


@pytest.fixture(scope="session")
def tiny_pipe():
    return ze.load("tiny")


@pytest.fixture(scope="session")
def tiny_xl_pipe():
    return ze.load("tiny-xl")


@pytest.fixture(scope="session")
def tiny_sd3_pipe():
    return ze.load("tiny-sd3")


@pytest.fixture(scope="session")
def tiny_flux_pipe():
    return ze.load("tiny-flux")


@pytest.fixture(scope="module")
def app_url():
    """The web app (zeroedit.app) on the tiny model, served on a free port in this process; its URL."""
    import socket

    from zeroedit import app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = app.serve("tiny", port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def make_image(seed: int = 0, size=(128, 128)) -> np.ndarray:
    """A smooth random RGB image (uint8 HxWx3) — structured enough that latents are not pure noise."""
    rng = np.random.RandomState(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(2 * np.pi * (rng.rand() * 3 * xx + rng.rand() * 3 * yy) + rng.rand() * 6) for _ in range(3)]
    return ((np.stack(channels, -1) * 0.5 + 0.5) * 255).astype(np.uint8)


@pytest.fixture
def image():
    return make_image(0)


def processors_snapshot(pipe):
    """Identity of every attention processor and the count of forward hooks of the denoiser (UNet, or the
    SD3/FLUX transformer): what 'restored' compares."""
    from zeroedit.control import attn_processors
    model = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    procs = {name: id(proc) for name, proc in attn_processors(model).items()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return procs, hooks


MODEL_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae", "image_encoder")


@contextlib.contextmanager
def no_model_work(pipe):
    """Inside the block no model of `pipe` runs (forward pre-hooks on the denoiser, text encoders, VAE and image
    encoder count their calls); afterwards its processors and hooks are as before."""
    before, calls = processors_snapshot(pipe), []
    modules = [(name, getattr(pipe, name, None)) for name in MODEL_COMPONENTS]
    handles = [module.register_forward_pre_hook(lambda *a, name=name: calls.append(name))
               for name, module in modules if module is not None]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [] and processors_snapshot(pipe) == before


def latents_by_step():
    """(seen, keep): `keep(name)` is a callback_on_step_end that stores each step's latents in seen[name][step]."""
    seen = {}

    def keep(name):
        def callback(pipe, step, timestep, kwargs):
            seen.setdefault(name, {})[step] = kwargs["latents"].clone()
        return callback
    return seen, keep
