"""The one runner under every entry point (cli, batch, demo, app): resolve arguments, load the pipeline once
per process, run a method, write its images and JSON sidecar atomically.

    values = resolve_arguments("translate", flags, config, base)   # config + flags -> the API's values
    sidecar = run_method("translate", values, "toy", Path("out"))   # load (cached), run, write out/translate.*

Layering: entry points -> runner -> methods (imported lazily, when a run needs them). This module never
imports cli, batch, demo or app.

Output names: one image is `NAME.png`, several are `NAME~0.png`, `NAME~1.png`, ...; the sidecar is `NAME.json`.
`~` (SEPARATOR) never appears in a name (batch ids are made of letters, digits, `.`, `_`, `-`), so the outputs
of two different names can never collide.
"""
from __future__ import annotations

import codecs
import functools
import inspect
import json
import logging
import os
import random
import re
import tempfile
import threading
from importlib import resources
from pathlib import Path

from .errors import ParameterError, ZeroEditError, shorten

METHODS = ("compose", "translate", "edit", "personalize", "invert")
# The model each method's paper used (hub ids; offline, pass a local folder or tiny/tiny-xl/toy).
DEFAULT_MODELS = {"compose": "stabilityai/stable-diffusion-2-1-base", "translate": "stabilityai/stable-diffusion-2-1-base",
                  "edit": "CompVis/stable-diffusion-v1-4", "personalize": "stabilityai/stable-diffusion-xl-base-1.0",
                  "invert": "stabilityai/stable-diffusion-2-1-base", "direction": "CompVis/stable-diffusion-v1-4"}
IMAGE_ARGS = {"image", "background", "reference", "reference_mask", "layout"}
PATH_ARGS = IMAGE_ARGS | {"mip_weights", "sentences"}
BOX_ARGS = {"region", "mask"}  # a box "x0,y0,x1,y1" (or four numbers), a mask image or a phrase
PHRASE_ARGS = {"reference_mask", "region", "mask"}  # "auto" or words naming an object reach the API unchanged
SKIPPED = {"pipe", "callback_on_step_end", "captioner", "output_type", "callback"}
RUN_KEYS = {"model", "out", "quiet", "device", "dtype", "method", "id", "memory"}  # config keys that are not API arguments
SEPARATOR = "~"  # NAME~i.png for the i-th of several images; never part of a name
_STALE_TMP = re.compile(r"^\..+\.tmp\d+$")  # write_atomically's temporary files
CONFIG_VALUES = 10_000  # most values (list items, keys, leaves) a config may hold once YAML aliases are expanded


class _Notices(logging.Filter):
    """Drops third-party notices that say nothing to a zeroedit user, so that a user error stays one line (the entry
    points install it; the library leaves logging to its caller): `NOTICES`."""

    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record):
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


NOTICES = {  # logger -> message fragments dropped
    # transformers >= 5.25: its image processors fall back to PIL without torchvision (zeroedit never uses it)
    "transformers.utils.import_utils": ("requires torchvision (not installed)",),
    # torchao (the quant extra) beside a torch its compiled kernels were not built for: its CUDA-only kernels and
    # the checkpoint classes diffusers looks for are missing; zeroedit's int8 path does not use them
    "torchao": ("Failed to load", "Skipping import of cpp extensions"),
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
}
for _logger, _fragments in NOTICES.items():
    logging.getLogger(_logger).addFilter(_Notices(_fragments))


class UserError(ParameterError):
    """A bad command line, config, jobs file or form."""


def asset(name: str) -> Path:
    """Path of a bundled sample image (src/zeroedit/assets, drawn by scripts/make_assets.py)."""
    return Path(str(resources.files("zeroedit") / "assets" / name))


def method_function(name: str):
    """The API function of a method name (invert: `zeroedit.invert`)."""
    import zeroedit as ze
    if name not in METHODS:
        raise UserError(f"unknown method {shorten(name)}; use one of {', '.join(METHODS)}.")
    return getattr(ze, name)


def parameters(method: str) -> dict[str, inspect.Parameter]:
    """The method's user-facing parameters (name -> inspect.Parameter), in signature order."""
    return dict(_parameters(method_function(method)))


@functools.lru_cache(maxsize=None)
def _parameters(function) -> dict[str, inspect.Parameter]:
    """`parameters` of one function, read once (a batch resolves 100,000 jobs' arguments in seconds)."""
    return {n: p for n, p in inspect.signature(function).parameters.items() if n not in SKIPPED}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------------------- values
def _is_phrase(name: str, value, base: Path | None = None) -> bool:
    """A mask/region value that is "auto" or words naming an object (zeroedit.masks.is_phrase), not a box."""
    from .masks import is_phrase
    return name in PHRASE_ARGS and isinstance(value, str) and is_phrase(value, base) and \
        not (name in BOX_ARGS and value.count(",") == 3)


def _is_path_arg(name: str, value) -> bool:
    name = "region" if name == "regions" else name
    if _is_phrase(name, value):
        return False
    return name in PATH_ARGS or (name == "direction" and isinstance(value, str)) or \
        (name in BOX_ARGS and isinstance(value, str) and value.count(",") != 3)


def _numbers(values) -> tuple | None:
    """("32", "32", "96", "96") or (32, 32, 96, 96) -> a tuple of 4 floats/ints, else None."""
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        return None
    out = []
    for v in values:
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, float)):
            out.append(v)
            continue
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            return None
    return tuple(out)


def parse_value(name: str, value, base: Path | None = None, typed: bool = False):
    """A flag/config value -> the API's value: paths resolved against `base` (the config's folder), boxes
    "x0,y0,x1,y1" (or four numbers), references "phrase=img[,img]", regions "phrase=box|mask|words", masks and
    regions that are "auto" or words naming an object (not a file, no image suffix) unchanged, JSON for
    numbers/lists/null (flags only: `typed` values, from a config file, a job or a form, keep their strings)."""
    if value is None:
        return None

    def path(v):
        p = Path(os.path.expanduser(str(v)))
        return str(p if p.is_absolute() or base is None else (base / p))
    if name in PHRASE_ARGS and isinstance(value, list) and name not in BOX_ARGS:
        return [parse_value(name, v, base, typed) for v in value]
    if _is_phrase(name, value, base):
        return value
    if name in PATH_ARGS or (name == "direction" and isinstance(value, str)):
        return [path(v) for v in value] if isinstance(value, list) else path(value)
    if name in BOX_ARGS:
        box = _numbers(value)
        if box is not None:
            return box
        if isinstance(value, list) and value and all(re.fullmatch(r"-?[\d.]+", str(v)) for v in value):
            raise UserError(f"{flag(name)} {' '.join(map(str, value))}: a box is four numbers x0 y0 x1 y1 (or x0,y0,x1,y1).")
        if isinstance(value, str) and value.count(",") == 3:
            box = _numbers(value.split(","))
            if box is None:
                raise UserError(f"{flag(name)} {shorten(value)}: give x0,y0,x1,y1 in pixels, a mask image or words naming an "
                                "object.")
            return box
        return [parse_value(name, v, base, typed) for v in value] if isinstance(value, list) else path(value)
    if name == "regions":
        items = value.items() if isinstance(value, dict) else \
            [item.split("=", 1) if "=" in item else (item, None) for item in (value if isinstance(value, list) else [value])]
        for phrase, region in items:
            if region is None:
                raise UserError(f"--regions {shorten(phrase)}: write phrase=x0,y0,x1,y1, phrase=mask.png or phrase=\"words\".")
        return {phrase: parse_value("region", region, base, typed) for phrase, region in items}
    if name == "references":
        if isinstance(value, dict):
            return {k: [path(v) for v in vs] if isinstance(vs, list) else path(vs) for k, vs in value.items()}
        out = {}
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or "=" not in item:
                raise UserError(f"--references {shorten(item)}: write phrase=image.png (several: phrase=a.png,b.png).")
            phrase, images = item.split("=", 1)
            files = [path(v) for v in images.split(",")]
            out[phrase] = files if len(files) > 1 else files[0]
        return out
    if isinstance(value, str) and not typed:
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def map_paths(values: dict, function) -> dict:
    """A copy of resolved `values` with `function` applied to every file path in them."""
    def one(name, value):
        if isinstance(value, dict):
            return {k: one(name, v) for k, v in value.items()}
        if isinstance(value, list):
            return [one(name, v) for v in value]
        return function(value) if isinstance(value, str) and _is_path_arg(name, value) else value
    return {name: one(name, value) for name, value in values.items()}


def missing_files(values: dict) -> list[str]:
    """The file paths among resolved `values` (those `map_paths` visits) that do not exist."""
    missing = []
    map_paths(values, lambda path: path if os.path.exists(path) else missing.append(path))
    return missing


def read_text(path: Path, what: str) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped); undecodable bytes are a UserError naming
    the file, the line and the byte offset."""
    data = Path(path).read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = start + error.start
        line = data.count(b"\n", 0, offset) + 1
        raise UserError(f"{what} {str(path)!r} is not UTF-8 text: line {line}, byte "
                        f"{offset} (0x{data[offset]:02x}) cannot be decoded; save the file as UTF-8 (e.g. "
                        "`iconv -f latin1 -t utf-8 FILE > NEW`).") from None


def expanded_size(value, limit: int = CONFIG_VALUES, _seen: dict | None = None) -> int:
    """How many values (containers, keys and leaves) `value` holds with every shared reference counted at each
    use, as a YAML alias is expanded; stops counting past `limit` (a self-containing value counts as past it).
    Shared parts are counted once each (memo), so an alias bomb is measured in microseconds."""
    seen = {} if _seen is None else _seen
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) in seen:
        return seen[id(value)]
    seen[id(value)] = limit + 1  # until counted: a value that contains itself is past any limit
    total = 1
    for item in (x for pair in value.items() for x in pair) if isinstance(value, dict) else value:
        total += expanded_size(item, limit, seen)
        if total > limit:
            break
    seen[id(value)] = total
    return total


def read_config(path: str) -> tuple[dict, Path]:
    """Keys of a YAML/JSON config (or of a sidecar's "args"), and the folder relative paths start from.
    PyYAML's safe loader; a config holding more than CONFIG_VALUES values once its aliases are expanded (an
    alias bomb loads as a few shared lists, but every use of it, a message or a sidecar, would expand it) or a
    value that contains itself is refused."""
    import yaml
    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file {shorten(path)} does not exist.")
    text = read_text(file, "config file")
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError) as error:  # RecursionError: nested too deeply
        raise UserError(f"config file {shorten(path)} is not valid YAML/JSON: {str(error).splitlines()[0]}") from None
    if expanded_size(data) > CONFIG_VALUES:
        raise UserError(f"config file {shorten(path)} holds more than {CONFIG_VALUES} values once its YAML aliases "
                        "(*name) are expanded, or a value that contains itself: write the values out.")
    if not isinstance(data, dict):
        raise UserError(f"config file {shorten(path)} must hold a mapping of argument names to values.")
    if "args" in data and "method" in data:  # a sidecar (with its memory budget, when a plan was applied)
        if not isinstance(data["args"], dict):
            raise UserError(f"config file {shorten(path)}: a sidecar's \"args\" must be a mapping of argument names "
                            "to values.")
        memory = data.get("memory")
        budget = memory.get("budget_bytes") if isinstance(memory, dict) else None
        data = dict(data["args"], model=data.get("model"), **({"memory": budget} if budget else {}))
    config = {str(k).replace("-", "_"): v for k, v in data.items()}
    if "quiet" in config and not isinstance(config["quiet"], bool):
        raise UserError(f"config file {shorten(path)}: quiet must be true or false, got {shorten(config['quiet'])}.")
    return config, file.resolve().parent


def resolve_arguments(method: str, flags: dict, config: dict, base: Path | None, typed: bool = True) -> dict:
    """Merge config and flags (flags win), check names, parse values; draw a seed when none is given.
    Flags are strings (parsed as JSON where they are numbers, lists, null); `config` values are typed (YAML,
    JSON, a job, a form) unless typed=False."""
    params = parameters(method)
    unknown = sorted(set(config) - set(params) - RUN_KEYS)
    if unknown:
        raise UserError(f"unknown key(s) {unknown} for {method}; valid: {', '.join(params)}.")
    values = {}
    for name in params:
        if flags.get(name) is not None:
            raw = flags[name]
            raw = raw[0] if isinstance(raw, list) and len(raw) == 1 and name != "references" else raw
            values[name] = parse_value(name, raw, Path.cwd())  # absolute: the sidecar works from anywhere
        elif name in config:
            values[name] = parse_value(name, config[name], base, typed)
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in values]
    if required:
        raise UserError(f"{method} needs {', '.join(flag(n) for n in required)}.")
    if "seed" in params and values.get("seed") is None:
        values["seed"] = random.randrange(2**31)  # recorded in the sidecar, so the run can be reproduced
    return values


# ----------------------------------------------------------------------------------------- checks
def check_out_folder(out, what: str = "--out") -> Path:
    """Refuse at once (before any model work) an output folder that is a file, lies under a file, or cannot
    be written; nothing is created."""
    out = Path(os.path.expanduser(str(out)))
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {str(out)!r} is a file; give a folder for the outputs.")
    ancestor = out.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{what} {str(out)!r} lies under {str(ancestor)!r}, which is a file; give a folder path.")
    try:  # os.access says yes to root even where nothing can be created (e.g. /proc): try for real
        with tempfile.TemporaryFile(dir=ancestor, prefix=".zeroedit-probe"):
            pass
    except OSError as error:
        raise UserError(f"{what} {str(out)!r} cannot be written ({str(ancestor)!r}: {error.strerror or error}); "
                        "choose a folder you can write to.") from None
    return out


def check_out_file(path, what: str = "--out") -> Path:
    """As `check_out_folder`, for an output file: its folder must be writable and it must not be a folder."""
    path = Path(os.path.expanduser(str(path)))
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder; give a file name.")
    check_out_folder(path.parent, what)
    return path


def check_device(device, dtype=None):
    """A device/dtype the machine has, before loading anything (e.g. --device cuda without CUDA)."""
    import torch

    from .loading import resolve_dtype
    if dtype is not None:
        try:
            resolve_dtype(dtype)
        except ZeroEditError as error:
            raise UserError(f"--dtype: {error}") from None
    if device is None:
        return
    try:
        kind = torch.device(str(device)).type
    except (RuntimeError, ValueError):
        raise UserError(f"--device {shorten(device)} is not a device; use cpu, cuda, cuda:1, mps, ...") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, True):
        raise UserError(f"--device {device}: {kind.upper()} is not available on this machine "
                        f"(torch {torch.__version__}); use --device cpu or leave --device out.")


# ----------------------------------------------------------------------------------------- running
_PIPES: dict = {}
_PIPES_LOCK = threading.Lock()


def load_pipeline(model: str, method: str, device=None, dtype=None, quiet: bool = True, memory=None, values=None):
    """Load (once per process) the model for a method; personalize gets an IP-Adapter. Thread-safe.
    memory: a GPU budget ("24GB"): the memory plan of this method at the run's size and batch (`values`) is applied
    (zeroedit.memory)."""
    import torch

    from .loading import load, takes_ip_adapter
    # personalize: the model family's reference adapter (loading.DEFAULT_IP_ADAPTERS) or tiny/toy's own; none on the
    # families that take reference images natively or have no adapter (the method says what runs)
    ip = method == "personalize" and takes_ip_adapter(model)
    planned = None if memory is None else (method, memory, repr(plan_shape(method, values or {})))
    key = (model, ip, device, dtype, planned)
    with _PIPES_LOCK:
        if key not in _PIPES:
            if len(_PIPES) >= 2:
                _PIPES.clear()
            device = device or ("cuda" if torch.cuda.is_available() else None)
            dtype = dtype or ("float16" if device == "cuda" else None)
            if memory is not None:
                memory = memory_plan(model, method, values or {}, memory, device, dtype, ip)
            _PIPES[key] = load(model, dtype=dtype, device=device, ip_adapter=ip or None, memory=memory)
        pipe = _PIPES[key]
    pipe.set_progress_bar_config(disable=quiet)
    return pipe


def plan_shape(method: str, values: dict) -> tuple:
    """(size, batch) a method's run plans for: its `size`, and its prompts (translate), objects (compose,
    personalize) or images (invert)."""
    counted = {"translate": "prompt", "compose": "reference", "personalize": "references", "invert": "image"}.get(method)
    value = values.get(counted)
    batch = len(value) if isinstance(value, (list, tuple, dict)) and value else None
    return values.get("size"), batch


def memory_plan(model: str, method: str, values: dict, budget, device, dtype, ip: bool):
    """The memory plan of `method` on `model` at the run's size and batch (zeroedit.memory.plan): from the configs of a
    folder or hub id (fetched, no weights); the built-in tiny and toy models are built in-process and planned on."""
    import torch

    from .loading import OFFLINE_MODELS, fetch_configs, load, resolve_dtype
    from .memory import check_memory, resolve
    check_memory(budget, device)
    torch_dtype = resolve_dtype(dtype)
    if model in OFFLINE_MODELS:
        target = load(model, dtype=dtype, ip_adapter=ip or None)
    else:
        target, torch_dtype = fetch_configs(model), torch_dtype or torch.float32  # load's default dtype
    size, batch = plan_shape(method, values)
    return resolve(budget, target, method, size, torch_dtype, device, batch)


def versions() -> dict:
    import diffusers
    import torch
    import transformers

    from . import __version__
    return {"zeroedit": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


def write_atomically(path: Path, write):
    """Write through a temporary file in the same folder, then rename: no half-written file is ever seen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_tmp(folder: Path) -> list[str]:
    """Remove the temporary files a killed `write_atomically` left in `folder`; return their names."""
    removed = []
    for file in Path(folder).iterdir() if Path(folder).is_dir() else []:
        if _STALE_TMP.match(file.name) and file.is_file():
            file.unlink()
            removed.append(file.name)
    return removed


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def output_names(name: str, count: int) -> list[str]:
    """File names of `count` images of a run named `name` (see the module docstring)."""
    return [f"{name}.png"] if count == 1 else [f"{name}{SEPARATOR}{i}.png" for i in range(count)]


def execute(method: str, values: dict, pipe, callback=None):
    """Call the method on `pipe` (invert: invert, then reconstruct) -> (result, stats dict).
    callback: diffusers' callback_on_step_end(pipe, step, timestep, {"latents": ...}), given to the method
    (invert: called at each inversion step); raising in it stops the run (the method restores the pipeline)."""
    from . import invert, reconstruct
    if method == "invert":
        def step(i, t, x):  # invert's callback(step, t, latents) -> the latents it hands back (flow solvers use them)
            return (callback(pipe, i, t, {"latents": x}) or {}).get("latents")
        step = None if callback is None else step
        inversion = invert(pipe, **values, callback=step)
        result = reconstruct(pipe, inversion)
        stats = inversion.stats.to_dict()
        stats["reconstruction"] = result.stats.to_dict()
        return result, stats
    result = method_function(method)(pipe, **values, callback_on_step_end=callback)
    return result, result.stats.to_dict()


def save(images, stats: dict, method: str, values: dict, model: str, out: Path, name: str | None = None,
         memory: dict | None = None) -> dict:
    """Write `images` and the sidecar NAME.json into `out` atomically; paths inside `out` are recorded relative
    to it (the folder can be moved or downloaded as a whole). `memory`: the applied memory plan (Plan.to_dict()),
    recorded as "memory". Return the sidecar."""
    out, name = Path(out), name or method
    outputs = output_names(name, len(images))
    for file, image in zip(outputs, images):
        write_atomically(out / file, lambda tmp, image=image: image.save(tmp, format="PNG"))
    root = out.resolve()

    def relative(path: str) -> str:
        resolved = Path(path).resolve()
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else path
    sidecar = {"method": method, "model": model, "args": jsonable(map_paths(values, relative)),
               "seed": values.get("seed"), "versions": versions(), "stats": jsonable(stats), "outputs": outputs}
    if memory is not None:
        sidecar["memory"] = jsonable(memory)
    write_atomically(out / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2)))
    return sidecar


def run_method(method: str, values: dict, model: str, out: Path, name: str | None = None, device=None, dtype=None,
               quiet: bool = True, callback=None, memory=None) -> dict:
    """Load the model (cached; `memory`: a GPU budget, planned for this run), run one method, write its images and
    sidecar; return the sidecar."""
    pipe = load_pipeline(model, method, device, dtype, quiet, memory, values)
    plan = getattr(pipe, "zeroedit_memory_plan", None)
    values = with_plan_options(method, values, plan)
    result, stats = execute(method, values, pipe, callback)
    return save(result.images, stats, method, values, model, out, name, None if plan is None else plan.to_dict())


def with_plan_options(method: str, values: dict, plan) -> dict:
    """`values` plus the method options a memory plan asks for (store="cpu", checkpointing=True) that the method
    takes and the run does not set."""
    if plan is None:
        return values
    accepted = parameters(method)
    for key in set(plan.options) - set(accepted):
        logging.getLogger(__name__).warning("the memory plan asks for %s=%r, which %s does not take: it runs without "
                                            "it, so its peak may exceed the plan's.", key, plan.options[key], method)
    return {**{k: v for k, v in plan.options.items() if k in accepted and k not in values}, **values}


# ----------------------------------------------------------------------------------------- jobs
def job_arguments(job: dict, base: Path, model: str | None) -> tuple[str, dict, str]:
    """(method, resolved values, model) of a job {"method": ..., "id": ..., "model": ..., API keys}."""
    if "_error" in job:
        raise UserError(job["_error"])
    method = job.get("method")
    if method not in METHODS:
        raise UserError(f"unknown method {shorten(method)}; use one of {', '.join(METHODS)}.")
    config = {k: v for k, v in job.items() if k not in ("method", "id", "model", "memory")}
    values = resolve_arguments(method, {}, config, base)
    return method, values, job.get("model") or model or DEFAULT_MODELS[method]


def guarded(job: dict, work) -> dict:
    """Run `work(record)`; user and internal errors become an error record (one bad job never stops the others)."""
    record = {"id": job["id"], "method": job.get("method")}
    try:
        work(record)
    except KeyboardInterrupt:
        raise
    except (ZeroEditError, FileNotFoundError) as error:
        record.update(status="error", kind="user", error=str(error).splitlines()[0] if str(error) else repr(error))
    except Exception as error:  # noqa: BLE001 — internal failure of this job only
        logging.getLogger(__name__).exception("job %s failed", job["id"])
        record.update(status="error", kind="internal", error=f"{type(error).__name__}: {error}")
    return record


def run_job(job: dict, base: Path, out: Path, model: str | None, device=None, quiet: bool = True,
            memory=None) -> dict:
    """Run one job into `out` (its outputs named by its id); return its record {"id", "status", ...}. `memory`: the
    GPU budget of the batch (a job's own "memory" key wins), planned for the job's method and size."""
    def work(record):
        method, values, job_model = job_arguments(job, base, model)
        sidecar = run_method(method, values, job_model, out, name=job["id"], device=device, quiet=quiet,
                             memory=job.get("memory") or memory)
        record.update(status="ok", model=job_model, outputs=sidecar["outputs"] + [f"{job['id']}.json"],
                      stats=sidecar["stats"])
    return guarded(job, work)
