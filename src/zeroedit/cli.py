"""The `zeroedit` command line. Subcommands land with their methods; exit codes: 0 success, 2 user error
(one line, no traceback), 1 internal failure."""
from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

from .errors import ZeroEditError


def asset(name: str) -> Path:
    """Path of a bundled sample image (src/zeroedit/assets, drawn by scripts/make_assets.py)."""
    return Path(str(resources.files("zeroedit") / "assets" / name))


def _load(model: str):
    from .loading import load
    return load(model)


def run_demo(args) -> int:
    """The main job: runs the available methods on the bundled samples and writes images + stats."""
    from . import invert, reconstruct
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = _load(args.model)
    summary = {}
    for method, prompt in (("ddim", ""), ("dpmpp", "exceptional")):
        inv = invert(pipe, asset("background.png"), method=method, prompt=prompt, steps=args.steps)
        rec = reconstruct(pipe, inv)
        name = f"invert_{method}.png"
        rec.image.save(out / name)
        summary[name] = {"inversion": inv.stats.to_dict(), "reconstruction": rec.stats.to_dict()}
    (out / "stats.json").write_text(json.dumps(summary, indent=2, default=str))
    if not args.quiet:
        print(f"wrote {len(summary)} images and stats.json to {out}")
    return 0


def run_invert(args) -> int:
    from . import invert, reconstruct
    pipe = _load(args.model)
    inv = invert(pipe, args.image, method=args.method, prompt=args.prompt, steps=args.steps)
    rec = reconstruct(pipe, inv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rec.image.save(args.out)
    if not args.quiet:
        print(json.dumps(inv.stats.to_dict(), default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zeroedit", description="Training-free diffusion editing.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every method on the bundled samples (offline)")
    demo.add_argument("--out", default="demo-out")
    demo.add_argument("--model", default="tiny")
    demo.add_argument("--steps", type=int, default=10)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=run_demo)
    inv = sub.add_parser("invert", help="invert an image and write its reconstruction")
    inv.add_argument("image")
    inv.add_argument("--out", required=True)
    inv.add_argument("--model", default="tiny")
    inv.add_argument("--method", default="ddim", choices=["ddim", "dpmpp"])
    inv.add_argument("--prompt", default="")
    inv.add_argument("--steps", type=int, default=50)
    inv.add_argument("--quiet", action="store_true")
    inv.set_defaults(func=run_invert)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ZeroEditError, FileNotFoundError) as error:
        print(f"zeroedit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
