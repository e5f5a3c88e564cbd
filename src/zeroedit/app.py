"""`zeroedit app`: a Gradio web app with one tab per method (compose, translate, edit, personalize) and one for
invert/reconstruct, on the same runner as the command line.

    zeroedit app                          # the embedded toy model, offline, on http://127.0.0.1:7860
    zeroedit app --model tiny --host 0.0.0.0 --port 8080

Each run goes through `runner` exactly as `zeroedit METHOD` does: the form's values are resolved into the API's
arguments, the model is loaded once per process (`runner.load_pipeline`), the method runs and its images and
JSON sidecar are written into a fresh run folder beside the inputs, so the download (a zip of that folder)
reproduces the image with `zeroedit METHOD --config METHOD.json`.

Uploads reach the app as files (`_undecoded`: Gradio does not decode them) and are read by zeroedit's
`images.load_image`, so a file that is not an image, or a decompression bomb, gets zeroedit's message.

Every tab answers with a status line, the images, a stats line, the downloads (and translate's PCA picture /
personalize's relevance heatmaps). A user error (no image, a mask of another size, steps 0, ...), a cancelled run
or an internal failure (logged on the server) is said in the status line, and the other outputs come back
empty: never an "Error" box, never a traceback, never the previous run's result. The server keeps serving.

Runs share one model: every run event is queued in one concurrency group of size 1, and a lock serialises the
work on the pipeline. Progress (`_Progress`) shows each phase with its total, resolved for the loaded model
before the run (`_phases`): "inversion 12/50" (denoiser calls, counted by a forward pre-hook), "step 3/50" (the
methods' step callback), "finishing", translate's "PCA picture 4/50"; invert: its inversion steps, then the
reconstruction. The stats line gives the output size and the working size, and the run's own peak memory
(`_Peak`). "Stop" only sets the server-side flag of that tab in that session (it does not drop the event in the
client, so the run's answer, "Cancelled at step N of M", arrives); the step callback or the pre-hook raises at the
next step or denoiser call (the inversion phases stop too), the method restores the pipeline's processors as on
any exception, and nothing is saved. A run whose client is gone (the page closed, the job cancelled through
gradio_client) stops the same way, so the next user does not wait.

Run folders live in the app's workdir (a temporary folder unless `workdir=` is given): the app keeps the newest
`max_runs` (MAX_RUNS) within `max_bytes` (MAX_BYTES) and removes older ones before each run; an upload is kept
once per run (in the run's zip: its loose copy is removed once the zip is written); a workdir the app made is
removed when `serve` returns and at exit. Gradio's own copies of uploads and results are deleted after
CACHE_SECONDS.

A parameter whose API default is None (resolved by the method per model family: UNet, SD3, FLUX) is an "auto"
field: left empty it reaches the method as None; its label says what that means.
"""
import atexit
import contextlib
import functools
import inspect
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from gradio import processing_utils  # noqa: E402
from gradio.data_classes import FileData  # noqa: E402
from PIL import Image  # noqa: E402

from . import runner  # noqa: E402
from .backbones import backbone_for, check_pipe, is_flow  # noqa: E402
from .errors import ImageError, ZeroEditError  # noqa: E402
from .images import load_image, load_mask  # noqa: E402
from .invert import METHODS as INVERSIONS  # noqa: E402

logger = logging.getLogger(__name__)
MODELS = ("toy", "tiny", "tiny-xl", "toy-flow", "tiny-sd3", "tiny-flux", "tiny-flux2", "tiny-qwen-image", "tiny-z-image")
MAX_REFERENCES = 3
CONCURRENCY = "model"  # every run event shares one queue slot: one model, one run at a time
MAX_RUNS = 100  # run folders kept (the newest)
MAX_BYTES = 2**30  # and at most 1 GiB of them
CACHE_SECONDS = 6 * 3600  # Gradio's cached uploads and results older than this are deleted (checked hourly)
SHOW_EVERY = 0.2  # s between two progress updates of a phase counted by denoiser calls


class Cancelled(Exception):
    """Raised inside the step callback (or before a denoiser call) when the run must stop: Stop was pressed
    (`reason` "stop") or its client is gone ("client"). The message says where the run was."""

    def __init__(self, where: str, reason: str = "stop"):
        super().__init__(where)
        self.where, self.reason = where, reason


@contextlib.contextmanager
def _before_model_calls(denoiser, on_call):
    """While a run is on, `on_call()` runs before every forward of the denoiser (the UNet, or the SD3/FLUX
    transformer; a forward pre-hook, removed after): it counts the calls of the phases without a step callback
    (the inversions, the PCA picture) and raises Cancelled there within one call."""
    handle = denoiser.register_forward_pre_hook(lambda module, args: on_call())
    try:
        yield
    finally:
        handle.remove()


def default(method: str, name: str):
    """The API default of a method's argument (the paper's value), so the form never repeats a number. None means
    "resolved by the method" (per model family): its field is an `_auto` one, never a Slider/Number."""
    value = runner.parameters(method)[name].default
    return None if value is inspect.Parameter.empty else value


def _phases(method: str, values: dict, pipe) -> tuple[int | None, int | None]:
    """(sampling steps, denoiser calls of the inversion before them) of a run on `pipe`, with the method's defaults
    for the model's family filled in (steps left on "auto" included), so the progress shows totals from the start;
    (None, None) for values the method will refuse. invert: (its inversion steps, 0); its reconstruction is then
    counted against the inversion's calls. The calls are the methods' own (module docstrings: pnp, pnp_flow,
    tficon_flow, pix2pix_zero, inversion.solver_calls); tests/test_app.py checks them against real runs."""
    from .inversion import solver_calls
    from .methods import pnp, pnp_flow, tficon_flow
    from .methods.common import step_limit
    flow, steps, preset = is_flow(pipe), values.get("steps"), values.get("preset")
    try:
        if method == "translate" and flow:
            chosen = pnp_flow.PRESETS[preset]
            steps = steps or chosen["steps"]
            return steps, solver_calls(values.get("solver") or chosen["solver"], steps)
        if method == "translate":
            steps = steps or pnp.STEPS
            full = step_limit(backbone_for(pipe)) if preset == "reference" else steps  # the reference: every timestep
            return steps, values.get("inversion_steps") or full
        if method == "compose":
            return steps, solver_calls(values.get("solver") or tficon_flow.DEFAULTS["solver"], steps) if flow else steps
        if method == "edit":  # the reference preset's DDIM convention skips the grid's two ends (pix2pix_zero.py)
            return steps, steps - 2 if preset == "reference" and not flow else steps
        return steps, 0  # personalize samples from noise; invert's inversion is its stepped phase
    except (KeyError, TypeError):
        return None, None


class _Progress:
    """One run's progress through `gr.Progress` and its stop checks (the tab's Stop flag, the client gone).

    Phases: "inversion" (denoiser calls before the first step callback, against the inversion's calls), "step"
    (the step callback, against the sampling steps), "finishing" (after the last step: decoding, saving), then
    the phases the app adds (`enter`). invert: its callback counts the inversion steps, then "reconstruction"
    counts denoiser calls against those of the inversion (the same solver, steps and calls back down)."""

    def __init__(self, method: str, progress, flag: threading.Event, gone=lambda: False):
        self.method, self.progress, self.flag, self.gone = method, progress, flag, gone
        self.steps, self.step, self.calls, self.all_calls, self.shown = None, 0, 0, 0, 0.0
        self.phase, self.total, self.unit = "inversion", None, "UNet calls"

    def plan(self, steps, inversion_calls):
        """The run's totals (`_phases`), once the model is loaded."""
        self.steps, self.total = steps, inversion_calls
        if self.method == "invert":  # its step callback is the inversion
            self.phase, self.total, self.unit = "inversion", steps, "steps"
        elif inversion_calls == 0:  # personalize: sampling from noise
            self.phase, self.total, self.unit = "step", steps, "steps"
        self.show(0, force=True)

    def where(self) -> str:
        """Where the run is, for the Cancelled message: "at step 3 of 50" and, outside sampling, its phase."""
        if self.steps is None and self.all_calls == 0:
            return "before it started"
        text = f"at step {self.step} of {self.steps}" if self.steps else f"at step {self.step}"
        if self.phase != "step" and self.unit == "UNet calls":
            of = f" of {self.total}" if self.total else ""
            text += f" ({self.phase}: UNet call {min(self.calls, self.total or self.calls)}{of})"
        elif self.phase not in ("step", "finishing"):
            text += f" ({self.phase})"
        return text

    def check(self):
        if self.flag.is_set():
            raise Cancelled(self.where(), "stop")
        if self.gone():
            raise Cancelled(self.where(), "client")

    def show(self, done: int, force: bool = False):
        now = time.monotonic()
        if self.progress is None or not (force or now - self.shown > SHOW_EVERY):
            return
        self.shown = now
        total = self.total
        self.progress((min(done, total) if total else done, total), desc=f"{self.method}: {self.phase}",
                      unit=self.unit)

    def enter(self, phase: str, total: int | None, unit: str = "steps"):
        """Start a phase of the app's own (e.g. the PCA picture), counted by `advance` or, in "UNet calls",
        by the pre-hook."""
        self.phase, self.total, self.unit, self.calls = phase, total, unit, 0
        self.show(0, force=True)

    def advance(self, done: int):
        self.check()
        self.show(done, force=done == self.total)

    def on_call(self):
        """Before every denoiser call: stop if asked, count the call in a phase counted by calls."""
        self.check()
        self.all_calls += 1
        if self.unit == "UNet calls":
            self.calls += 1
            self.show(self.calls, force=self.calls in (1, self.total))

    def on_step(self, pipe, step, timestep, kwargs):
        """The methods' step callback (diffusers' callback_on_step_end; invert: each inversion step)."""
        self.check()
        self.step = step + 1
        last = self.steps is not None and self.step >= self.steps
        if self.method == "invert":
            if last:  # the reconstruction follows: as many calls back down as the inversion made
                self.enter("reconstruction", self.all_calls, "UNet calls")
            else:
                self.show(self.step, force=True)
            return kwargs
        self.phase, self.total, self.unit = ("finishing" if last else "step"), self.steps, "steps"
        self.show(self.step, force=True)
        return kwargs


class _Peak:
    """This run's peak memory. CUDA: the allocator's peak since the run began (reset at its start); elsewhere the
    largest resident set size (RSS) of the process, sampled every 20 ms during the run (/proc/self/statm), and
    its growth over the run's start. `text()` labels which one it is."""

    def __enter__(self):
        import torch
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        self.start = self.peak = self._rss()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.done.set()
            self.thread.join()
        return False

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self):
        stopped = False
        while not stopped:  # one last sample after the run
            stopped = self.done.wait(0.02)
            rss = self._rss()
            if rss is not None:
                self.peak = max(self.peak or 0, rss)

    def text(self) -> str:
        if self.cuda:
            return f"peak memory **{self.peak / 2**20:.0f} MiB** (GPU, allocated during this run)"
        if self.peak is None:
            return "peak memory not measured (no /proc on this system)"
        return (f"peak memory **{self.peak / 2**20:.0f} MiB** (process RSS during this run, "
                f"+{max(self.peak - self.start, 0) / 2**20:.0f} MiB over its start)")


# ----------------------------------------------------------------------------------------- inputs
def _upload_path(component: gr.Image, payload):
    """gr.Image's preprocess, without decoding: the uploaded file's path."""
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):  # a pasted image, sent inline
        return processing_utils.save_base64_to_cache(payload.url, component.GRADIO_CACHE)
    return payload.path


def _canvas_path(component: gr.ImageEditor, file, flatten_on_white: bool = False):
    """gr.ImageEditor's per-image conversion (background, brush layers), without decoding: a file path."""
    if file is None:
        return None
    if isinstance(file, FileData):
        return file.path
    return processing_utils.save_bytes_to_cache(bytes(file), "canvas.png", component.GRADIO_CACHE)


def _undecoded(component):
    """An image input (gr.Image, gr.ImageEditor with type="filepath") whose uploads reach the app as files that
    Gradio has not opened: Gradio's own decoding raises "upstream app raised an exception" on a text file named
    .png or a decompression bomb before the app sees it; zeroedit's reader (`_keep`) says what is wrong instead.
    Set on the instance (a subclass of a Gradio component would make Gradio write a .pyi stub beside this file)."""
    if isinstance(component, gr.ImageEditor):
        component.convert_and_format_image = functools.partial(_canvas_path, component)
    else:
        component.preprocess = functools.partial(_upload_path, component)
    return component


def _keep(upload, what: str, folder: Path, name: str, read=load_image) -> str:
    """An upload, checked by zeroedit's reader (`read`: its message names the uploaded file, not the server's
    copy), kept in the run folder as NAME plus its suffix (a hard link where possible: no copy); its path."""
    if upload is None:
        raise runner.UserError(f"{what}: upload an image (or paste one) first.")
    try:
        read(upload, what)
    except ZeroEditError as error:
        raise type(error)(str(error).replace(str(upload), Path(upload).name)) from None
    suffix = Path(upload).suffix.lower()
    target = folder / (name + (suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".png"))
    try:
        os.link(upload, target)
    except OSError:
        shutil.copyfile(upload, target)
    return str(target)


def _painted(layer, size: tuple[int, int], what: str) -> np.ndarray:
    """Where a brush layer (RGBA, transparent where unpainted) is painted, at `size`."""
    try:
        with Image.open(layer) as image:
            alpha = np.asarray(image.convert("RGBA"))[..., 3] > 0
    except (OSError, Image.DecompressionBombError) as error:
        raise ImageError(f"{what}: the brush layer is not a readable image ({error}).") from None
    if alpha.shape != (size[1], size[0]):
        alpha = np.asarray(Image.fromarray(alpha).resize(size, Image.NEAREST))
    return alpha


def _editor(value, what: str, folder: Path, name: str) -> tuple[str, Image.Image | None]:
    """An ImageEditor value -> (its background kept in the run folder, the brushed mask (white where painted) or
    None)."""
    background = value.get("background") if isinstance(value, dict) else None
    path = _keep(background, what, folder, name)
    size = load_image(path, what).size  # upright, as the method reads it
    painted = None
    for layer in value.get("layers") or []:
        if layer is not None:
            alpha = _painted(layer, size, what)
            painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return path, None
    return path, Image.fromarray(painted.astype(np.uint8) * 255)


def _box(text: str):
    """'x0,y0,x1,y1' (or spaces) -> a box tuple; '' -> None."""
    if not text or not text.strip():
        return None
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise runner.UserError(f"region box {text!r}: write four numbers x0,y0,x1,y1 in pixels, or draw the region.")
    return box


def _optional(value, name: str, integer: bool = False):
    """An "auto" field (a Textbox: empty means the API's automatic value, None) -> None or its number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value) if integer and float(value).is_integer() else value
    try:
        number = float(str(value).strip())
    except ValueError:
        raise runner.UserError(f"{name}: write a number, or leave it empty for the automatic value; "
                               f"got {value!r}.") from None
    return int(number) if integer and number.is_integer() else number


def _seed(value):
    return _optional(value, "seed", integer=True)


def _window(value, name: str):
    """An injection-window "auto" field: empty -> None (the method's default), "0.8" -> a fraction of the steps,
    "3" -> a number of steps (as the API: a float is a fraction, an int a count)."""
    if isinstance(value, str) and value.strip() and not re.search(r"[.eE]", value):
        return _optional(value, name, integer=True)
    return _optional(value, name)


def _auto(label: str, elem_id: str | None = None):
    """A number field whose empty value means "automatic" (gr.Number cannot be empty in the browser)."""
    return gr.Textbox(label=label, placeholder="auto", elem_id=elem_id)


def _outcome(status: str, images=None, stats: str = "", files=None, picture=None) -> tuple:
    """A tab's answer: (status line, images, stats line, downloads, picture); empty outputs unless given."""
    return status, images, stats, files, picture


def _shown(picture: bool = False):
    """A tab's function always answers with its outputs: a cancelled run, a user error or an internal failure
    (logged with its traceback) becomes the status line, the other outputs empty. Tabs without a picture answer
    without its slot."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                outcome = function(*args, **kwargs)
            except Cancelled as stop:
                why = "" if stop.reason == "stop" else " (its client left)"
                logger.info("%s cancelled %s%s", function.__name__, stop.where, why)
                outcome = _outcome(f"**Cancelled {stop.where}**{why}; the pipeline is restored and nothing was "
                                   "saved.")
            except (ZeroEditError, FileNotFoundError) as error:
                outcome = _outcome(f"**Input error**: {str(error).splitlines()[0] or type(error).__name__}")
            except Exception as error:  # noqa: BLE001 — an internal failure: logged, said in one line, server goes on
                logger.exception("%s run failed", function.__name__)
                outcome = _outcome(f"**Internal error**: {type(error).__name__}: {error} (logged on the server)")
            return outcome if picture else outcome[:4]
        return wrapper
    return decorate


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:40] or "object"


def _save(image: Image.Image, folder: Path, name: str) -> str:
    path = folder / name
    image.save(path, format="PNG")
    return str(path)


def _size(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())


# ----------------------------------------------------------------------------------------- the app
class App:
    """The app's state (default model, device, run folders, the lock on the model, Stop flags) and one function
    per tab; `blocks()` lays them out."""

    def __init__(self, model: str | None = None, device=None, dtype=None, workdir: str | None = None,
                 max_runs: int = MAX_RUNS, max_bytes: int = MAX_BYTES, memory=None):
        self.model, self.device, self.dtype, self.memory = model or "toy", device, dtype, memory
        self.max_runs, self.max_bytes = max_runs, max_bytes
        self.owned = workdir is None  # a workdir the app made is removed on close and at exit
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="zeroedit-app-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.owned:
            atexit.register(self.close)
        self.lock = threading.Lock()
        self.flags: dict[tuple[str, str], threading.Event] = {}  # (session, tab) -> its Stop flag
        self.running: set[Path] = set()
        self.demo = None

    def close(self):
        """Remove the workdir if the app made it (`serve` does this on return; atexit at the latest)."""
        if self.owned:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ run folders
    def _prune(self):
        """Keep the newest run folders, at most max_runs − 1 within max_bytes, so the next run fits the limits;
        older ones are removed (their downloads stay in Gradio's cache for CACHE_SECONDS)."""
        runs = sorted((p for p in self.workdir.iterdir() if p.is_dir() and p not in self.running),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for index, run in enumerate(runs):
            total += _size(run)
            if index >= self.max_runs - 1 or total > self.max_bytes:
                shutil.rmtree(run, ignore_errors=True)

    @contextlib.contextmanager
    def _folder(self, method: str):
        """A fresh run folder (after pruning old ones); removed again if the run fails or is cancelled."""
        self._prune()
        folder = Path(tempfile.mkdtemp(prefix=f"{method}-", dir=self.workdir))
        self.running.add(folder)
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            self.running.discard(folder)

    # ------------------------------------------------------------------ Stop and the client
    @staticmethod
    def _key(method: str, request) -> tuple[str, str]:
        return getattr(request, "session_hash", None) or "local", method

    def start(self, method: str, request: gr.Request = None):
        """Run's first, instant event (in the browser): a fresh Stop flag for this tab (so Stop also reaches a
        run still waiting in the queue) and empty outputs (no result of the previous run stays on show)."""
        self.flags[self._key(method, request)] = threading.Event()
        return "Waiting for the model…", None, "", None, None

    def stop(self, method: str, request: gr.Request = None):
        """Ask this session's run of this tab to stop at its next step or denoiser call (also one still queued)."""
        flag = self.flags.get(self._key(method, request))
        if flag is not None:
            flag.set()

    def _client_gone(self):
        """A check, for the running event, that says whether its client is gone: Gradio's queue marks the event
        not alive when the client's stream disconnects (the page closed) and drops it from its active jobs when
        the client cancels it (gradio_client's `job.cancel()`); the queue then starts the next event. Outside a
        queued event (a direct call) it never says so."""
        from gradio.context import LocalContext
        queue, event_id = getattr(self.demo, "_queue", None), LocalContext.event_id.get(None)

        def event():
            for job in list(getattr(queue, "active_jobs", ())):
                for item in job or ():
                    if getattr(item, "_id", None) == event_id:
                        return item
            return None
        if event_id is None or event() is None:
            return lambda: False
        return lambda: (item := event()) is None or not item.alive

    # ------------------------------------------------------------------ shared steps
    def _run(self, method: str, model: str, config: dict, folder: Path, progress, request, after=None):
        """Resolve, load (cached), run with progress and Stop, write outputs + sidecar; (result, sidecar, extras,
        peak). `after(pipe, result, values, tracker)` draws extra pictures under the same lock."""
        key = self._key(method, request)
        flag = self.flags.setdefault(key, threading.Event())
        tracker = _Progress(method, progress, flag, self._client_gone())
        model = (model or self.model).strip()
        try:
            values = runner.resolve_arguments(method, {}, config, folder)
            tracker.check()  # Stop pressed while the run waited in the queue
            with self.lock, _Peak() as peak:
                if progress is not None:
                    progress(0, desc=f"loading {model}")
                pipe = runner.load_pipeline(model, method, self.device, self.dtype, True, self.memory, values)
                plan = getattr(pipe, "zeroedit_memory_plan", None)  # `memory=`: the plan applied on loading
                values = runner.with_plan_options(method, values, plan)
                tracker.plan(*_phases(method, values, pipe))
                with _before_model_calls(check_pipe(pipe), tracker.on_call):
                    result, stats = runner.execute(method, values, pipe, tracker.on_step)
                    extras = after(pipe, result, values, tracker) if after is not None else {}
        finally:
            if self.flags.get(key) is flag:
                del self.flags[key]
        sidecar = runner.save(result.images, stats, method, values, model, folder,
                              memory=None if plan is None else plan.to_dict())
        return result, sidecar, extras, peak

    @staticmethod
    def _report(folder: Path, sidecar: dict, peak: _Peak, pictures=()) -> tuple[str, list[str], str, list[str]]:
        """(status, output image paths, a stats line in Markdown, downloads: image(s), sidecar and a zip of the run
        folder). The zip holds the inputs; their loose copies are then removed (each upload kept once)."""
        images = [str(folder / name) for name in sidecar["outputs"]]
        stats = sidecar["stats"]
        calls, evals, seconds = stats["unet_calls"], stats["unet_evals"], stats["seconds"]
        if "reconstruction" in stats:  # invert: inversion + reconstruction
            calls += stats["reconstruction"]["unet_calls"]
            evals += stats["reconstruction"]["unet_evals"]
            seconds += stats["reconstruction"]["seconds"]
        with Image.open(images[0]) as first:
            output = first.size
        working = stats.get("params", {}).get("size")
        text = (f"**{calls} UNet calls** ({evals} sample-evaluations"
                + (f", {stats['unet_backward']} backward" if stats.get("unet_backward") else "") + ") · "
                f"**{seconds:.2f} s** · {peak.text()}"
                + (f" · seed {sidecar['seed']}" if sidecar.get("seed") is not None else "")
                + f" · model `{sidecar['model']}` · output **{output[0]}×{output[1]} px**"
                + (f" (working size {working[0]}×{working[1]} px)" if working and list(working) != list(output)
                   else ""))
        sidecar_file = folder / f"{sidecar['method']}.json"
        bundle = folder / f"{folder.name}.zip"
        with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.iterdir()):
                if file != bundle and file.is_file():
                    archive.write(file, file.name)
        kept = {*images, str(sidecar_file), str(bundle), *map(str, pictures)}
        for file in folder.iterdir():
            if file.is_file() and str(file) not in kept:
                file.unlink()
        count = len(images)
        status = f"**Done**: {count} image{'s' if count > 1 else ''} in {seconds:.1f} s."
        return status, images, text, images + [str(sidecar_file), str(bundle)]

    # ------------------------------------------------------------------ tabs
    @_shown()
    def compose(self, model, background, reference, reference_mask_file, box, prompt, domain, steps, seed, preset,
                order, tau_a, tau_b, guidance_scale, progress=gr.Progress(), request: gr.Request = None):
        """TF-ICON: the brushed (or boxed) region of the background receives the brushed object of the reference."""
        with self._folder("compose") as folder:
            background, region_mask = _editor(background, "background", folder, "background")
            reference, ref_mask = _editor(reference, "reference", folder, "reference")
            region = _box(box)
            if region is None:
                if region_mask is None:
                    raise runner.UserError("region: paint where the object goes on the background with the brush, "
                                           "or write a box x0,y0,x1,y1.")
                region = _save(region_mask, folder, "region.png")
            config = dict(background=background, reference=reference, region=region, prompt=prompt or "",
                          domain=domain, steps=steps, seed=_seed(seed), preset="reference" if preset else None,
                          order=int(order), tau_a=tau_a, tau_b=tau_b,
                          guidance_scale=_optional(guidance_scale, "guidance scale"))
            if ref_mask is not None:
                config["reference_mask"] = _save(ref_mask, folder, "reference_mask.png")
            elif reference_mask_file is not None:  # an uploaded mask, used as given (compose checks its size)
                config["reference_mask"] = _keep(reference_mask_file, "reference mask", folder, "reference_mask",
                                                 load_mask)
            _, sidecar, _, peak = self._run("compose", model, config, folder, progress, request)
            return _outcome(*self._report(folder, sidecar, peak))

    @_shown(picture=True)
    def translate(self, model, image, prompts, source_prompt, steps, guidance_scale, seed, preset, negative_prompt,
                  inversion_steps, feature_steps, attention_steps, source_cache, pca,
                  progress=gr.Progress(), request: gr.Request = None):
        """Plug-and-Play: one image per prompt line, keeping the structure; the PCA picture of the injected
        decoder features on request (at the working size translate inverted at, with its own progress)."""
        with self._folder("translate") as folder:
            lines = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
            config = dict(image=_keep(image, "image", folder, "image"),
                          prompt=lines if len(lines) > 1 else (lines or [""])[0],
                          source_prompt=source_prompt or "", steps=_optional(steps, "steps", integer=True),
                          guidance_scale=_optional(guidance_scale, "guidance scale"), seed=_seed(seed),
                          preset="reference" if preset else None, negative_prompt=negative_prompt or None,
                          inversion_steps=_optional(inversion_steps, "inversion steps", integer=True),
                          feature_steps=_window(feature_steps, "feature injection"),
                          attention_steps=_window(attention_steps, "self-attention injection"),
                          source_cache=source_cache)

            def draw(pipe, result, values, tracker):
                from . import visualize
                if not pca or is_flow(pipe):  # the PCA picture reads a UNet decoder layer
                    return {}
                steps = result.stats.params["steps"]
                tracker.enter("PCA picture", steps)
                picture = visualize.features_pca(pipe, values["image"], step=0, steps=steps,
                                                 prompt=values.get("source_prompt", ""), size=values.get("size"),
                                                 callback=lambda i, t, x: tracker.advance(i + 1))
                return {"picture": _save(picture, folder, "pca.png")}
            _, sidecar, extras, peak = self._run("translate", model, config, folder, progress, request, draw)
            picture = extras.get("picture")
            return _outcome(*self._report(folder, sidecar, peak, [picture] if picture else []), picture)

    @_shown()
    def edit(self, model, image, source, target, caption, steps, seed, preset, xa_guidance, guidance_scale, reg_steps,
             lambda_ac, lambda_kl, progress=gr.Progress(), request: gr.Request = None):
        """pix2pix-zero: move the image from the source concept to the target one."""
        with self._folder("edit") as folder:
            config = dict(image=_keep(image, "image", folder, "image"), source=source, target=target,
                          caption=caption or None, steps=steps, seed=_seed(seed),
                          preset="reference" if preset else None,
                          xa_guidance=_optional(xa_guidance, "cross-attention guidance"), guidance_scale=guidance_scale,
                          reg_steps=reg_steps, lambda_ac=lambda_ac, lambda_kl=lambda_kl)
            _, sidecar, _, peak = self._run("edit", model, config, folder, progress, request)
            return _outcome(*self._report(folder, sidecar, peak))

    @_shown(picture=True)
    def personalize(self, model, prompt, phrase1, image1, phrase2, image2, phrase3, image3, steps, scale, seed,
                    weighting, phrase_encoding, guidance_scale, negative_prompt, height, width,
                    progress=gr.Progress(), request: gr.Request = None):
        """MIP-Adapter: one reference image per object named in the prompt (up to MAX_REFERENCES); the
        relevance heatmaps show which reference went where."""
        pairs = [phrase1, image1, phrase2, image2, phrase3, image3]
        with self._folder("personalize") as folder:
            references = {}
            for phrase, image in zip(pairs[0::2], pairs[1::2]):
                phrase = (phrase or "").strip()
                if image is None and not phrase:
                    continue
                if image is None or not phrase:
                    raise runner.UserError(f"reference {phrase or '(no phrase)'}: give both the phrase it names in "
                                           "the prompt and its image.")
                references[phrase] = _keep(image, f"reference {phrase!r}", folder, f"reference-{_slug(phrase)}")
            if not references:
                raise runner.UserError("references: give at least one phrase of the prompt and its image.")
            config = dict(prompt=prompt or "", references=references, steps=steps,
                          scale=_optional(scale, "IP-Adapter scale"), seed=_seed(seed), weighting=weighting,
                          phrase_encoding=phrase_encoding, guidance_scale=_optional(guidance_scale, "guidance scale"),
                          negative_prompt=negative_prompt if negative_prompt else None,
                          height=_optional(height, "height", integer=True),
                          width=_optional(width, "width", integer=True))

            def draw(pipe, result, values, tracker):
                from . import visualize
                if result.extra.get("relevance_maps") is None:
                    return {}
                return {"picture": _save(visualize.relevance_heatmaps(result), folder, "relevance.png")}
            _, sidecar, extras, peak = self._run("personalize", model, config, folder, progress, request, draw)
            picture = extras.get("picture")
            return _outcome(*self._report(folder, sidecar, peak, [picture] if picture else []), picture)

    @_shown()
    def invert(self, model, image, method, prompt, steps, order, progress=gr.Progress(), request: gr.Request = None):
        """Invert the image to noise and sample it back; the stats add both passes, the text gives the PSNR."""
        with self._folder("invert") as folder:
            config = dict(image=_keep(image, "image", folder, "image"), method=method, prompt=prompt or "",
                          steps=steps, order=int(order))
            result, sidecar, _, peak = self._run("invert", model, config, folder, progress, request)
            source = np.asarray(load_image(config["image"]).resize(result.image.size), np.float64)
            error = np.mean((np.asarray(result.image.convert("RGB"), np.float64) - source) ** 2)
            psnr = 10 * np.log10(255.0 ** 2 / max(error, 1e-10))
            status, images, text, files = self._report(folder, sidecar, peak)
            return _outcome(status, images, f"{text} · reconstruction PSNR **{psnr:.1f} dB**", files)

    # ------------------------------------------------------------------ layout
    def blocks(self) -> gr.Blocks:
        with gr.Blocks(title="zeroedit", delete_cache=(3600, CACHE_SECONDS)) as demo:
            gr.Markdown("# zeroedit\nTraining-free diffusion editing: TF-ICON compose, Plug-and-Play translate, "
                        "pix2pix-zero edit, MIP-Adapter personalize, and the inversions under them. Every run "
                        "downloads as a folder whose `METHOD.json` reproduces it: `zeroedit METHOD --config "
                        "METHOD.json`.")
            model = gr.Dropdown(list(dict.fromkeys([self.model, *MODELS])), value=self.model, allow_custom_value=True,
                                label="model", info="toy (trained on coloured shapes, offline), tiny / tiny-xl "
                                "(random weights, for tests), toy-flow / tiny-sd3 / tiny-flux / tiny-flux2 / "
                                "tiny-qwen-image / tiny-z-image (SD3, FLUX.1, FLUX.2, Qwen-Image, Z-Image layouts), "
                                "a hub id or a local folder")
            with gr.Tab("compose", id="compose", elem_id="compose-tab"):
                self._compose_tab(model)
            with gr.Tab("translate", id="translate", elem_id="translate-tab"):
                self._translate_tab(model)
            with gr.Tab("edit", id="edit", elem_id="edit-tab"):
                self._edit_tab(model)
            with gr.Tab("personalize", id="personalize", elem_id="personalize-tab"):
                self._personalize_tab(model)
            with gr.Tab("invert", id="invert", elem_id="invert-tab"):
                self._invert_tab(model)
        self.demo = demo
        return demo

    @staticmethod
    def _seed():
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="seed", scale=4)
            dice = gr.Button("New seed", scale=1, min_width=60)  # words: no emoji font needed
        dice.click(lambda: random.randrange(2**31), None, seed, queue=False, api_visibility="private")
        return seed

    @staticmethod
    def _outputs(name: str, picture: str | None = None):
        """A tab's outputs: status line, result gallery (whole images, never cropped to square tiles), stats line,
        downloads, and the tab's picture."""
        with gr.Column():
            status = gr.Markdown(elem_id=f"{name}-status")
            images = gr.Gallery(label="result", columns=2, height="auto", object_fit="contain",
                                elem_id=f"{name}-result")
            stats = gr.Markdown(elem_id=f"{name}-stats")
            extra = gr.Image(label=picture, type="filepath", elem_id=f"{name}-picture") if picture else None
            files = gr.File(label="download: image, sidecar (METHOD.json) and the run folder (zip)",
                            file_count="multiple", elem_id=f"{name}-files")
        return [status, images, stats, files] + ([extra] if extra is not None else [])

    def _buttons(self, name: str, function, inputs, outputs):
        """Run: first an instant event (`start`: empty outputs, a fresh Stop flag), then the queued run. Stop:
        sets the flag on the server only; the run itself answers "Cancelled at step N of M"."""
        with gr.Row():
            run = gr.Button("Run", variant="primary", elem_id=f"{name}-run")
            stop = gr.Button("Stop", variant="stop", elem_id=f"{name}-stop")

        def start(request: gr.Request):
            return self.start(name, request)[:len(outputs)]

        def stop_run(request: gr.Request):
            self.stop(name, request)
        run.click(start, None, outputs, queue=False, show_progress="hidden", api_visibility="private").then(
            function, inputs, outputs, api_name=name, concurrency_id=CONCURRENCY, concurrency_limit=1)
        stop.click(stop_run, None, None, api_name=f"stop_{name}", queue=False)

    def _compose_tab(self, model):
        brush = gr.Brush(colors=["#ff3030"], color_mode="fixed")
        with gr.Row():
            with gr.Column():
                background = _undecoded(gr.ImageEditor(
                    type="filepath", label="background: paint the region where the object goes", brush=brush,
                    format="png", layers=False, transforms=(), sources=("upload", "clipboard"),
                    elem_id="compose-background"))
                reference = _undecoded(gr.ImageEditor(
                    type="filepath", label="reference: paint the object (nothing painted: all of it)", brush=brush,
                    format="png", layers=False, transforms=(), sources=("upload", "clipboard"),
                    elem_id="compose-reference"))
                prompt = gr.Textbox(label="prompt", placeholder="an oil painting of a panda in a forest",
                                    elem_id="compose-prompt")
                with gr.Row():
                    domain = gr.Radio(["cross", "same"], value=default("compose", "domain"), label="domain",
                                      info="cross: different visual domains; same: photorealistic")
                    steps = gr.Number(value=default("compose", "steps"), precision=0, label="steps",
                                      elem_id="compose-steps")
                seed = self._seed()
                preset = gr.Checkbox(label="reference preset (the published code: seed 3407, sampled VAE posterior)")
                with gr.Accordion("advanced", open=False):
                    box = gr.Textbox(label="region box x0,y0,x1,y1 in pixels (instead of painting)",
                                     elem_id="compose-box")
                    mask_file = _undecoded(gr.Image(type="filepath", label="reference mask file (instead of painting)",
                                                    sources=("upload", "clipboard"), elem_id="compose-mask-file"))
                    order = gr.Radio([1, 2], value=default("compose", "order"), label="DPM-Solver++ order")
                    tau_a = gr.Slider(0, 1, value=default("compose", "tau_a"), step=0.05,
                                      label="tau_a: composite self-attention injection (fraction of steps)")
                    tau_b = gr.Slider(0, 1, value=default("compose", "tau_b"), step=0.05,
                                      label="tau_b: background preservation (fraction of steps)")
                    guidance = _auto("guidance scale (empty: 5.0 cross, 2.5 same; FLUX 3.5)")
            outputs = self._outputs("compose")
        self._buttons("compose", self.compose, [model, background, reference, mask_file, box, prompt, domain, steps,
                                                seed, preset, order, tau_a, tau_b, guidance], outputs)

    def _translate_tab(self, model):
        with gr.Row():
            with gr.Column():
                image = _undecoded(gr.Image(type="filepath", label="image", sources=("upload", "clipboard"),
                                            elem_id="translate-image"))
                prompts = gr.Textbox(label="target prompt(s): one per line, one image each", lines=2,
                                     placeholder="a photo of a bronze horse", elem_id="translate-prompt")
                source_prompt = gr.Textbox(value=default("translate", "source_prompt"), label="source prompt")
                with gr.Row():  # empty fields: the method's defaults for the model's family (pnp.py, pnp_flow.py)
                    steps = _auto("steps (empty: 50; SD3/FLUX: 8, 25 with the preset)", elem_id="translate-steps")
                    guidance = _auto("guidance scale (empty: 7.5; FLUX 2.0, SD3 7.0)", elem_id="translate-guidance")
                seed = self._seed()
                preset = gr.Checkbox(label="reference preset (UNet: 999-step inversion, as the reference "
                                           "preprocessing; SD3/FLUX: RF-Solver-Edit's setting)")
                pca = gr.Checkbox(value=True, label="draw the PCA of the injected decoder features (one more "
                                                    "inversion; UNet models)")
                with gr.Accordion("advanced", open=False):
                    negative = gr.Textbox(label="negative prompt (empty: the reference's; SD3: none)")
                    inversion_steps = _auto("inversion steps (empty: = steps)")
                    feature = _auto("feature injection: a fraction of the steps (0.8) or a step count (3) "
                                    "(empty: 0.8; SD3/FLUX: 0, off)", elem_id="translate-feature")
                    attention = _auto("self-attention injection: a fraction of the steps or a step count "
                                      "(empty: 0.5; SD3/FLUX: 1 step, 3 with the preset)",
                                      elem_id="translate-attention")
                    cache = gr.Radio(["memory", "recompute"], value=default("translate", "source_cache"),
                                     label="source cache")
            outputs = self._outputs("translate", "PCA of the decoder features (structure that is kept)")
        self._buttons("translate", self.translate, [model, image, prompts, source_prompt, steps, guidance, seed, preset,
                                                    negative, inversion_steps, feature, attention, cache, pca], outputs)

    def _edit_tab(self, model):
        with gr.Row():
            with gr.Column():
                image = _undecoded(gr.Image(type="filepath", label="image", sources=("upload", "clipboard"),
                                            elem_id="edit-image"))
                with gr.Row():
                    source = gr.Textbox(value=default("edit", "source"), label="source concept", elem_id="edit-source")
                    target = gr.Textbox(value=default("edit", "target"), label="target concept", elem_id="edit-target")
                caption = gr.Textbox(label="caption (empty: 'a photo of a {source}')", elem_id="edit-caption")
                steps = gr.Number(value=default("edit", "steps"), precision=0, label="steps", elem_id="edit-steps")
                seed = self._seed()
                preset = gr.Checkbox(label="reference preset (a seeded sample of the VAE posterior, as the official code)")
                with gr.Accordion("advanced", open=False):
                    xa = _auto("cross-attention guidance (empty: 0.1, or 0.01 for v-prediction)")
                    guidance = gr.Number(value=default("edit", "guidance_scale"), label="guidance scale")
                    reg_steps = gr.Number(value=default("edit", "reg_steps"), precision=0,
                                          label="noise regularisation rounds per inversion step")
                    lambda_ac = gr.Number(value=default("edit", "lambda_ac"), label="lambda_ac (auto-correlation)")
                    lambda_kl = gr.Number(value=default("edit", "lambda_kl"), label="lambda_kl (KL)")
            outputs = self._outputs("edit")
        self._buttons("edit", self.edit, [model, image, source, target, caption, steps, seed, preset, xa, guidance,
                                          reg_steps, lambda_ac, lambda_kl], outputs)

    def _personalize_tab(self, model):
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="prompt (names every object below)", placeholder="a cat and a dog",
                                    elem_id="personalize-prompt")
                pairs = []
                for index in range(MAX_REFERENCES):
                    with gr.Row():
                        pairs.append(gr.Textbox(label=f"object {index + 1}: its phrase in the prompt", scale=2,
                                                elem_id=f"personalize-phrase{index + 1}"))
                        pairs.append(_undecoded(gr.Image(
                            type="filepath", label=f"object {index + 1}: reference image", height=160,
                            sources=("upload", "clipboard"), scale=3, elem_id=f"personalize-image{index + 1}")))
                with gr.Row():
                    steps = gr.Number(value=default("personalize", "steps"), precision=0, label="steps",
                                      elem_id="personalize-steps")
                    scale = _auto("IP-Adapter scale (empty: 0.75; FLUX 1.0)", elem_id="personalize-scale")
                seed = self._seed()
                with gr.Accordion("advanced", open=False):
                    weighting = gr.Radio(["relevance", "uniform"], value=default("personalize", "weighting"),
                                         label="weighting (uniform: plain IP-Adapter, the baseline)")
                    phrases = gr.Radio(["alone", "prompt"], value=default("personalize", "phrase_encoding"),
                                       label="phrase encoding (alone: the paper; prompt: zeroedit's variant; none "
                                             "chosen: alone on UNets, prompt on FLUX)")
                    guidance = _auto("guidance scale (empty: 5.0; FLUX 3.5)", elem_id="personalize-guidance")
                    negative = gr.Textbox(label="negative prompt (empty: the reference's; FLUX takes none)")
                    with gr.Row():
                        height = _auto("height in px (empty: the model's)")
                        width = _auto("width in px (empty: the model's)")
            outputs = self._outputs("personalize", "relevance: which reference went where")
        self._buttons("personalize", self.personalize, [model, prompt, *pairs, steps, scale, seed, weighting, phrases,
                                                        guidance, negative, height, width], outputs)

    def _invert_tab(self, model):
        with gr.Row():
            with gr.Column():
                image = _undecoded(gr.Image(type="filepath", label="image", sources=("upload", "clipboard"),
                                            elem_id="invert-image"))
                method = gr.Radio(list(INVERSIONS), value=default("invert", "method"),
                                  label="inversion (none chosen: ddim on UNets, fireflow on SD3/FLUX; ddim/dpmpp "
                                        "are UNet-only, euler/rf-solver/fireflow flow-only)")
                prompt = gr.Textbox(value=default("invert", "prompt"),
                                    label="prompt ('' , a text, or 'exceptional': TF-ICON's exceptional prompt)")
                with gr.Row():
                    steps = gr.Number(value=default("invert", "steps"), precision=0, label="steps",
                                      elem_id="invert-steps")
                    order = gr.Radio([1, 2], value=default("invert", "order"), label="order (dpmpp)")
            outputs = self._outputs("invert")
        self._buttons("invert", self.invert, [model, image, method, prompt, steps, order], outputs)


def build(model: str | None = None, device=None, dtype=None, workdir: str | None = None, max_runs: int = MAX_RUNS,
          max_bytes: int = MAX_BYTES, memory=None) -> tuple[gr.Blocks, App]:
    """The Blocks app (queued: one run at a time on the model) and its state; `memory`: a GPU budget ("24GB")
    planned for each run's method and size (zeroedit.memory)."""
    app = App(model, device, dtype, workdir, max_runs, max_bytes, memory)
    demo = app.blocks()
    demo.queue(default_concurrency_limit=1)
    return demo, app


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 7860, share: bool = False, device=None,
          dtype=None, block: bool = True, workdir: str | None = None, max_runs: int = MAX_RUNS,
          max_bytes: int = MAX_BYTES, memory=None):
    """Start the app (`zeroedit app`); block=False returns the running Blocks (tests close it), its state as
    `demo.zeroedit`. Blocking, the workdir the app made is removed when the server stops (else at exit)."""
    demo, app = build(model, device, dtype, workdir, max_runs, max_bytes, memory)
    demo.zeroedit = app
    demo.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(app.workdir)],
                prevent_thread_lock=True, quiet=True)
    if block:
        where = "this machine only; --host 0.0.0.0 opens it to the network" if host in ("127.0.0.1", "localhost") \
            else "reachable from other machines at this host's address"
        print(f"zeroedit app: {demo.local_url} ({where})" + (f"; public link: {demo.share_url}" if share else "")
              + f"; model {app.model}; runs in {app.workdir} (the newest {app.max_runs} runs, at most "
              f"{app.max_bytes / 2**20:.0f} MiB; removed on exit); Ctrl-C stops", flush=True)
        try:
            demo.block_thread()
        finally:
            app.close()
    return demo
