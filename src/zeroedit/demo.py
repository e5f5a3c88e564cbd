"""`zeroedit demo --out DIR`: every method plus inversion on the bundled sample images, and an index.html
gallery (inputs, outputs, parameters and stats side by side).

Offline it uses the embedded random-weight tiny model, so the pictures show the plumbing, not quality; the
demo uses few steps (DEMO_STEPS) to stay under a minute on 2 CPU cores. Pass --model for a real model.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

DEMO_STEPS = 4


def demo_jobs(steps: int = DEMO_STEPS) -> list[dict]:
    """The demo's runs: (method, name, arguments) on the bundled assets."""
    from .cli import asset
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


def demo(out: Path, model: str | None = None, quiet: bool = True, steps: int = DEMO_STEPS) -> list[dict]:
    """Run the demo into `out` and write out/index.html; return one record per run."""
    from .batch import run_job
    out = Path(out)
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    records = []
    for job in demo_jobs(steps):
        model_for = model or ("tiny" if job["method"] != "personalize" else "tiny-xl")
        record = run_job(job, Path.cwd(), out, model_for, quiet=quiet)
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
            "model: the embedded random-weight tiny model (offline) &mdash; outputs show the pipeline, not quality")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>zeroedit demo</title><style>
body{{font-family:sans-serif}} img{{width:128px;image-rendering:pixelated;margin:2px;border:1px solid #ccc}}
td,th{{vertical-align:top;padding:6px;border-bottom:1px solid #ddd}} pre{{font-size:11px}} .err{{color:#b00}}
</style></head><body><h1>zeroedit demo</h1>
<p>{note}. Every method runs with only {steps} steps to keep the demo under a minute on 2 CPU cores
(the methods' defaults are 20&ndash;50). Each output has a JSON sidecar beside it: <code>zeroedit METHOD --config
NAME.json</code> reproduces it.</p>
<table><tr><th>run</th><th>inputs</th><th>outputs</th><th>parameters</th><th>stats</th></tr>
{''.join(rows)}</table></body></html>
"""
