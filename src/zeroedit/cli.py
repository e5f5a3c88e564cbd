"""The `zeroedit` command line: one subcommand per method (flags mirror the API one to one), `invert`,
`direction`, `demo` and `batch`.

    zeroedit compose --background bg.png --reference obj.png --reference-mask mask.png --region 40,30,100,90 \\
        --prompt "an oil painting of a ball" --model tiny --out out/
    zeroedit translate --config run.yaml            # the same keys as the flags (CLI flags win)
    zeroedit translate --config out/translate.json  # a sidecar reproduces its run bit for bit

Every run writes its images and a JSON sidecar (every resolved argument, the seed, the model, versions and
stats). Exit codes: 0 success; 2 user error (one line, no traceback); 1 internal failure; 3 (batch) some
jobs failed.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import sys
from importlib import resources
from pathlib import Path

from .errors import ZeroEditError

# The model each method's paper used (hub ids; offline, pass a local folder or tiny/tiny-xl/toy).
DEFAULT_MODELS = {"compose": "stabilityai/stable-diffusion-2-1-base", "translate": "stabilityai/stable-diffusion-2-1-base",
                  "edit": "CompVis/stable-diffusion-v1-4", "personalize": "stabilityai/stable-diffusion-xl-base-1.0",
                  "invert": "stabilityai/stable-diffusion-2-1-base", "direction": "CompVis/stable-diffusion-v1-4"}
IMAGE_ARGS = {"image", "background", "reference", "reference_mask", "layout"}
BOX_ARGS = {"region", "mask"}  # a box "x0,y0,x1,y1", a mask image or a phrase
PHRASE_ARGS = {"reference_mask", "region", "mask"}  # "auto" or a phrase naming an object reaches the API unchanged
SKIPPED = {"pipe", "callback_on_step_end", "captioner", "output_type", "callback"}


class UserError(ZeroEditError):
    """A bad command line, config or jobs file."""


def asset(name: str) -> Path:
    """Path of a bundled sample image (src/zeroedit/assets, drawn by scripts/make_assets.py)."""
    return Path(str(resources.files("zeroedit") / "assets" / name))


def method_function(name: str):
    import zeroedit as ze
    return {"compose": lambda: ze.compose, "translate": lambda: ze.translate, "edit": lambda: ze.edit,
            "personalize": lambda: ze.personalize, "invert": lambda: ze.invert}[name]()


# ----------------------------------------------------------------------------------------- values
def parse_value(name: str, value, base: Path | None = None):
    """A flag/config value -> the API's value: paths resolved against `base` (the config's folder), boxes
    "x0,y0,x1,y1", references "phrase=img[,img]", regions "phrase=box|mask|words", masks and regions that are
    "auto" or words naming an object (not a file, no image suffix: zeroedit.masks.is_phrase) unchanged, JSON
    for numbers/lists/null."""
    from .masks import is_phrase
    if value is None:
        return None
    def path(v):
        p = Path(os.path.expanduser(str(v)))
        return str(p if p.is_absolute() or base is None else (base / p))
    if name in PHRASE_ARGS and isinstance(value, list) and name not in BOX_ARGS:
        return [parse_value(name, v, base) for v in value]
    if name in PHRASE_ARGS and isinstance(value, str) and is_phrase(value, base) and \
            not (name in BOX_ARGS and value.count(",") == 3):
        return value
    if name in IMAGE_ARGS or name in ("mip_weights", "sentences") or (name == "direction" and isinstance(value, str)):
        return [path(v) for v in value] if isinstance(value, list) else path(value)
    if name in BOX_ARGS:
        if isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
            return tuple(value)
        if isinstance(value, str) and value.count(",") == 3:
            try:
                return tuple(float(v) for v in value.split(","))
            except ValueError:
                raise UserError(f"{_flag(name)} {value!r}: give x0,y0,x1,y1 in pixels, a mask image or words naming "
                                "an object.") from None
        return [parse_value(name, v, base) for v in value] if isinstance(value, list) else path(value)
    if name == "regions":
        items = value.items() if isinstance(value, dict) else \
            [item.split("=", 1) if "=" in item else (item, None) for item in (value if isinstance(value, list) else [value])]
        for phrase, region in items:
            if region is None:
                raise UserError(f"--regions {phrase!r}: write phrase=x0,y0,x1,y1, phrase=mask.png or phrase=\"words\".")
        return {phrase: parse_value("region", region, base) for phrase, region in items}
    if name == "references":
        if isinstance(value, dict):
            return {k: [path(v) for v in vs] if isinstance(vs, list) else path(vs) for k, vs in value.items()}
        out = {}
        for item in value if isinstance(value, list) else [value]:
            if "=" not in item:
                raise UserError(f"--references {item!r}: write phrase=image.png (several: phrase=a.png,b.png).")
            phrase, images = item.split("=", 1)
            files = [path(v) for v in images.split(",")]
            out[phrase] = files if len(files) > 1 else files[0]
        return out
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _doc_of(function, name: str) -> str:
    """The docstring's sentence about argument `name` ("name: text" or "name (...): text"), if any."""
    import re
    match = re.search(rf"(?:^|[\s,;.(])`?{re.escape(name)}`?(?: \([^)]*\))?:\s*([^\n]+)", function.__doc__ or "")
    return match.group(1).strip().rstrip(".") + " " if match else ""


def _add_method_flags(parser: argparse.ArgumentParser, function):
    for name, param in inspect.signature(function).parameters.items():
        if name in SKIPPED:
            continue
        many = name in ("prompt", "references", "reference", "reference_mask", "region", "regions") or \
            (name == "image" and function.__name__ == "invert")
        if isinstance(param.default, bool):  # an on/off switch, e.g. --compile (a config may give a dict)
            parser.add_argument(_flag(name), dest=name, action="store_true", default=None,
                                help=_doc_of(function, name) + f"(API: {name}=True)")
            continue
        parser.add_argument(_flag(name), dest=name, nargs="+" if many else None, default=None,
                            help=_doc_of(function, name) + f"(API: {name}" + ("" if param.default is inspect.Parameter.empty
                                                    else f", default {param.default!r}") + ")")


def _common_flags(parser: argparse.ArgumentParser, out_default="out"):
    parser.add_argument("--config", help="YAML or JSON file with the same keys as the flags (or a sidecar)")
    parser.add_argument("--model", help="hub id, local folder, or tiny / tiny-xl / toy")
    parser.add_argument("--out", default=None, help=f"output folder (default {out_default})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float16, bfloat16 or float32")


def read_config(path: str) -> tuple[dict, Path]:
    """Keys of a YAML/JSON config (or of a sidecar's "args"), and the folder relative paths start from."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file {path!r} does not exist.")
    try:
        import yaml
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except Exception as error:  # noqa: BLE001 — yaml.YAMLError, UnicodeDecodeError
        raise UserError(f"config file {path!r} is not valid YAML/JSON: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path!r} must hold a mapping of argument names to values.")
    if "args" in data and "method" in data:  # a sidecar
        data = dict(data["args"], model=data.get("model"))
    return {k.replace("-", "_"): v for k, v in data.items()}, file.resolve().parent


def resolve_arguments(method: str, flags: dict, config: dict, base: Path | None) -> dict:
    """Merge config and flags (flags win), check names, parse values."""
    function = method_function(method)
    names = [n for n in inspect.signature(function).parameters if n not in SKIPPED]
    unknown = sorted(set(config) - set(names) - {"model", "out", "quiet", "device", "dtype", "method", "id"})
    if unknown:
        raise UserError(f"unknown key(s) {unknown} for {method}; valid: {', '.join(names)}.")
    values = {}
    for name in names:
        if flags.get(name) is not None:
            raw = flags[name]
            raw = raw[0] if isinstance(raw, list) and len(raw) == 1 and name not in ("references",) else raw
            values[name] = parse_value(name, raw, Path.cwd())  # absolute: the sidecar works from anywhere
        elif name in config:
            values[name] = parse_value(name, config[name], base)
    required = [n for n, p in inspect.signature(function).parameters.items()
                if n not in SKIPPED and p.default is inspect.Parameter.empty and n not in values]
    if required:
        raise UserError(f"{method} needs {', '.join(_flag(n) for n in required)}.")
    if "seed" in inspect.signature(function).parameters and values.get("seed") is None:
        values["seed"] = random.randrange(2**31)  # recorded in the sidecar, so the run can be reproduced
    return values


# ----------------------------------------------------------------------------------------- running
_PIPES: dict = {}


def load_pipeline(model: str, method: str, device=None, dtype=None, quiet: bool = True):
    """Load (once per process) the model for a method; personalize gets an IP-Adapter."""
    import torch

    from .loading import load
    ip = method == "personalize"  # the model family's reference adapter (loading.DEFAULT_IP_ADAPTERS), or tiny/toy's own
    key = (model, ip, device, dtype)
    if key not in _PIPES:
        if len(_PIPES) >= 2:
            _PIPES.clear()
        device = device or ("cuda" if torch.cuda.is_available() else None)
        dtype = dtype or ("float16" if device == "cuda" else None)
        _PIPES[key] = load(model, dtype=dtype, device=device, ip_adapter=ip or None)
    pipe = _PIPES[key]
    pipe.set_progress_bar_config(disable=quiet)
    return pipe


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


def run_method(method: str, values: dict, model: str, out: Path, name: str | None = None, device=None, dtype=None,
               quiet: bool = True) -> dict:
    """Run one method, write its images and sidecar; return the sidecar."""
    from . import invert, reconstruct
    pipe = load_pipeline(model, method, device, dtype, quiet)
    function = method_function(method)
    name = name or method
    if method == "invert":
        inversion = invert(pipe, **values)
        result = reconstruct(pipe, inversion)
        stats = inversion.stats.to_dict()
        stats["reconstruction"] = result.stats.to_dict()
    else:
        result = function(pipe, **values)
        stats = result.stats.to_dict()
    outputs = []
    for index, image in enumerate(result.images):
        path = out / (f"{name}.png" if len(result.images) == 1 else f"{name}-{index}.png")
        write_atomically(path, lambda tmp, image=image: image.save(tmp, format="PNG"))
        outputs.append(path.name)
    sidecar = {"method": method, "model": model, "args": _jsonable(values), "seed": values.get("seed"),
               "versions": versions(), "stats": _jsonable(stats), "outputs": outputs}
    write_atomically(out / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2)))
    return sidecar


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def run_method_command(args) -> int:
    config, base = read_config(args.config) if args.config else ({}, None)
    flags = {k: v for k, v in vars(args).items()}
    values = resolve_arguments(args.command, flags, config, base)
    model = args.model or config.get("model") or DEFAULT_MODELS[args.command]
    out = Path(args.out or config.get("out") or "out")
    sidecar = run_method(args.command, values, model, out, device=args.device, dtype=args.dtype, quiet=args.quiet)
    if not args.quiet:
        stats = sidecar["stats"]
        print(f"{args.command}: wrote {', '.join(str(out / o) for o in sidecar['outputs'])} "
              f"({stats['unet_calls']} UNet calls, {stats['seconds']:.1f} s)")
    return 0


def run_direction(args) -> int:
    from . import directions
    config, base = read_config(args.config) if args.config else ({}, None)
    source, target = args.source or config.get("source"), args.target or config.get("target")
    if not source or not target:
        raise UserError("direction needs --source and --target concepts.")
    sentences = parse_value("sentences", args.sentences or config.get("sentences"), base if not args.sentences else Path.cwd())
    model = args.model or config.get("model") or DEFAULT_MODELS["direction"]
    pipe = load_pipeline(model, "direction", args.device, args.dtype)
    direction = directions.build(pipe, source, target, sentences=sentences)
    out = Path(args.out or f"{source}2{target}.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    directions.save(direction, out, pipe, source, target, model=model)
    if not args.quiet:
        print(f"direction {source} -> {target}: wrote {out}")
    return 0


def run_demo(args) -> int:
    from .demo import demo
    demo(Path(args.out or "demo-out"), model=args.model, quiet=args.quiet)
    return 0


def run_batch(args) -> int:
    from .batch import run_batch as batch
    failed = batch(Path(args.jobs), Path(args.out or "batch-out"), model=args.model, quiet=args.quiet,
                   max_batch=args.max_batch)
    return 3 if failed else 0


# ----------------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too)
        raise UserError(f"{message} (see zeroedit {self.prog.split()[-1] if ' ' in self.prog else ''} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zeroedit", description="Training-free diffusion editing (TF-ICON, Plug-and-Play, "
                                                  "pix2pix-zero, MIP-Adapter) on current diffusers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for method in ("compose", "translate", "edit", "personalize", "invert"):
        p = sub.add_parser(method, help=(method_function(method).__doc__ or "").strip().splitlines()[0])
        _add_method_flags(p, method_function(method))
        _common_flags(p)
        p.set_defaults(func=run_method_command)
    d = sub.add_parser("direction", help="build and save an edit direction (pix2pix-zero)")
    d.add_argument("--source")
    d.add_argument("--target")
    d.add_argument("--sentences", help="a text file, one sentence per line with {} for the concept")
    _common_flags(d, "SOURCE2TARGET.safetensors")
    d.set_defaults(func=run_direction)
    demo = sub.add_parser("demo", help="run every method on the bundled samples (offline) and write a gallery")
    _common_flags(demo, "demo-out")
    demo.set_defaults(func=run_demo)
    batch = sub.add_parser("batch", help="run a JSONL file of jobs (resumable; accelerate launch for many GPUs)")
    batch.add_argument("jobs")
    batch.add_argument("--max-batch", type=int, default=1, help="run up to N compatible jobs (same method, model, "
                       "size, steps and flags) as one sampling batch (default 1: one job at a time)")
    _common_flags(batch, "batch-out")
    batch.set_defaults(func=run_batch)
    return parser


def main(argv=None) -> int:
    debug = os.environ.get("ZEROEDIT_DEBUG") == "1"
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (ZeroEditError, FileNotFoundError) as error:
        print(f"zeroedit: error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zeroedit: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 — internal failure: one line, traceback with ZEROEDIT_DEBUG=1
        if debug:
            raise
        print(f"zeroedit: internal error: {type(error).__name__}: {error} (set ZEROEDIT_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
