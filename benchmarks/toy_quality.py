"""Quality with ground truth on the project's trained toy model (issue 8): every method against a naive
baseline on fixed, seeded toy-world cases, scored with the analytic detectors (src/zeroedit/toy/quality.py).

    python benchmarks/toy_quality.py            # all sections, CPU (~20 min on 2 idle cores)
    python benchmarks/toy_quality.py --quick    # a small subset (~3 min)
    python benchmarks/toy_quality.py --only translate compose
    python benchmarks/toy_quality.py --only translate-flow    # translate on ze.load("toy-flow") (SD3 layout)
    python benchmarks/toy_quality.py --only compose-flow edit-flow    # compose / edit on ze.load("toy-flow")

Prints Markdown tables. `run(pipe, quick=False, only=None, ip_pipe=None, flow_pipe=None) -> dict` takes
`ze.load("toy")`, for personalize `ze.load("toy", ip_adapter=True)` and for the -flow sections `ze.load("toy-flow")`
(an SD3 pipeline; translate-flow's rows: `zeroedit.toy.flow.FLOW_TRANSLATE_SETTINGS`, compose-flow's and edit-flow's:
`zeroedit.toy.quality_flow`), on any device. Settings shared by all sections: 20 steps (the methods'
defaults are 20–50), guidance 5, negative prompt "" (the toy tokenizer knows only the world's words).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import zeroedit as ze  # noqa: E402
from zeroedit.toy import flow as toy_flow  # noqa: E402
from zeroedit.toy import quality as Q  # noqa: E402
from zeroedit.toy import quality_flow as QF  # noqa: E402

FULL = {"translate": 24, "edit": 16, "compose": 24, "personalize": 16, "inversion": 8, "translate-flow": 24,
        "compose-flow": 24, "edit-flow": 16}
QUICK = {"translate": 4, "edit": 4, "compose": 3, "personalize": 4, "inversion": 4, "translate-flow": 4,
         "compose-flow": 3, "edit-flow": 4}
FLOW_SECTIONS = ("translate-flow", "compose-flow", "edit-flow")  # on ze.load("toy-flow"); no personalize-flow: the
# toy flow model has no IP-Adapter (it would need one trained for it)
SECTIONS = tuple(FULL)


def _rates(scores: list[dict]) -> dict:
    return {key: Q.rate(s[key] for s in scores) for key in scores[0]}


def _edit_rows(results: dict, cases: list[Q.EditCase]) -> list[dict]:
    rows = []
    for name, scores in results.items():
        row = dict(method=name, **_rates(scores))
        row["success"] = Q.rate(s["target"] and s["iou"] >= 0.5 for s in scores)
        for kind in dict.fromkeys(c.kind for c in cases):
            row[f"target {kind}"] = Q.rate(s["target"] for s, c in zip(scores, cases) if c.kind == kind)
        rows.append(row)
    return rows


def section_translate(pipe, n):
    cases = Q.edit_cases(n, kinds=("color", "style"), seed=0)
    settings = {"PnP (features 0.8, q/k 0.5)": dict(feature_steps=0.8, attention_steps=0.5),
                "inversion + prompt swap (no injection)": dict(feature_steps=0, attention_steps=0)}
    return _edit_rows(Q.run_translate(pipe, cases, settings=settings), cases)


def section_edit(pipe, n):
    cases = Q.edit_cases(n, kinds=("color", "shape"), seed=100)
    return _edit_rows(Q.run_edit(pipe, cases), cases)


def _compose_rows(results: dict, cases) -> list[dict]:
    """One row per method: its rates, and the style rate per background style."""
    rows = []
    for name, scores in results.items():
        row = dict(method=name, **_rates(scores))
        for style in dict.fromkeys(c.scene.style for c in cases):
            row[f"style ok on {style}"] = Q.rate(s["style"] for s, c in zip(scores, cases) if c.scene.style == style)
        rows.append(row)
    return rows


def section_compose(pipe, n):
    cases = Q.compose_cases(n, seed=0)
    return _compose_rows(Q.run_compose(pipe, cases), cases)


def section_personalize(pipe, n):
    rows = []
    for scale, label in ((0.0, "no image prompt (scale 0: the chance level)"), (4.0, "IP-Adapter, one reference (scale 4)")):
        single = Q.run_personalize(pipe, Q.personalize_cases(n, 1, seed=0), scale=scale,
                                   settings={"IP-Adapter": dict(weighting="uniform")})
        rows.append(dict(references=1, method=label, **_rates(next(iter(single.values())))))
    for objects in (2, 3):
        cases = Q.personalize_cases(n, objects, seed=0)
        for name, scores in Q.run_personalize(pipe, cases).items():
            rows.append(dict(references=objects, method=name, **_rates(scores)))
    return rows


def section_translate_flow(pipe, n):
    """The same cases as the UNet's translate rows, on the toy flow model (`ze.load("toy-flow")`): zeroedit's
    flow translate (the rows of `zeroedit.toy.flow.FLOW_TRANSLATE_SETTINGS`) vs inversion + prompt swap
    written with diffusers' own StableDiffusion3Pipeline (`zeroedit.toy.flow.run_translate_flow`)."""
    cases = Q.edit_cases(n, kinds=("color", "style"), seed=0)
    return _edit_rows(toy_flow.run_translate_flow(pipe, cases), cases)


def section_compose_flow(pipe, n):
    """The compose cases on the toy flow model: TF-ICON's composite attention, KV-Edit's kept background K/V
    (the flow default), no injection, cut-and-paste (toy/quality_flow.py)."""
    cases = Q.compose_cases(n, seed=0)
    return _compose_rows(QF.run_compose_flow(pipe, cases), cases)


def section_edit_flow(pipe, n):
    """The edit cases on the toy flow model: pix2pix-zero (image→text guidance) vs word swap, as section_edit."""
    return section_edit(pipe, n)


def section_inversion(pipe, n):
    return [dict(method=name, **{f"{s} steps": v for s, v in by_steps.items()})
            for name, by_steps in Q.run_inversion(pipe, Q.inversion_images(n)).items()]


def run(pipe, quick: bool = False, only=None, ip_pipe=None, flow_pipe=None) -> dict:
    """{section: {"cases": n, "seconds": s, "rows": [...]}} for the chosen sections. `ip_pipe`: the toy model
    with its IP-Adapter (`ze.load("toy", ip_adapter=True)`) for personalize; the other methods need a
    pipeline without one (diffusers' UNet then demands image embeddings in every call). `flow_pipe`: the toy
    flow model (`ze.load("toy-flow")`, loaded on `pipe`'s device if not given) for the -flow sections."""
    counts = QUICK if quick else FULL
    out = {}
    for name in only or SECTIONS:
        start = time.perf_counter()
        if name in FLOW_SECTIONS and flow_pipe is None:
            flow_pipe = ze.load("toy-flow", device=pipe.device if pipe is not None else None)
        section_pipe = ip_pipe if name == "personalize" else flow_pipe if name in FLOW_SECTIONS else pipe
        rows = globals()[f"section_{name.replace('-', '_')}"](section_pipe, counts[name])
        out[name] = dict(cases=counts[name], seconds=round(time.perf_counter() - start, 1), rows=rows)
    return out


def _cell(value, key: str = "") -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value != value:
        return "–"
    if isinstance(value, float) and key == "iou":
        return f"{value:.2f}"
    if isinstance(value, float):
        return "∞ (unchanged)" if value > 99 else f"{value:.1f}" if value > 1.5 else f"{100 * value:.0f} %"
    return str(value)


def markdown(results: dict) -> str:
    titles = dict(
        translate="translate (PnP) vs inversion + prompt swap — colour or style changed by the prompt; structure = "
                  "IoU of the object's mask with the source's; success = target reached and IoU ≥ 0.5",
        edit="edit (pix2pix-zero) vs word swap — colour or shape; directions from toy-world sentences; success = "
             "target reached and IoU ≥ 0.5",
        compose="compose (TF-ICON) vs cut-and-paste vs no attention injection — object in the region (its colour, "
                "and its shape), inserted object drawn in the background's style, background PSNR (dB) outside",
        personalize="personalize (MIP relevance) vs uniform IP-Adapter merge, IP-Adapter scale 4 — prompt without colour words, one "
                    "reference per shape; correct = the reference's colour on its object, confused = on another's",
        inversion="inversion: reconstruction PSNR (dB) of invert → reconstruct, mean over images",
        **{"translate-flow": "translate on the toy flow model (SD3 layout) vs inversion + prompt swap (Euler "
                             "inversion with the source prompt, diffusers' StableDiffusion3Pipeline from the inverted "
                             "noise with the target prompt) — the translate cases; structure = IoU of the object's "
                             "mask with the source's; success = target reached and IoU ≥ 0.5",
           "compose-flow": "compose on the toy flow model: TF-ICON composite attention vs KV-Edit's background K/V vs "
                           "no attention injection vs cut-and-paste — the compose cases and scores",
           "edit-flow": "edit (pix2pix-zero, image→text guidance) on the toy flow model vs word swap — the edit "
                        "cases; success = target reached and IoU ≥ 0.5"})
    parts = []
    for name, section in results.items():
        rows = section["rows"]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        parts.append(f"**{titles[name]}** ({section['cases']} cases, {section['seconds']} s)\n")
        parts.append("| " + " | ".join(keys) + " |")
        parts.append("| " + " | ".join("---" for _ in keys) + " |")
        parts.extend("| " + " | ".join(_cell(r.get(k, ""), k) for k in keys) + " |" for r in rows)
        parts.append("")
    return "\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small subset of the cases")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="sections to run (default: all)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    only = args.only or SECTIONS
    pipe = ze.load("toy", device=args.device)
    ip_pipe = ze.load("toy", ip_adapter=True, device=args.device) if "personalize" in only else None
    flow_pipe = ze.load("toy-flow", device=args.device) if set(FLOW_SECTIONS) & set(only) else None
    results = run(pipe, quick=args.quick, only=only, ip_pipe=ip_pipe, flow_pipe=flow_pipe)
    print(markdown(results))
    print(f"total {time.perf_counter() - start:.0f} s ({'quick' if args.quick else 'full'}, {args.device})")
    return results


if __name__ == "__main__":
    main()
