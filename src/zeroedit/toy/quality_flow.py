"""Quality on the toy world for compose and edit on the toy flow model (`ze.load("toy-flow")`, issue 17): the same
seeded cases, baselines and scores as the UNet rows of toy/quality.py (benchmarks/toy_quality.py's compose-flow
and edit-flow sections).

personalize has no flow section: the toy flow model has no IP-Adapter (one would have to be trained for it, as
the toy UNet's was); the FLUX personalize path is tested on tiny-flux with a random adapter only.
"""
from __future__ import annotations

import torch

from .quality import ComposeCase, EditCase, cut_and_paste, score_compose, score_edit, sentences

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


def word_swap_direction_flow(pipe, case: EditCase):
    """Δ = E(target caption) − E(source caption) in both of the flow model's text spaces (token states and
    pooled vector): added to the caption's conditioning it gives exactly the swapped caption's."""
    from ..backbones import Cond, FlowBackbone
    backbone = FlowBackbone(pipe)
    with torch.no_grad():
        a, b = backbone.encode_prompt(case.source_prompt), backbone.encode_prompt(case.target_prompt)
    return Cond((b.embeds - a.embeds).float(), (b.pooled - a.pooled).float())


def run_edit_flow(pipe, cases: list[EditCase], steps: int = 20, guidance: float = 5.0, reg_steps: int = 5,
                  xa_guidances: tuple[float, ...] = (0.1, 3.0)) -> dict:
    """pix2pix-zero on the flow model (direction from toy-world sentences, cross-attention guidance on the
    image→text block at each step size in `xa_guidances`) vs word swap (the same regularised inversion and
    sampling with Δ = E(swapped caption) − E(caption) and no guidance), as toy/quality.run_edit for the UNet."""
    import zeroedit as ze
    names = {xa: f"pix2pix-zero (xa_guidance {xa:g})" for xa in xa_guidances}
    results = {**{name: [] for name in names.values()}, "word swap": []}
    for case in cases:
        direction = ze.directions.build(pipe, case.old, case.new, sentences=sentences(case.kind))
        common = dict(caption=case.source_prompt, steps=steps, guidance_scale=guidance, reg_steps=reg_steps, seed=0)
        for xa, name in names.items():
            out = ze.edit(pipe, case.image, source=case.old, target=case.new, direction=direction, xa_guidance=xa,
                          **common)
            results[name].append(score_edit(case, out.image))
        out = ze.edit(pipe, case.image, source=case.old, target=case.new, direction=word_swap_direction_flow(pipe, case),
                      xa_guidance=0.0, **common)
        results["word swap"].append(score_edit(case, out.image))
    return results
