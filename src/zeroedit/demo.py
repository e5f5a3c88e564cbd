"""`zeroedit demo --out DIR`: every method plus inversion, and an index.html gallery (inputs, outputs,
parameters and stats side by side).

Offline it uses the embedded trained toy model (`ze.load("toy")`, 64 px, src/zeroedit/assets/toy/README.md)
on inputs drawn from the toy world (src/zeroedit/toy/), so the edits mean something: a colour changed by
translate and edit, a photo-style object composed into a sketch, a reference giving a shape its colour.
With --model (a real model, or "tiny") it runs on the bundled sample images with DEMO_STEPS steps.

Every input is written or copied into DIR/inputs and the runs name it relatively (`inputs/cat.png`), so the
folder can be moved: `zeroedit METHOD --config DIR/METHOD.json` reproduces a run from anywhere.
"""
from __future__ import annotations

import contextlib
import html
import json
import os
import shutil
import time
from pathlib import Path

DEMO_STEPS = 4
TOY_STEPS = 20
# The measured duration of the default demo (README, "Command line, demo and batch runs"; benchmarks/RESULTS.md).
MEASURED = ("16 s of wall time and 15 s of CPU time on the project's 2-core machine (median of 5 whole runs of "
            "<code>bash scripts/demo.sh --out /tmp/demo-out --quiet</code>, start-up included)")
INPUTS = "inputs"  # the inputs' folder inside the demo's output folder


def toy_inputs(out: Path) -> dict:
    """Toy-world inputs written as PNG files into out/inputs (paths relative to `out`, by role), and the scene's
    caption and compose case."""
    import numpy as np
    from PIL import Image

    from .toy.quality import ComposeCase, compose_cases, reference_image
    from .toy.world import Obj, Scene, render
    (out / INPUTS).mkdir(parents=True, exist_ok=True)
    paths = {}

    def save(name, image):
        paths[name] = f"{INPUTS}/{name}.png"
        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(out / paths[name])

    scene = Scene((Obj("square", "red", "large", 0.38, 0.42),), "stripes", "photo", 3)
    save("toy-scene", render(scene, 64)[0])
    case: ComposeCase = compose_cases(2, seed=0)[1]  # a sketch background: cross-domain
    save("toy-background", case.background)
    save("toy-reference", case.reference)
    save("toy-reference-mask", (case.reference_mask * 255).astype(np.uint8))
    save("toy-red-circle", reference_image(Obj("circle", "red", "large", 0.5, 0.5)))
    return dict(paths=paths, caption=scene.caption(), compose=case)


def _copy_assets(out: Path, *names: str) -> list[str]:
    """Copy bundled sample images into out/inputs; their paths relative to `out`."""
    from .runner import asset
    (out / INPUTS).mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(asset(name), out / INPUTS / name)
    return [f"{INPUTS}/{name}" for name in names]


def toy_jobs(out: Path, steps: int = TOY_STEPS) -> list[dict]:
    """The demo's runs on the toy model and toy-world inputs (written into out/inputs; paths relative to `out`)."""
    from . import directions
    from .runner import load_pipeline
    made = toy_inputs(out)
    paths, caption, case = made["paths"], made["caption"], made["compose"]
    [cat] = _copy_assets(out, "cat.png")
    direction = f"{INPUTS}/red2blue.safetensors"
    pipe = load_pipeline("toy", "direction")
    directions.save(directions.build(pipe, "red", "blue", sentences=_toy_sentences()), out / direction, pipe, "red",
                    "blue")
    return [
        {"method": "invert", "id": "invert", "image": cat, "steps": steps},
        {"method": "compose", "id": "compose", "background": paths["toy-background"],
         "reference": paths["toy-reference"], "reference_mask": paths["toy-reference-mask"], "region": list(case.box), "prompt": case.prompt,
         "domain": case.domain, "steps": steps, "seed": 0},
        {"method": "translate", "id": "translate", "image": paths["toy-scene"], "source_prompt": caption,
         "prompt": caption.replace("red", "blue"), "negative_prompt": "", "guidance_scale": 5.0, "steps": steps},
        {"method": "edit", "id": "edit", "image": paths["toy-scene"], "source": "red", "target": "blue",
         "direction": direction, "caption": caption, "steps": steps, "reg_steps": 1, "seed": 0},
        # one reference: the toy adapter transfers colour reliably (94 %), two-object prompts it renders poorly
        # (see benchmarks/toy_quality.py); scale 4 because its image attention is weak (assets/toy/README.md)
        {"method": "personalize", "id": "personalize", "prompt": "a circle on stripes, photo style",
         "references": {"circle": paths["toy-red-circle"]}, "scale": 4.0,
         "negative_prompt": "", "steps": steps, "seed": 0},
    ]


def _toy_sentences():
    from .toy.quality import sentences
    return sentences("color")


def demo_jobs(out: Path, steps: int = DEMO_STEPS) -> list[dict]:
    """The demo's runs on the bundled sample images (for --model), copied into out/inputs."""
    bg, ref, mask, cat = _copy_assets(out, "background.png", "reference.png", "reference_mask.png", "cat.png")
    return [
        {"method": "invert", "id": "invert", "image": cat, "steps": steps},
        {"method": "compose", "id": "compose", "background": bg, "reference": ref, "reference_mask": mask,
         "region": [40, 40, 100, 100], "prompt": "a photograph of a ball on a table", "steps": steps, "seed": 0},
        {"method": "translate", "id": "translate", "image": cat, "prompt": "an oil painting of a cat",
         "steps": steps, "seed": 0},
        {"method": "edit", "id": "edit", "image": cat, "source": "cat", "target": "dog", "caption": "a cat",
         "steps": steps, "reg_steps": 1, "seed": 0},
        {"method": "personalize", "id": "personalize", "prompt": "a cat and a ball",
         "references": {"cat": cat, "ball": ref}, "steps": steps, "seed": 0},
    ]


@contextlib.contextmanager
def _one_thread():
    """Run on one intra-op thread, then restore torch's count. The toy model's layers (64 px) gain nothing from
    more threads, and on a busy machine torch's thread pool waits on descheduled threads: with another process
    busy on the same 2 cores the demo took 453 s with two threads and 15 s with one (benchmarks/RESULTS.md)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def demo(out: Path, model: str | None = None, quiet: bool = True, steps: int | None = None) -> list[dict]:
    """Run the demo into `out` and write out/index.html; return one record per run. model=None: the toy model
    on toy-world inputs, on one thread; otherwise that model on the bundled samples (loaded first: a model that
    cannot be found stops the demo before any run)."""
    if model is None:
        with _one_thread():
            return _demo(Path(out), None, quiet, steps or TOY_STEPS)
    from .runner import load_pipeline
    load_pipeline(model, "invert")
    return _demo(Path(out), model, quiet, steps or DEMO_STEPS)


def _demo(out: Path, model: str | None, quiet: bool, steps: int) -> list[dict]:
    from .runner import run_job
    wall, cpu = time.perf_counter(), time.process_time()
    jobs = toy_jobs(out, steps) if model is None else demo_jobs(out, steps)
    records = []
    for job in jobs:
        record = run_job(job, out, out, model or "toy", quiet=quiet)
        record["inputs"] = _input_names(job)
        record["args"] = {k: v for k, v in job.items() if k not in ("id", "method")}
        records.append(record)
        if not quiet:
            print(f"demo: {job['id']}: {record['status']}" + (f" ({record.get('error')})" if record["status"] != "ok" else ""))
    import torch
    took = dict(wall=time.perf_counter() - wall, cpu=time.process_time() - cpu, threads=torch.get_num_threads(),
                cores=os.cpu_count())
    (out / "index.html").write_text(gallery(records, model, steps, took), encoding="utf-8")
    if not quiet:
        print(f"demo: gallery at {out / 'index.html'} ({took['wall']:.0f} s)")
    return records


def _input_names(job: dict) -> list[str]:
    """The job's input images (paths relative to the demo folder), in role order."""
    names = []
    for key in ("image", "background", "reference", "reference_mask", "references"):
        values = job.get(key)
        names += list(values.values()) if isinstance(values, dict) else [values] if values else []
    return list(dict.fromkeys(names))


def gallery(records: list[dict], model: str | None, steps: int, took: dict | None = None) -> str:
    """index.html: one row per run: inputs | outputs | parameters | stats; `took`: this demo's wall and CPU
    seconds, torch's thread count and the machine's CPU count."""
    rows = []
    for r in records:
        imgs = lambda names: "".join(f'<img src="{html.escape(n)}" title="{html.escape(n)}">' for n in names)
        outputs = [o for o in r.get("outputs", []) if o.endswith(".png")]
        stats = {k: r.get("stats", {}).get(k) for k in ("unet_calls", "unet_evals", "seconds", "peak_memory_bytes")}
        body = imgs(outputs) if r["status"] == "ok" else f'<p class="err">{html.escape(r.get("error", ""))}</p>'
        rows.append(f"<tr><th>{html.escape(r['id'])}</th><td>{imgs(r['inputs'])}</td><td>{body}</td>"
                    f"<td><pre>{html.escape(json.dumps(r['args'], indent=1))}</pre></td>"
                    f"<td><pre>{html.escape(json.dumps(stats, indent=1))}</pre></td></tr>")
    note = (f"model: {html.escape(model)}" if model else
            "model: the embedded toy model, trained by this project on the toy world (64 px; see "
            "src/zeroedit/assets/toy/README.md) &mdash; it knows only coloured shapes, so the cat is inverted "
            "and reconstructed, not understood")
    timing = "" if took is None else (
        f" Here the runs took {took['wall']:.0f} s of wall time and {took['cpu']:.0f} s of CPU time ({took['threads']} "
        f"torch thread(s) on {took['cores']} CPU cores, start-up not counted)"
        + ("" if model else f"; the whole default demo measured {MEASURED}") + ".")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>zeroedit demo</title><style>
body{{font-family:sans-serif}} img{{width:128px;image-rendering:pixelated;margin:2px;border:1px solid #ccc}}
td,th{{vertical-align:top;padding:6px;border-bottom:1px solid #ddd}} pre{{font-size:11px}} .err{{color:#b00}}
</style></head><body><h1>zeroedit demo</h1>
<p>{note}. Every method runs with {steps} steps (the methods' defaults are 20&ndash;50).{timing} Each output has
a JSON sidecar beside it: <code>zeroedit METHOD --config NAME.json</code> reproduces it.</p>
<table><tr><th>run</th><th>inputs</th><th>outputs</th><th>parameters</th><th>stats</th></tr>
{''.join(rows)}</table></body></html>
"""
