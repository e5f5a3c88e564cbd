"""Cost of every method at its defaults: sequential UNet calls, sample-evaluations, backward passes, wall
seconds and peak memory.

    python benchmarks/speed.py                        # tiny random-weight model on CPU
    python benchmarks/speed.py --device cuda --md out.md   # SD-sized random weights at 512² fp16 (SDXL 1024²
                                                           # for personalize), plus UNet per-call times

    python benchmarks/speed.py --compile              # compiled path: compile time (first call) and steady
                                                      # per-call time eager vs compiled, translate and compose
                                                      # (--steps 10) on the tiny model on CPU; on a GPU
                                                      # (--device cuda) per-call eager vs compiled at batch
                                                      # 1/2/4 (reduce-overhead) and every method at its
                                                      # defaults, eager vs compiled

On a GPU, methods run on `benchmarks/sized.py` pipelines: SD 2.1-sized for invert/compose/translate,
SD 1.5-sized for edit (the paper's model), SDXL-sized at 1024² for personalize. Each method runs once to warm
up and is then timed once (`--repeats` to change). Peak memory is CUDA max allocated during the timed run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zeroedit as ze  # noqa: E402
from zeroedit.cli import asset  # noqa: E402


def _images(size: int):
    from PIL import Image
    def load(name, mode="RGB"):
        return Image.open(asset(name)).convert(mode).resize((size, size))
    return dict(background=load("background.png"), reference=load("reference.png"),
                mask=load("reference_mask.png", "L"), cat=load("cat.png"))


def cases(size: int):
    """(name, model kind, callable(pipe) -> Result) for every method at its defaults."""
    img = _images(size)
    xl = 1024 if size == 512 else size  # SDXL runs at its native 1024² on a GPU
    box = (size // 4, size // 3, size // 4 + size // 2, size // 3 + size // 2)
    return [
        ("invert ddim 50", "sd21", lambda p, **kw: ze.invert(p, img["background"], method="ddim", steps=50, **kw)),
        ("invert dpmpp 20 exceptional", "sd21",
         lambda p, **kw: ze.invert(p, img["background"], method="dpmpp", prompt="exceptional", steps=20, **kw)),
        ("compose (20 steps, 1 object)", "sd21",
         lambda p, **kw: ze.compose(p, img["background"], img["reference"], region=box, reference_mask=img["mask"],
                                    prompt="a red ball on a hill", seed=0, **kw)),
        ("translate memory (50 steps)", "sd21",
         lambda p, **kw: ze.translate(p, img["cat"], "a painting of a dog", seed=0, source_cache="memory", **kw)),
        ("translate recompute (50 steps)", "sd21",
         lambda p, **kw: ze.translate(p, img["cat"], "a painting of a dog", seed=0, source_cache="recompute", **kw)),
        ("translate memory, 4 prompts", "sd21",
         lambda p, **kw: ze.translate(p, img["cat"], ["a dog", "a fox", "a sketch of a cat", "a lion"], seed=0, **kw)),
        ("edit cat->dog (50 steps)", "sd15",
         lambda p, **kw: ze.edit(p, img["cat"], source="cat", target="dog", caption="a photo of a cat", seed=0, **kw)),
        ("personalize 2 objects (30 steps)", "sdxl",
         lambda p, **kw: ze.personalize(p, "a cat and a dog", {"cat": img["cat"], "dog": img["reference"]},
                                        height=xl, width=xl, seed=0, **kw)),
        ("personalize uniform 2 objects", "sdxl",
         lambda p, **kw: ze.personalize(p, "a cat and a dog", {"cat": img["cat"], "dog": img["reference"]},
                                        weighting="uniform", height=xl, width=xl, seed=0, **kw)),
    ]


def unet_call_times(pipe, size: int, batches=(1, 2, 4), repeats: int = 20, compile=False) -> dict:
    """Per-call time of the UNet at `size` px for several batch sizes (ms, median), eager or through
    Backbone(compile=...) (the compiled path every method takes)."""
    from zeroedit.backbones import Backbone
    backbone = Backbone(pipe, compile=compile)
    cond = backbone.encode_prompt("a photo")
    h = size // backbone.vae_scale
    out = {}
    with torch.no_grad():
        for b in batches:
            x = torch.randn(b, 4, h, h, device=backbone.device, dtype=backbone.dtype)
            times = []
            for i in range(repeats + 3):
                _sync(backbone.device)
                start = time.perf_counter()
                backbone.unet_call(x, 500, cond.repeat(b))
                _sync(backbone.device)
                if i >= 3:
                    times.append(time.perf_counter() - start)
            out[b] = round(sorted(times)[len(times) // 2] * 1000, 2) if times else None
            if compile or not times:
                continue
            times = []
            for i in range(repeats + 3):  # diffusers' UNet called directly, for comparison
                _sync(backbone.device)
                start = time.perf_counter()
                pipe.unet(x, torch.tensor(500, device=x.device), encoder_hidden_states=cond.repeat(b).embeds,
                          added_cond_kwargs=_sdxl_added(backbone, cond.repeat(b), size), return_dict=False)
                _sync(backbone.device)
                if i >= 3:
                    times.append(time.perf_counter() - start)
            out[f"{b} raw unet"] = round(sorted(times)[len(times) // 2] * 1000, 2)
    return out


def compile_cases(size: int, steps: int):
    """(name, model kind, callable(pipe, **kw)) for the compiled-vs-eager comparison: translate and compose."""
    img = _images(size)
    box = (size // 4, size // 3, size // 4 + size // 2, size // 3 + size // 2)
    return [
        (f"translate ({steps} steps)", "sd21",
         lambda p, **kw: ze.translate(p, img["cat"], "a painting of a dog", steps=steps, seed=0, output_type="latent", **kw)),
        (f"compose ({steps} steps)", "sd21",
         lambda p, **kw: ze.compose(p, img["background"], img["reference"], region=box, reference_mask=img["mask"],
                                    prompt="a red ball on a hill", steps=steps, seed=0, output_type="latent", **kw)),
    ]


def compile_run(pipe, method, compile) -> dict:
    """Eager vs compiled for one method: eager seconds (after a warm-up), compiled first-call seconds (graph
    capture and backend compile included), compiled steady seconds (second call), per UNet call each, and
    the largest latent difference compiled − eager."""
    method(pipe)  # warm-up (eager)
    eager = method(pipe)
    first = method(pipe, compile=compile)
    steady = method(pipe, compile=compile)
    calls = eager.stats.unet_calls
    return dict(unet_calls=calls, eager_s=round(eager.stats.seconds, 3), compiled_first_s=round(first.stats.seconds, 2),
                compiled_steady_s=round(steady.stats.seconds, 3),
                compile_s=round(first.stats.seconds - steady.stats.seconds, 2),
                eager_ms_per_call=round(1000 * eager.stats.seconds / calls, 2),
                compiled_ms_per_call=round(1000 * steady.stats.seconds / calls, 2),
                speedup=round(eager.stats.seconds / steady.stats.seconds, 2),
                max_abs_diff=float((steady.latents.float() - eager.latents.float()).abs().max()))


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _sdxl_added(backbone, cond, size):
    if not backbone.is_xl:
        return None
    ids = torch.tensor([size, size, 0, 0, size, size], device=backbone.device, dtype=backbone.dtype)
    return dict(text_embeds=cond.pooled, time_ids=ids.expand(len(cond), -1))


def _pipe_for(kind: str, device: str, cache: dict):
    if device == "cpu":
        key = "tiny-xl" if kind == "sdxl" else "tiny"
        if key not in cache:
            cache.clear()
            cache[key] = ze.load(key, ip_adapter=kind == "sdxl")
        return cache[key]
    if kind not in cache:
        from benchmarks.sized import build_sized
        cache.clear()
        torch.cuda.empty_cache()
        pipe = build_sized(kind, device)
        if kind == "sdxl":
            from zeroedit.tiny_ip import add_tiny_ip_adapter
            add_tiny_ip_adapter(pipe)
            pipe.to(device=device, dtype=torch.float16)
        cache[kind] = pipe
    return cache[kind]


def _extra(extra: dict) -> str:
    """Method-specific figures; byte counts in MiB."""
    return ", ".join(f"{k.replace('_bytes', '')} {v / 2**20:.1f} MiB" if k.endswith("_bytes") else f"{k} {v}"
                     for k, v in extra.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--md", default=None, help="write a markdown table here")
    parser.add_argument("--json", default=None)
    parser.add_argument("--per-call", default="sd21,sdxl", help="model kinds whose UNet per-call time is measured")
    parser.add_argument("--compile", action="store_true", help="measure the compiled path (see module docstring)")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode (default: reduce-overhead on CUDA, inductor's default on CPU)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor)")
    parser.add_argument("--steps", type=int, default=10, help="steps of the compiled-vs-eager comparison")
    parser.add_argument("--batches", default=None,
                        help="--compile: batch sizes of the per-call times (default 1,2,4 on CUDA, none on CPU)")
    parser.add_argument("--skip-methods", action="store_true", help="--compile: per-call times only")
    args = parser.parse_args(argv)
    if args.compile:
        return compile_main(args)
    rows, cache = [], {}
    if args.device != "cpu":
        gpu = torch.cuda.get_device_name()
        per_call = {kind: unet_call_times(_pipe_for(kind, args.device, cache), 1024 if kind == "sdxl" else 512)
                    for kind in filter(None, args.per_call.split(","))}
        print("UNet eager per-call ms by batch:", json.dumps(per_call), flush=True)
    else:
        gpu, per_call = platform.processor() or "cpu", {}
    for name, kind, run in cases(128 if args.device == "cpu" else 512):
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        size_note = "1024²" if kind == "sdxl" and args.device != "cpu" else ("512²" if args.device != "cpu" else "128²")
        try:
            pipe = _pipe_for(kind, args.device, cache)
            run(pipe)  # warm-up
            for _ in range(args.repeats):
                result = run(pipe)
            s = result.stats
            row = dict(case=name, model=("tiny" if args.device == "cpu" else kind) + " " + size_note,
                       unet_calls=s.unet_calls, unet_evals=s.unet_evals, unet_backward=s.unet_backward,
                       seconds=round(s.seconds, 2), peak_gib=round(s.peak_memory_bytes / 2**30, 2),
                       extra={**{k: v for k, v in s.extra.items() if isinstance(v, (int, float, str))},
                              **{f"{k}_bytes": v for k, v in s.store_bytes.items()}})
        except Exception as error:  # noqa: BLE001 — report and go on with the other methods
            row = dict(case=name, model=kind, error=f"{type(error).__name__}: {error}"[:300])
        print(json.dumps(row), flush=True)
        rows.append(row)
    stamp = datetime.date.today().isoformat()
    lines = [f"### {stamp}, {gpu}, torch {torch.__version__}", "",
             "| case | model | unet_calls | unet_evals | backward | seconds | peak GiB | extra |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['model']} | error: {r['error']} | | | | | |")
        else:
            lines.append(f"| {r['case']} | {r['model']} | {r['unet_calls']} | {r['unet_evals']} | {r['unet_backward']} "
                         f"| {r['seconds']} | {r['peak_gib']} | {_extra(r['extra'])} |")
    if per_call:
        lines += ["", "UNet eager per-call time (ms, median of 20) by batch size: "
                  + "; ".join(f"{k}: " + ", ".join(f"b{b} {ms}" for b, ms in v.items()) for k, v in per_call.items())]
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows=rows, per_call=per_call), indent=2))
    return 0


def compile_main(args) -> int:
    """--compile: the compiled path's figures (module docstring); a markdown table as the default mode."""
    cuda = args.device != "cpu"
    options = {k: v for k, v in dict(mode=args.compile_mode or ("reduce-overhead" if cuda else None),
                                     backend=args.compile_backend).items() if v is not None}
    compile = options or True
    cache, lines = {}, [f"### {datetime.date.today().isoformat()}, "
                        f"{torch.cuda.get_device_name() if cuda else platform.processor() or 'cpu'}, torch "
                        f"{torch.__version__}, compile={compile}", ""]
    batches = [int(b) for b in (args.batches or ("1,2,4" if cuda else "")).split(",") if b]
    for kind in filter(None, args.per_call.split(",")) if batches else []:
        pipe = _pipe_for(kind, args.device, cache)
        size = (1024 if kind == "sdxl" else 512) if cuda else 128
        eager = unet_call_times(pipe, size, batches)
        start = time.perf_counter()
        unet_call_times(pipe, size, batches, repeats=0, compile=compile)  # compiles every batch shape
        compile_s = time.perf_counter() - start
        compiled = unet_call_times(pipe, size, batches, compile=compile)
        row = {"kind": kind, "size": size, "compile_s": round(compile_s, 1),
               **{f"b{b} eager ms": eager[b] for b in batches}, **{f"b{b} compiled ms": compiled[b] for b in batches}}
        print(json.dumps(row), flush=True)
        lines.append(f"UNet per call (no rules), {'tiny' if not cuda else kind} {size}², eager → compiled (median of 20; "
                     f"compiling took {compile_s:.0f} s): " + ", ".join(f"b{b} {eager[b]} → {compiled[b]} ms" for b in batches))
    lines.append("")
    lines += ["| case | model | unet_calls | eager s | compiled first call s | compiled steady s | compile s | "
              "eager ms/call | compiled ms/call | speed-up | max abs diff |", "|" + " --- |" * 11]
    size = 512 if cuda else 128
    runs = [] if args.skip_methods else cases(size) if cuda else compile_cases(size, args.steps)  # GPU: defaults
    for name, kind, method in runs:
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        try:
            row = dict(case=name, model=("tiny 128²" if not cuda else f"{kind} {size}²"),
                       **compile_run(_pipe_for(kind, args.device, cache), method, compile))
            lines.append(f"| {name} | {row['model']} | {row['unet_calls']} | {row['eager_s']} | {row['compiled_first_s']} "
                         f"| {row['compiled_steady_s']} | {row['compile_s']} | {row['eager_ms_per_call']} | "
                         f"{row['compiled_ms_per_call']} | {row['speedup']}× | {row['max_abs_diff']:.1e} |")
        except Exception as error:  # noqa: BLE001 — report and go on
            row = dict(case=name, error=f"{type(error).__name__}: {error}"[:300])
            lines.append(f"| {name} | {kind} | error: {row['error']} |" + " |" * 8)
        print(json.dumps(row), flush=True)
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
