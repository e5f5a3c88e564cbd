"""`zeroedit app`: a Gradio web app with one tab per method (compose, translate, edit, personalize) and one for
invert/reconstruct, on the same runner as the command line.

    zeroedit app                          # the embedded toy model, offline, on http://127.0.0.1:7860
    zeroedit app --model tiny --host 0.0.0.0 --port 8080

Each run goes through `runner` exactly as `zeroedit METHOD` does: the form's values are resolved into the API's
arguments, the model is loaded once per process (`runner.load_pipeline`), the method runs and its images and
JSON sidecar are written into a fresh run folder beside copies of the inputs, so the download (a zip of that
folder) reproduces the image with `zeroedit METHOD --config METHOD.json`.

Runs share one model: every run event is queued in one concurrency group of size 1, and a lock serialises the
work on the pipeline. Progress comes from the methods' step callback (`callback_on_step_end`; invert: its
inversion callback); "Stop" sets the session's cancel flag, the callback raises at the next step (a forward
pre-hook on the denoiser, the UNet or the SD3/FLUX transformer, raises before its next call, so the inversion
phases stop too), the method restores the pipeline's processors as on any exception, and the app says where
it stopped. A user error (no image, a mask of another size, steps 0, ...) is shown as the library's message
(`gr.Error`), never a traceback; an internal failure is logged on the server and shown in one line. The server
keeps serving either way. A parameter whose API default is None (resolved by the method per model family:
UNet, SD3, FLUX) is an "auto" field: left empty it reaches the method as None; its label says what that means.
"""
import contextlib
import functools
import inspect
import logging
import os
import random
import re
import tempfile
import threading
import time
import zipfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from . import runner  # noqa: E402
from .backbones import check_pipe, is_flow  # noqa: E402
from .invert import METHODS as INVERSIONS  # noqa: E402
from .errors import ZeroEditError  # noqa: E402

logger = logging.getLogger(__name__)
MODELS = ("toy", "tiny", "tiny-xl", "toy-flow", "tiny-sd3", "tiny-flux")
MAX_REFERENCES = 3
CONCURRENCY = "model"  # every run event shares one queue slot: one model, one run at a time


class Cancelled(Exception):
    """Raised inside the step callback (or before a denoiser call) when the user pressed Stop."""


@contextlib.contextmanager
def _stop_before_model_calls(denoiser, flag: threading.Event, on_call=None):
    """While a run is on, every forward of the denoiser (the UNet, or the SD3/FLUX transformer) first checks the
    Stop flag (a forward pre-hook, removed after): Stop also ends the phases without a step callback (the
    inversions, the PCA picture) within one call. `on_call()` runs before each call (the progress of those
    phases)."""
    def check(module, args):
        if flag.is_set():
            raise Cancelled()
        if on_call is not None:
            on_call()
    handle = denoiser.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


def default(method: str, name: str):
    """The API default of a method's argument (the paper's value), so the form never repeats a number. None means
    "resolved by the method" (per model family): its field is an `_auto` one, never a Slider/Number."""
    value = runner.parameters(method)[name].default
    return None if value is inspect.Parameter.empty else value


# ----------------------------------------------------------------------------------------- inputs
def _picture(value, what: str) -> Image.Image:
    """An uploaded image (PIL) as RGB, or a user error naming the missing input."""
    if value is None:
        raise runner.UserError(f"{what}: upload an image (or paste one) first.")
    return value.convert("RGB")


def _editor(value, what: str) -> tuple[Image.Image, Image.Image | None]:
    """An ImageEditor value -> (its background image, the brushed mask (white where painted) or None)."""
    background = value.get("background") if isinstance(value, dict) else None
    picture = _picture(background, what)
    painted = None
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        if alpha.shape != (picture.height, picture.width):
            alpha = np.asarray(Image.fromarray(alpha).resize(picture.size, Image.NEAREST))
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return picture, None
    return picture, Image.fromarray(painted.astype(np.uint8) * 255)


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


def _shown(function):
    """A tab's function: user errors raised while reading the form become the app's message (gr.Error)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ZeroEditError as error:
            raise gr.Error(str(error).splitlines()[0], title="Input error", print_exception=False) from None
    return wrapper


def _save(image: Image.Image, folder: Path, name: str) -> str:
    path = folder / name
    image.save(path, format="PNG")
    return str(path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:40] or "object"


# ----------------------------------------------------------------------------------------- the app
class App:
    """The app's state (default model, device, run folders, the lock on the model, cancel flags) and one
    function per tab; `blocks()` lays them out."""

    def __init__(self, model: str | None = None, device=None, dtype=None, workdir: str | None = None):
        self.model, self.device, self.dtype = model or "toy", device, dtype
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="zeroedit-app-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.cancel_flags: dict[str, threading.Event] = {}

    # ------------------------------------------------------------------ shared steps
    def _folder(self, method: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{method}-", dir=self.workdir))

    def _run(self, method: str, model: str, config: dict, folder: Path, progress, request, after=None):
        """Resolve, load (cached), run with progress and cancel, write outputs + sidecar; (result, sidecar,
        extras). `after(pipe, result, values)` draws extra pictures under the same lock. User errors become
        gr.Error with the library's message."""
        session = getattr(request, "session_hash", None) or "local"
        flag = self.cancel_flags[session] = threading.Event()
        model = (model or self.model).strip()
        seen, total = {"step": 0, "calls": 0, "shown": 0.0}, None
        try:
            values = runner.resolve_arguments(method, {}, config, folder)
            total = values.get("steps") or default(method, "steps")  # None: the method resolves it (per family)

            def callback(pipe, step, timestep, kwargs):
                if flag.is_set():
                    raise Cancelled()
                seen["step"] = step + 1
                if progress is not None:
                    progress((step + 1, total), desc=f"{method}: step", unit="steps")
                return kwargs

            def on_call():  # the phases without a step callback: count UNet calls (at most 5 updates a second)
                seen["calls"] += 1
                now = time.monotonic()
                finishing = total is not None and seen["step"] >= total
                if progress is not None and (seen["step"] == 0 or finishing) and now - seen["shown"] > 0.2:
                    seen["shown"] = now
                    phase = "inverting" if seen["step"] == 0 else "finishing"
                    progress((seen["calls"], None), desc=f"{method}: {phase}", unit="UNet calls")

            with self.lock:
                if progress is not None:
                    progress(0, desc=f"loading {model}")
                pipe = runner.load_pipeline(model, method, self.device, self.dtype)
                with _stop_before_model_calls(check_pipe(pipe), flag, on_call):
                    result, stats = runner.execute(method, values, pipe, callback)
                    extras = after(pipe, result, values) if after is not None else {}
            sidecar = runner.save(result.images, stats, method, values, model, folder)
            return result, sidecar, extras
        except Cancelled:
            of = f" of {total}" if total else ""
            raise gr.Error(f"Cancelled at step {seen['step']}{of}; the pipeline is restored.",
                           title="Cancelled", print_exception=False) from None
        except (ZeroEditError, FileNotFoundError) as error:
            raise gr.Error(str(error).splitlines()[0] or type(error).__name__, title="Input error",
                           print_exception=False) from None
        except gr.Error:
            raise
        except Exception as error:  # noqa: BLE001 — an internal failure: logged, shown in one line, server goes on
            logger.exception("%s run failed", method)
            raise gr.Error(f"internal error: {type(error).__name__}: {error}", title="Internal error",
                           print_exception=False) from None  # logged above, with its traceback
        finally:
            if self.cancel_flags.get(session) is flag:
                del self.cancel_flags[session]

    def stop(self, request: gr.Request = None):
        """Ask the session's running job to stop at its next step."""
        flag = self.cancel_flags.get(getattr(request, "session_hash", None) or "local")
        if flag is not None:
            flag.set()

    @staticmethod
    def _report(folder: Path, sidecar: dict) -> tuple[list[str], str, list[str]]:
        """(output image paths, a stats line in Markdown, downloads: image(s), sidecar and a zip of the run)."""
        images = [str(folder / name) for name in sidecar["outputs"]]
        stats = sidecar["stats"]
        calls, evals = stats["unet_calls"], stats["unet_evals"]
        seconds, peak = stats["seconds"], stats["peak_memory_bytes"]
        if "reconstruction" in stats:  # invert: inversion + reconstruction
            calls += stats["reconstruction"]["unet_calls"]
            evals += stats["reconstruction"]["unet_evals"]
            seconds += stats["reconstruction"]["seconds"]
            peak = max(peak, stats["reconstruction"]["peak_memory_bytes"])
        params = stats.get("params", {})
        size = params.get("size") or ([params["width"], params["height"]] if "width" in params else None)
        text = (f"**{calls} UNet calls** ({evals} sample-evaluations"
                + (f", {stats['unet_backward']} backward" if stats.get("unet_backward") else "") + ") · "
                f"**{seconds:.2f} s** · peak memory **{peak / 2**20:.0f} MiB**"
                + (f" · seed {sidecar['seed']}" if sidecar.get("seed") is not None else "")
                + f" · model `{sidecar['model']}`" + (f" · {size[0]}×{size[1]} px" if size else ""))
        bundle = folder / f"{folder.name}.zip"
        with zipfile.ZipFile(bundle, "w") as archive:
            for file in sorted(folder.iterdir()):
                if file != bundle and file.is_file():
                    archive.write(file, file.name)
        return images, text, images + [str(folder / f"{sidecar['method']}.json"), str(bundle)]

    # ------------------------------------------------------------------ tabs
    @_shown
    def compose(self, model, background, reference, reference_mask_file, box, prompt, domain, steps, seed, preset,
                order, tau_a, tau_b, guidance_scale, progress=gr.Progress(), request: gr.Request = None):
        """TF-ICON: the brushed (or boxed) region of the background receives the brushed object of the reference."""
        folder = self._folder("compose")
        picture, region_mask = _editor(background, "background")
        ref, ref_mask = _editor(reference, "reference")
        region = _box(box)
        if region is None:
            if region_mask is None:
                raise runner.UserError("region: paint where the object goes on the background with the brush, "
                                       "or write a box x0,y0,x1,y1.")
            region = _save(region_mask, folder, "region.png")
        if ref_mask is None and reference_mask_file is not None:
            ref_mask = reference_mask_file  # an uploaded mask, used as given (its size is checked by compose)
        config = dict(background=_save(picture, folder, "background.png"), reference=_save(ref, folder, "reference.png"),
                      region=region, prompt=prompt or "", domain=domain, steps=steps, seed=_seed(seed),
                      preset="reference" if preset else None, order=int(order), tau_a=tau_a, tau_b=tau_b,
                      guidance_scale=_optional(guidance_scale, "guidance scale"))
        if ref_mask is not None:
            config["reference_mask"] = _save(ref_mask, folder, "reference_mask.png")
        _, sidecar, _ = self._run("compose", model, config, folder, progress, request)
        return self._report(folder, sidecar)

    @_shown
    def translate(self, model, image, prompts, source_prompt, steps, guidance_scale, seed, preset, negative_prompt,
                  inversion_steps, feature_steps, attention_steps, source_cache, pca,
                  progress=gr.Progress(), request: gr.Request = None):
        """Plug-and-Play: one image per prompt line, keeping the structure; the PCA picture of the injected
        decoder features on request."""
        folder = self._folder("translate")
        picture = _picture(image, "image")
        lines = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
        config = dict(image=_save(picture, folder, "image.png"), prompt=lines if len(lines) > 1 else (lines or [""])[0],
                      source_prompt=source_prompt or "", steps=_optional(steps, "steps", integer=True),
                      guidance_scale=_optional(guidance_scale, "guidance scale"), seed=_seed(seed),
                      preset="reference" if preset else None, negative_prompt=negative_prompt or None,
                      inversion_steps=_optional(inversion_steps, "inversion steps", integer=True),
                      feature_steps=_window(feature_steps, "feature injection"),
                      attention_steps=_window(attention_steps, "self-attention injection"), source_cache=source_cache)

        def draw(pipe, result, values):
            from . import visualize
            if not pca or is_flow(pipe):  # the PCA picture reads a UNet decoder layer
                return {}
            picture = visualize.features_pca(pipe, values["image"], step=0, steps=result.stats.params["steps"],
                                             prompt=values.get("source_prompt", ""))
            return {"picture": _save(picture, folder, "pca.png")}
        _, sidecar, extras = self._run("translate", model, config, folder, progress, request, draw)
        return (*self._report(folder, sidecar), extras.get("picture"))

    @_shown
    def edit(self, model, image, source, target, caption, steps, seed, preset, xa_guidance, guidance_scale, reg_steps,
             lambda_ac, lambda_kl, progress=gr.Progress(), request: gr.Request = None):
        """pix2pix-zero: move the image from the source concept to the target one."""
        folder = self._folder("edit")
        picture = _picture(image, "image")
        config = dict(image=_save(picture, folder, "image.png"), source=source, target=target,
                      caption=caption or None, steps=steps, seed=_seed(seed), preset="reference" if preset else None,
                      xa_guidance=_optional(xa_guidance, "cross-attention guidance"), guidance_scale=guidance_scale,
                      reg_steps=reg_steps, lambda_ac=lambda_ac, lambda_kl=lambda_kl)
        _, sidecar, _ = self._run("edit", model, config, folder, progress, request)
        return self._report(folder, sidecar)

    @_shown
    def personalize(self, model, prompt, phrase1, image1, phrase2, image2, phrase3, image3, steps, scale, seed,
                    weighting, phrase_encoding, guidance_scale, negative_prompt, height, width,
                    progress=gr.Progress(), request: gr.Request = None):
        """MIP-Adapter: one reference image per object named in the prompt (up to MAX_REFERENCES); the
        relevance heatmaps show which reference went where."""
        pairs = [phrase1, image1, phrase2, image2, phrase3, image3]
        folder = self._folder("personalize")
        references = {}
        for phrase, image in zip(pairs[0::2], pairs[1::2]):
            phrase = (phrase or "").strip()
            if image is None and not phrase:
                continue
            if image is None or not phrase:
                raise runner.UserError(f"reference {phrase or '(no phrase)'}: give both the phrase it names in the "
                                       "prompt and its image.")
            references[phrase] = _save(image.convert("RGB"), folder, f"reference-{_slug(phrase)}.png")
        if not references:
            raise runner.UserError("references: give at least one phrase of the prompt and its image.")
        config = dict(prompt=prompt or "", references=references, steps=steps, scale=_optional(scale, "IP-Adapter scale"),
                      seed=_seed(seed), weighting=weighting, phrase_encoding=phrase_encoding,
                      guidance_scale=_optional(guidance_scale, "guidance scale"),
                      negative_prompt=negative_prompt if negative_prompt else None,
                      height=_optional(height, "height", integer=True),
                      width=_optional(width, "width", integer=True))

        def draw(pipe, result, values):
            from . import visualize
            if result.extra.get("relevance_maps") is None:
                return {}
            return {"picture": _save(visualize.relevance_heatmaps(result), folder, "relevance.png")}
        _, sidecar, extras = self._run("personalize", model, config, folder, progress, request, draw)
        return (*self._report(folder, sidecar), extras.get("picture"))

    @_shown
    def invert(self, model, image, method, prompt, steps, order, progress=gr.Progress(), request: gr.Request = None):
        """Invert the image to noise and sample it back; the stats add both passes, the text gives the PSNR."""
        folder = self._folder("invert")
        picture = _picture(image, "image")
        config = dict(image=_save(picture, folder, "image.png"), method=method, prompt=prompt or "", steps=steps,
                      order=int(order))
        result, sidecar, _ = self._run("invert", model, config, folder, progress, request)
        images, text, files = self._report(folder, sidecar)
        source = np.asarray(Image.open(folder / "image.png").convert("RGB").resize(result.image.size), np.float64)
        error = np.mean((np.asarray(result.image.convert("RGB"), np.float64) - source) ** 2)
        psnr = 10 * np.log10(255.0 ** 2 / max(error, 1e-10))
        return images, f"{text} · reconstruction PSNR **{psnr:.1f} dB**", files

    # ------------------------------------------------------------------ layout
    def blocks(self) -> gr.Blocks:
        with gr.Blocks(title="zeroedit") as demo:
            gr.Markdown("# zeroedit\nTraining-free diffusion editing: TF-ICON compose, Plug-and-Play translate, "
                        "pix2pix-zero edit, MIP-Adapter personalize, and the inversions under them. Every run "
                        "downloads as a folder whose `METHOD.json` reproduces it: `zeroedit METHOD --config "
                        "METHOD.json`.")
            model = gr.Dropdown(list(dict.fromkeys([self.model, *MODELS])), value=self.model, allow_custom_value=True,
                                label="model", info="toy (trained on coloured shapes, offline), tiny / tiny-xl "
                                "(random weights, for tests), toy-flow / tiny-sd3 / tiny-flux (SD3/FLUX layouts), "
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
        return demo

    @staticmethod
    def _seed():
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="seed", scale=4)
            dice = gr.Button("🎲 new seed", scale=1, min_width=60)
        dice.click(lambda: random.randrange(2**31), None, seed, queue=False, api_visibility="private")
        return seed

    @staticmethod
    def _outputs(name: str, picture: str | None = None):
        with gr.Column():
            images = gr.Gallery(label="result", columns=2, height="auto", elem_id=f"{name}-result")
            stats = gr.Markdown(elem_id=f"{name}-stats")
            extra = gr.Image(label=picture, type="filepath", elem_id=f"{name}-picture") if picture else None
            files = gr.File(label="download: image, sidecar (METHOD.json) and the run folder (zip)",
                            file_count="multiple", elem_id=f"{name}-files")
        return [images, stats, files] + ([extra] if extra is not None else [])

    def _buttons(self, name: str, function, inputs, outputs):
        with gr.Row():
            run = gr.Button("Run", variant="primary", elem_id=f"{name}-run")
            stop = gr.Button("Stop", variant="stop", elem_id=f"{name}-stop")
        event = run.click(function, inputs, outputs, api_name=name, concurrency_id=CONCURRENCY, concurrency_limit=1)
        stop.click(self.stop, None, None, api_name=f"stop_{name}", queue=False, cancels=[event])

    def _compose_tab(self, model):
        brush = gr.Brush(colors=["#ff3030"], color_mode="fixed")
        with gr.Row():
            with gr.Column():
                background = gr.ImageEditor(type="pil", label="background: paint the region where the object goes",
                                            brush=brush, format="png", layers=False, transforms=(),
                                            sources=("upload", "clipboard"), elem_id="compose-background")
                reference = gr.ImageEditor(type="pil", label="reference: paint the object (nothing painted: all of it)",
                                           brush=brush, format="png", layers=False, transforms=(),
                                           sources=("upload", "clipboard"), elem_id="compose-reference")
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
                    mask_file = gr.Image(type="pil", image_mode="L", label="reference mask file (instead of painting)",
                                         sources=("upload", "clipboard"), elem_id="compose-mask-file")
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
                image = gr.Image(type="pil", label="image", sources=("upload", "clipboard"), elem_id="translate-image")
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
                image = gr.Image(type="pil", label="image", sources=("upload", "clipboard"), elem_id="edit-image")
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
                        pairs.append(gr.Image(type="pil", label=f"object {index + 1}: reference image", height=160,
                                              sources=("upload", "clipboard"), scale=3,
                                              elem_id=f"personalize-image{index + 1}"))
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
                image = gr.Image(type="pil", label="image", sources=("upload", "clipboard"), elem_id="invert-image")
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


def build(model: str | None = None, device=None, dtype=None, workdir: str | None = None) -> tuple[gr.Blocks, App]:
    """The Blocks app (queued: one run at a time on the model) and its state."""
    app = App(model, device, dtype, workdir)
    demo = app.blocks()
    demo.queue(default_concurrency_limit=1)
    return demo, app


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 7860, share: bool = False, device=None,
          dtype=None, block: bool = True):
    """Start the app (`zeroedit app`); block=False returns the running Blocks (tests close it)."""
    demo, app = build(model, device, dtype)
    demo.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(app.workdir)],
                prevent_thread_lock=True, quiet=True)
    if block:
        where = "this machine only; --host 0.0.0.0 opens it to the network" if host in ("127.0.0.1", "localhost") \
            else "reachable from other machines at this host's address"
        print(f"zeroedit app: {demo.local_url} ({where})" + (f"; public link: {demo.share_url}" if share else "")
              + f"; model {app.model}; runs in {app.workdir}; Ctrl-C stops", flush=True)
        demo.block_thread()
    return demo
