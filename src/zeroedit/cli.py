"""The `zeroedit` command line: one subcommand per method (flags mirror the API one to one), `invert`,
`direction`, `demo`, `batch`, `app` and `eval`. Every subcommand goes through `runner`. A new subcommand is one
function decorated with `@command` that adds its parser with `subcommand(sub, name, summary)`.

The parser is built from static data (cli_flags: every flag's help sentence), so `zeroedit --help` and
`zeroedit COMMAND --help` import no torch; a command imports what it needs when it runs.

    zeroedit compose --background bg.png --reference obj.png --reference-mask mask.png --region 40,30,100,90 \\
        --prompt "an oil painting of a ball" --model tiny --out out/
    zeroedit translate --config run.yaml            # the same keys as the flags (CLI flags win)
    zeroedit translate --config out/translate.json  # a sidecar reproduces its run bit for bit

Every run writes its images and a JSON sidecar (every resolved argument, the seed, the model, versions and
stats). Exit codes: 0 success; 2 user error (one line, no traceback); 1 internal failure; 3 (batch, demo) some
jobs failed.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from . import runner
from .cli_flags import (APP, BATCH, BATCH_MODEL, BENCHMARKS, COMMON, DEMO_MODEL, DIRECTION, EVAL, MEMORY, METHOD_FLAGS,
                        OUT, PLAN, SUMMARIES, model_help)
from .errors import ModelNotFound, ZeroEditError
# The runner's names, re-exported: `zeroedit.cli.asset`, `cli.resolve_arguments`, ... keep working.
from .runner import (DEFAULT_MODELS, IMAGE_ARGS, SKIPPED, UserError, asset, flag, load_pipeline, method_function,  # noqa: F401
                     parse_value, read_config, resolve_arguments, run_method, versions, write_atomically)

# Text flags: several words after one of them are refused (an unquoted `--prompt a red cat` is never three prompts).
TEXT_FLAGS = ("prompt", "source_prompt", "negative_prompt", "caption", "source", "target")
MANY = ("prompt", "references", "reference", "reference_mask", "region", "regions")  # flags that take several values
SWITCHES = ("compile", "allow_large", "checkpointing")  # on/off flags: the API parameters whose default is a bool
SEVERAL_PROMPTS = ('several prompts (translate): quote each and give them after one --prompt, '
                   '--prompt "a bronze horse" "a lego horse", or repeat --prompt "..." --prompt "..."')


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


class _Formatter(argparse.HelpFormatter):
    """--help shows a text flag as one TEXT (it takes several words only to refuse them with a hint), translate's
    --prompt as TEXT [TEXT ...]."""

    def _format_args(self, action, default_metavar):
        if isinstance(action, _Text):
            return "TEXT [TEXT ...]" if action.many else "TEXT"
        return super()._format_args(action, default_metavar)


def _add_method_flags(parser: argparse.ArgumentParser, method: str):
    """One flag per API parameter of the method (cli_flags.METHOD_FLAGS), in the API's order."""
    for name, text in METHOD_FLAGS[method].items():
        if name in SWITCHES:  # e.g. --compile (a config may give a dict)
            parser.add_argument(flag(name), dest=name, action="store_true", default=None, help=text)
        elif name in TEXT_FLAGS:
            parser.add_argument(flag(name), dest=name, action=_Text, many=name == "prompt" and method == "translate",
                                default=None, help=text)
        else:
            many = name in MANY or (name == "image" and method == "invert")
            parser.add_argument(flag(name), dest=name, nargs="+" if many else None, default=None, help=text)


def _common_flags(parser: argparse.ArgumentParser, command: str, out: str):
    """--config, --model, --out, --quiet, --device and --dtype of a command that runs one model."""
    parser.add_argument("--config", help=COMMON["config"])
    parser.add_argument("--model", help=model_help(command))
    parser.add_argument("--out", default=None, help=out)
    parser.add_argument("--quiet", action="store_true", default=None, help=COMMON["quiet"])
    parser.add_argument("--device", default=None, help=COMMON["device"])
    parser.add_argument("--dtype", default=None, help=COMMON["dtype"])


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
    records = demo(out, model=args.model, quiet=bool(args.quiet))
    return 3 if any(record["status"] != "ok" for record in records) else 0


def run_batch(args) -> int:
    from .batch import run_batch as batch
    out = runner.check_out_folder(args.out or "batch-out")
    failed = batch(Path(args.jobs), out, model=args.model, quiet=bool(args.quiet), max_batch=args.max_batch,
                   memory=args.memory)
    return 3 if failed else 0


def run_app(args) -> int:
    try:
        from .app import serve
    except ImportError as error:
        raise UserError(f"the app needs gradio ({error}): pip install 'zeroedit[app]'.") from None
    runner.check_device(args.device, args.dtype)
    if args.memory is not None:
        from .memory import check_memory
        check_memory(args.memory, args.device)
    serve(model=args.model, host=args.host, port=args.port, share=args.share, device=args.device, dtype=args.dtype,
          memory=args.memory)
    return 0


def run_eval(args) -> int:
    from .eval import run
    return run(args)


# ----------------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    # A value that starts with "-" and a digit is a value, not a flag: `--region -20,-20,40,40`, `--region -20 -5 40
    # 40` (argparse's own pattern only knows plain negative numbers such as -3).
    NUMBERS = re.compile(r"^-(\d+\.?\d*|\.\d+)([, ]+-?(\d+\.?\d*|\.\d+))*$")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"formatter_class": _Formatter, **kwargs, "add_help": False})
        self._negative_number_matcher = self.NUMBERS
        self.add_argument("-h", "--help", action="help", help="Show this help and exit.")

    def error(self, message):  # one line, exit 2 (argparse prints usage too)
        raise UserError(f"{message} (see {self.prog} --help)")


COMMANDS: list = []  # one function (subparsers) -> None per subcommand, in --help order; add yours with @command


def command(build):
    COMMANDS.append(build)
    return build


def subcommand(sub, name: str, summary: str | None = None) -> argparse.ArgumentParser:
    """A subcommand's parser; its one-line summary (cli_flags.SUMMARIES by default) heads its --help too."""
    summary = summary or SUMMARIES[name]
    return sub.add_parser(name, help=summary, description=summary)


def _method_command(method: str):
    def build(sub):
        parser = subcommand(sub, method)
        _add_method_flags(parser, method)
        _common_flags(parser, method, OUT["method"])
        parser.add_argument("--memory", default=None, help=MEMORY)
        parser.set_defaults(func=run_method_command)
    return build


for _method in runner.METHODS:
    command(_method_command(_method))


def run_plan(args) -> int:
    from .loading import OFFLINE_MODELS, load, resolve_dtype, takes_ip_adapter
    from .memory import plan
    if args.method not in runner.METHODS:
        raise UserError(f"--method {args.method!r}: use one of {', '.join(runner.METHODS)}.")
    size = None if args.size is None else int(args.size) if "x" not in args.size else tuple(
        int(v) for v in args.size.split("x"))
    dtype = resolve_dtype(args.dtype)
    target = args.model
    if args.model in OFFLINE_MODELS:  # built in-process, small
        ip = args.method == "personalize" and takes_ip_adapter(args.model)
        target = load(args.model, dtype=args.dtype, ip_adapter=ip or None)
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
    p = subcommand(sub, "plan")
    p.add_argument("--model", required=True, help=PLAN["model"])
    p.add_argument("--method", default="translate", help=PLAN["method"])
    p.add_argument("--size", default=None, help=PLAN["size"])
    p.add_argument("--memory", default="24GB", help=PLAN["memory"])
    p.add_argument("--batch", type=int, default=None, help=PLAN["batch"])
    p.add_argument("--dtype", default=None, help=PLAN["dtype"])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help=PLAN["device"])
    p.set_defaults(func=run_plan)


@command
def _direction_command(sub):
    d = subcommand(sub, "direction")
    for name, text in DIRECTION.items():
        d.add_argument(flag(name), help=text)
    _common_flags(d, "direction", OUT["direction"])
    d.set_defaults(func=run_direction)


@command
def _demo_command(sub):
    demo = subcommand(sub, "demo")
    demo.add_argument("--model", help=DEMO_MODEL)
    demo.add_argument("--out", default=None, help=OUT["demo"])
    demo.add_argument("--quiet", action="store_true", default=None, help=COMMON["quiet"])
    demo.set_defaults(func=run_demo)


@command
def _batch_command(sub):
    batch = subcommand(sub, "batch")
    batch.add_argument("jobs", help=BATCH["jobs"])
    batch.add_argument("--max-batch", type=int, default=1, help=BATCH["max_batch"])
    batch.add_argument("--model", help=BATCH_MODEL)
    batch.add_argument("--out", default=None, help=OUT["batch"])
    batch.add_argument("--quiet", action="store_true", default=None, help=COMMON["quiet"])
    batch.add_argument("--memory", default=None, help=MEMORY + " A job's own \"memory\" key wins.")
    batch.set_defaults(func=run_batch)


@command
def _app_command(sub):
    app = subcommand(sub, "app")
    app.add_argument("--model", default=None, help=APP["model"])
    app.add_argument("--host", default="127.0.0.1", help=APP["host"])
    app.add_argument("--port", type=int, default=7860, help=APP["port"])
    app.add_argument("--share", action="store_true", help=APP["share"])
    app.add_argument("--device", default=None, help=COMMON["device"])
    app.add_argument("--dtype", default=None, help=COMMON["dtype"])
    app.add_argument("--memory", default=None, help=MEMORY)
    app.set_defaults(func=run_app)


@command
def _eval_command(sub):
    scoring = subcommand(sub, "eval")
    scoring.add_argument("results", nargs="+", help=EVAL["results"])
    scoring.add_argument("--benchmark", required=True, choices=BENCHMARKS, help=EVAL["benchmark"])
    for name in ("data", "out", "metrics"):
        scoring.add_argument(flag(name), help=EVAL[name])
    scoring.add_argument("--label", nargs="+", help=EVAL["label"])
    for name in ("clip_model", "dino_model"):
        scoring.add_argument(flag(name), help=EVAL[name])
    scoring.add_argument("--lpips-net", choices=("vgg", "squeeze"), help=EVAL["lpips_net"])
    scoring.add_argument("--lpips-weights", help=EVAL["lpips_weights"])
    scoring.add_argument("--allow-download", action="store_true", help=EVAL["allow_download"])
    scoring.add_argument("--device", default=None, help=EVAL["device"])
    scoring.add_argument("--quiet", action="store_true", help=EVAL["quiet"])
    scoring.set_defaults(func=run_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zeroedit", description="Training-free diffusion editing (TF-ICON, Plug-and-Play, "
                                                  "pix2pix-zero, MIP-Adapter) on current diffusers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND",
                                title="commands", help="Run zeroedit COMMAND --help for its flags.")
    for build in COMMANDS:
        build(sub)
    return parser


def _user_error(message: str) -> int:
    print(f"zeroedit: error: {message.splitlines()[0] if message else 'bad input'}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    debug = os.environ.get("ZEROEDIT_DEBUG") == "1"
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ModelNotFound as error:  # the library's message says load('DIR'); here a folder is given as --model DIR
        from .loading import not_found_message
        return _user_error(not_found_message(error.model, error.reason, how="--model {}"))
    except (ZeroEditError, FileNotFoundError) as error:
        return _user_error(str(error) or type(error).__name__)
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
