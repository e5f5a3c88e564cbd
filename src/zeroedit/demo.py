"""`zeroedit demo --out DIR`: every method plus inversion, and an index.html gallery (inputs, outputs,
parameters and stats side by side).

Offline it uses the embedded trained toy model (`ze.load("toy")`, 64 px, src/zeroedit/assets/toy/README.md)
on inputs drawn from the toy world (src/zeroedit/toy/), so the edits mean something: a colour changed by
translate and edit, a photo-style object composed into a sketch, a reference giving a shape its colour.
TOY_STEPS steps keep it under a minute on 2 CPU cores. With --model (a real model, or "tiny") it runs on the
bundled sample images with DEMO_STEPS steps.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

DEMO_STEPS = 4
TOY_STEPS = 20


def toy_inputs(folder: Path) -> dict:
    """Toy-world inputs written as PNG files into `folder` (paths by role), and the edit direction."""
    import numpy as np
    from PIL import Image

    from .toy.quality import ComposeCase, compose_cases, reference_image, sentences
    from .toy.world import Obj, Scene, render
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}

    def save(name, image):
        paths[name] = str(folder / f"{name}.png")
        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(paths[name])

    scene = Scene((Obj("square", "red", "large", 0.38, 0.42),), "stripes", "photo", 3)
    save("toy-scene", render(scene, 64)[0])
    case: ComposeCase = compose_cases(2, seed=0)[1]  # a sketch background: cross-domain
    save("toy-background", case.background)
    save("toy-reference", case.reference)
    save("toy-reference-mask", (case.reference_mask * 255).astype(np.uint8))
    save("toy-red-circle", reference_image(Obj("circle", "red", "large", 0.5, 0.5)))
    return dict(paths=paths, caption=scene.caption(), compose=case)


def toy_jobs(folder: Path, steps: int = TOY_STEPS) -> list[dict]:
    """The demo's runs on the toy model and toy-world inputs."""
    from . import directions
    from .runner import asset, load_pipeline
    made = toy_inputs(folder)
    paths, caption, case = made["paths"], made["caption"], made["compose"]
    direction = str(folder / "red2blue.safetensors")
    pipe = load_pipeline("toy", "direction")
    directions.save(directions.build(pipe, "red", "blue", sentences=_toy_sentences()), direction, pipe, "red", "blue")
    return [
        {"method": "invert", "id": "invert", "image": str(asset("cat.png")), "steps": steps},
        {"method": "compose", "id": "compose", "background": paths["toy-background"], "reference": paths["toy-reference"],
         "reference_mask": paths["toy-reference-mask"], "region": list(case.box), "prompt": case.prompt,
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


def demo_jobs(steps: int = DEMO_STEPS) -> list[dict]:
    """The demo's runs: (method, name, arguments) on the bundled assets (for --model)."""
    from .runner import asset
    bg, ref, mask, cat = (str(asset(n)) for n in ("background.png", "reference.png", "reference_mask.png", "cat.png"))
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


def demo(out: Path, model: str | None = None, quiet: bool = True, steps: int | None = None) -> list[dict]:
    """Run the demo into `out` and write out/index.html; return one record per run. model=None: the toy model
    on toy-world inputs; otherwise that model on the bundled samples."""
    from .runner import run_job
    out = Path(out)
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    if model is None:
        steps = steps or TOY_STEPS
        jobs = toy_jobs(out / "inputs", steps)
    else:
        steps = steps or DEMO_STEPS
        jobs = demo_jobs(steps)
    records = []
    for job in jobs:
        record = run_job(job, Path.cwd(), out, model or "toy", quiet=quiet)
        record["inputs"] = _copy_inputs(job, out / "inputs")
        record["args"] = {k: v for k, v in job.items() if k not in ("id", "method")}
        records.append(record)
        if not quiet:
            print(f"demo: {job['id']}: {record['status']}" + (f" ({record.get('error')})" if record["status"] != "ok" else ""))
    (out / "index.html").write_text(gallery(records, model, steps), encoding="utf-8")
    if not quiet:
        print(f"demo: gallery at {out / 'index.html'}")
    return records


def _copy_inputs(job: dict, folder: Path) -> list[str]:
    names = []
    for key in ("image", "background", "reference", "reference_mask", "references"):
        values = job.get(key)
        values = list(values.values()) if isinstance(values, dict) else [values] if values else []
        for value in values:
            src = Path(value)
            if src.is_file():
                if src.resolve() != (folder / src.name).resolve():
                    shutil.copyfile(src, folder / src.name)
                names.append(f"inputs/{src.name}")
    return list(dict.fromkeys(names))


def gallery(records: list[dict], model: str | None, steps: int) -> str:
    """index.html: one row per run: inputs | outputs | parameters | stats."""
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
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>zeroedit demo</title><style>
body{{font-family:sans-serif}} img{{width:128px;image-rendering:pixelated;margin:2px;border:1px solid #ccc}}
td,th{{vertical-align:top;padding:6px;border-bottom:1px solid #ddd}} pre{{font-size:11px}} .err{{color:#b00}}
</style></head><body><h1>zeroedit demo</h1>
<p>{note}. Every method runs with {steps} steps to keep the demo under a minute on 2 CPU cores
(the methods' defaults are 20&ndash;50). Each output has a JSON sidecar beside it: <code>zeroedit METHOD --config
NAME.json</code> reproduces it.</p>
<table><tr><th>run</th><th>inputs</th><th>outputs</th><th>parameters</th><th>stats</th></tr>
{''.join(rows)}</table></body></html>
"""
