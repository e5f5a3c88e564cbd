"""The `zeroedit` command line: one subcommand per method (flags mirror the API one to one), `invert`,
`direction`, `demo`, `batch` and `app`
(new subcommands: a function decorated with `@command`). Every subcommand goes through `runner`.

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
import os
import re
import sys
from pathlib import Path

from . import runner
from .errors import ZeroEditError
# The runner's names, re-exported: `zeroedit.cli.asset`, `cli.resolve_arguments`, ... keep working.
from .runner import (DEFAULT_MODELS, IMAGE_ARGS, SKIPPED, UserError, asset, flag, load_pipeline, method_function,  # noqa: F401
                     parse_value, read_config, resolve_arguments, run_method, versions, write_atomically)

# Text flags: several words after one of them are refused (an unquoted `--prompt a red cat` is never three prompts).
TEXT_FLAGS = ("prompt", "source_prompt", "negative_prompt", "caption", "source", "target")
MANY = ("prompt", "references", "reference", "reference_mask", "region", "regions")  # flags that take several values
SEVERAL_PROMPTS = ('several prompts (translate): quote each and give them after one --prompt, '
                   '--prompt "a bronze horse" "a lego horse", or repeat --prompt "..." --prompt "..."')


def _doc_of(function, name: str) -> str:
    """The docstring's sentence about argument `name` ("name: text" or "name (...): text"), if any."""
    match = re.search(rf"(?:^|[\s,;.(])`?{re.escape(name)}`?(?: \([^)]*\))?:\s*([^\n]+)", function.__doc__ or "")
    return match.group(1).strip().rstrip(".").replace("%", "%%") + " " if match else ""


class _Text(argparse.Action):
    """A text flag (`--prompt`, `--caption`, ...). One occurrence takes one text; translate's `--prompt` also
    takes several texts that each contain a space (`--prompt "a bronze horse" "a lego horse"`) and may be
    repeated. Several single words (`--prompt a red cat`: the shell split an unquoted prompt) are refused."""

    def __init__(self, option_strings, dest, many=False, **kwargs):
        self.many = many
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 1 and (not self.many or any(len(v.split()) < 2 for v in values)):
            quoted = " ".join(values)
            hint = f'; {SEVERAL_PROMPTS}' if self.many else ""
            raise argparse.ArgumentError(self, f"got {len(values)} separate words {values!r}: quote a text with "
                                               f'spaces, {option_string} "{quoted}"{hint}')
        previous = getattr(namespace, self.dest, None)
        if previous is not None and not self.many:
            raise argparse.ArgumentError(self, "given twice; give it once")
        setattr(namespace, self.dest, (previous or []) + list(values))


def _add_method_flags(parser: argparse.ArgumentParser, function):
    for name, param in inspect.signature(function).parameters.items():
        if name in SKIPPED:
            continue
        default = "" if param.default is inspect.Parameter.empty else f", default {param.default!r}"
        help_text = _doc_of(function, name) + f"(API: {name}{default})".replace("%", "%%")
        if isinstance(param.default, bool):  # an on/off switch, e.g. --compile (a config may give a dict)
            parser.add_argument(flag(name), dest=name, action="store_true", default=None,
                                help=_doc_of(function, name) + f"(API: {name}=True)")
        elif name in TEXT_FLAGS:
            many = name == "prompt" and function.__name__ == "translate"
            parser.add_argument(flag(name), dest=name, action=_Text, many=many, default=None,
                                help=help_text + (f". {SEVERAL_PROMPTS}" if many else ""))
        else:
            many = name in MANY or (name == "image" and function.__name__ == "invert")
            parser.add_argument(flag(name), dest=name, nargs="+" if many else None, default=None,
                                help=help_text + (". A box: x0,y0,x1,y1 or four numbers (negative values allowed)"
                                                  if name == "region" else ""))


def _common_flags(parser: argparse.ArgumentParser, out_default="out"):
    parser.add_argument("--config", help="YAML or JSON file with the same keys as the flags (or a sidecar)")
    parser.add_argument("--model", help="hub id, local folder, or tiny / tiny-xl / tiny-sd3 / tiny-flux / toy / toy-flow")
    parser.add_argument("--out", default=None, help=f"output folder (default {out_default})")
    parser.add_argument("--quiet", action="store_true", default=None, help="no progress bars or summary")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float16, bfloat16 or float32")


def _run_options(args, config: dict) -> tuple[str | None, str | None, bool]:
    """--device, --dtype, --quiet from the flags, else the config (checked before any model work)."""
    device = args.device or config.get("device")
    dtype = args.dtype or config.get("dtype")
    runner.check_device(device, dtype)
    return device, dtype, bool(args.quiet if args.quiet is not None else config.get("quiet", False))


def run_method_command(args) -> int:
    config, base = read_config(args.config) if args.config else ({}, None)
    values = resolve_arguments(args.command, vars(args), config, base)
    model = args.model or config.get("model") or DEFAULT_MODELS[args.command]
    out = runner.check_out_folder(args.out or config.get("out") or "out")
    device, dtype, quiet = _run_options(args, config)
    memory = args.memory or config.get("memory")
    sidecar = run_method(args.command, values, model, out, device=device, dtype=dtype, quiet=quiet, memory=memory)
    if not quiet:
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
    out = runner.check_out_file(args.out or config.get("out") or f"{source}2{target}.safetensors")
    device, dtype, quiet = _run_options(args, config)
    pipe = load_pipeline(model, "direction", device, dtype)
    direction = directions.build(pipe, source, target, sentences=sentences)
    out.parent.mkdir(parents=True, exist_ok=True)
    directions.save(direction, out, pipe, source, target, model=model)
    if not quiet:
        print(f"direction {source} -> {target}: wrote {out}")
    return 0


def run_demo(args) -> int:
    from .demo import demo
    out = runner.check_out_folder(args.out or "demo-out")
    _, _, quiet = _run_options(args, {})
    demo(out, model=args.model, quiet=quiet)
    return 0


def run_batch(args) -> int:
    from .batch import run_batch as batch
    out = runner.check_out_folder(args.out or "batch-out")
    _, _, quiet = _run_options(args, {})
    failed = batch(Path(args.jobs), out, model=args.model, quiet=quiet, max_batch=args.max_batch)
    return 3 if failed else 0


def run_app(args) -> int:
    try:
        from .app import serve
    except ImportError as error:
        raise UserError(f"the app needs gradio ({error}): pip install 'zeroedit[app]'.") from None
    runner.check_device(args.device, args.dtype)
    serve(model=args.model, host=args.host, port=args.port, share=args.share, device=args.device, dtype=args.dtype)
    return 0


# ----------------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    # A value that starts with "-" and a digit is a value, not a flag: `--region -20,-20,40,40`, `--region -20 -5 40
    # 40` (argparse's own pattern only knows plain negative numbers such as -3).
    NUMBERS = re.compile(r"^-(\d+\.?\d*|\.\d+)([, ]+-?(\d+\.?\d*|\.\d+))*$")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self.NUMBERS

    def error(self, message):  # one line, exit 2 (argparse prints usage too)
        raise UserError(f"{message} (see zeroedit {self.prog.split()[-1] if ' ' in self.prog else ''} --help)")


COMMANDS: list = []  # one function (subparsers) -> None per subcommand, in --help order; add yours with @command


def command(build):
    COMMANDS.append(build)
    return build


def _method_command(method: str):
    def build(sub):
        function = method_function(method)
        p = sub.add_parser(method, help=(function.__doc__ or "").strip().splitlines()[0])
        _add_method_flags(p, function)
        _common_flags(p)
        _memory_flag(p)
        p.set_defaults(func=run_method_command)
    return build


for _method in runner.METHODS:
    command(_method_command(_method))


def _memory_flag(parser: argparse.ArgumentParser):
    parser.add_argument("--memory", default=None, help="The GPU memory you have, e.g. 24GB (10^9 bytes) or 16GiB "
                        "(2^30 bytes): zeroedit plans this run's memory and applies the cheapest measures that fit "
                        "(offloading, 8-/4-bit weights); see `zeroedit plan`. Default: none, everything stays on the device.")


def run_plan(args) -> int:
    from .loading import TINY_FLOW_MODELS, TINY_MODELS, load, resolve_dtype
    from .memory import plan
    if args.method not in runner.METHODS:
        raise UserError(f"--method {args.method!r}: use one of {', '.join(runner.METHODS)}.")
    size = None if args.size is None else int(args.size) if "x" not in args.size else tuple(
        int(v) for v in args.size.split("x"))
    dtype = resolve_dtype(args.dtype)
    target = args.model
    if args.model in TINY_MODELS + TINY_FLOW_MODELS + ("toy", "toy-flow"):  # built in-process, small
        target = load(args.model, dtype=args.dtype, ip_adapter=(args.method == "personalize") or None)
        target.zeroedit_architecture = args.model  # the name the plan prints
    try:
        print(plan(target, args.method, size=size, budget=args.memory, batch=args.batch, dtype=dtype,
                   device=args.device))
    except ZeroEditError as error:
        if getattr(error, "plan", None) is not None:
            print(error.plan)
        raise
    return 0


@command
def _plan_command(sub):
    p = sub.add_parser("plan", help="Print the memory plan of a method on a model without loading its weights: bytes "
                                    "part by part and the cheapest measures that fit your GPU.")
    p.add_argument("--model", required=True, help="A local diffusers folder, a hub id in your Hugging Face cache "
                   "(only its config files are read), a built-in architecture (FLUX.1-dev, FLUX.1-schnell, "
                   "SD3.5-large, SD3.5-medium, SD3-medium, SDXL-base, SD-2.1-base, SD-1.5) or tiny, tiny-xl, tiny-sd3, "
                   "tiny-flux, toy, toy-flow.")
    p.add_argument("--method", default="translate", help="The method to plan for: compose, translate, edit, "
                   "personalize or invert. Default: translate.")
    p.add_argument("--size", default=None, help="The working size: a long side in px (a square image, e.g. 1024) or "
                   "WIDTHxHEIGHT. Default: the model's native size.")
    p.add_argument("--memory", default="24GB", help="Your GPU's memory: 24GB (10^9 bytes), 16GiB (2^30 bytes) or a "
                   "number of bytes. Default: 24GB.")
    p.add_argument("--batch", type=int, default=None, help="Prompts (translate), objects (compose, personalize) or "
                   "images (invert, edit), 1 to 64. Default: 1.")
    p.add_argument("--dtype", default=None, help="The weights' dtype: float16, bfloat16 or float32. Default: "
                   "bfloat16 for SD3/FLUX, float16 for UNet models (the model's own for tiny/toy models).")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="What the plan is for: cuda (CUDA "
                   "streams, bitsandbytes 8-/4-bit) or cpu (no streams, torchao int8). Default: cuda.")
    p.set_defaults(func=run_plan)


@command
def _direction_command(sub):
    d = sub.add_parser("direction", help="build and save an edit direction (pix2pix-zero)")
    d.add_argument("--source")
    d.add_argument("--target")
    d.add_argument("--sentences", help="a text file, one sentence per line with {} for the concept")
    _common_flags(d, "SOURCE2TARGET.safetensors")
    d.set_defaults(func=run_direction)


@command
def _demo_command(sub):
    demo = sub.add_parser("demo", help="run every method on the bundled samples (offline) and write a gallery")
    _common_flags(demo, "demo-out")
    demo.set_defaults(func=run_demo)


@command
def _batch_command(sub):
    batch = sub.add_parser("batch", help="run a JSONL file of jobs (resumable; accelerate launch for many GPUs)")
    batch.add_argument("jobs")
    batch.add_argument("--max-batch", type=int, default=1, help="run up to N compatible jobs (same method, model, "
                       "size, steps and flags) as one sampling batch (default 1: one job at a time)")
    _common_flags(batch, "batch-out")
    batch.set_defaults(func=run_batch)


@command
def _app_command(sub):
    app = sub.add_parser("app", help="a web app (Gradio) with one tab per method; toy model offline by default")
    app.add_argument("--model", default=None, help="the model the app starts with (default toy; a picker in the "
                     "app switches): hub id, local folder, or tiny / tiny-xl / tiny-sd3 / tiny-flux / toy / toy-flow")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                     "only; 0.0.0.0 lets other machines reach it)")
    app.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    app.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    app.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    app.add_argument("--dtype", default=None, help="float16, bfloat16 or float32")
    app.set_defaults(func=run_app)


@command
def _eval_command(sub):
    from . import eval as evaluation  # zeroedit eval: the papers' metrics on a finished batch
    scoring = sub.add_parser("eval", help="score a finished batch by a paper's protocol (PIE-Bench, TF-ICON, MIP)")
    evaluation.add_arguments(scoring)
    scoring.set_defaults(func=evaluation.run)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zeroedit", description="Training-free diffusion editing (TF-ICON, Plug-and-Play, "
                                                  "pix2pix-zero, MIP-Adapter) on current diffusers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for build in COMMANDS:
        build(sub)
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
