"""Quality on the toy world for compose on the toy flow model (`ze.load("toy-flow")`, issue 17): the same seeded
cases, baseline and scores as the UNet rows of toy/quality.py (benchmarks/toy_quality.py's compose-flow section;
its edit-flow section runs toy/quality.run_edit, which takes a UNet or a flow pipeline).

personalize has no flow section: the toy flow model has no IP-Adapter (one would have to be trained for it, as
the toy UNet's was); the FLUX personalize path is tested on tiny-flux with a random adapter only.
"""
from __future__ import annotations

from .quality import ComposeCase, cut_and_paste, score_compose

COMPOSE_FLOW_SETTINGS = {  # {row: ze.compose arguments}; methods/tficon_flow.py documents each value
    "TF-ICON composite attention": dict(attention="composite"),
    "TF-ICON composite, exceptional-prompt inversion": dict(attention="composite", inversion_prompt="exceptional"),
    "KV-Edit: background K/V kept (tau_a window; flow default)": {},
    "KV-Edit: background K/V kept (every step, as KV-Edit)": dict(tau_a=1.0),
    "no attention injection (tau_a=0)": dict(tau_a=0.0),
}


def run_compose_flow(pipe, cases: list[ComposeCase], steps: int = 20, settings=None) -> dict:
    """compose on a flow pipeline per `settings` row vs pixel cut-and-paste; domain "same" for photo backgrounds,
    else "cross", as the UNet rows. Returns {row: [scores]}."""
    import zeroedit as ze
    settings = COMPOSE_FLOW_SETTINGS if settings is None else settings
    results = {**{name: [] for name in settings}, "cut-and-paste": []}
    for case in cases:
        common = dict(reference_mask=case.reference_mask, prompt=case.prompt, domain=case.domain, steps=steps, seed=0)
        for name, kw in settings.items():
            out = ze.compose(pipe, case.background, case.reference, case.box, **{**common, **kw})
            results[name].append(score_compose(case, out.image))
        results["cut-and-paste"].append(score_compose(case, cut_and_paste(case)))
    return results
