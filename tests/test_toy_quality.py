"""Semantic tests on the trained toy model (issue 8): each method beats its naive baseline on its key metric,
on a small fixed subset of benchmarks/toy_quality.py's cases (src/zeroedit/toy/quality.py), by a margin
well inside what was measured. Deterministic (seeded cases, seeded methods). Margins measured on CPU,
torch 2.13, with these exact settings (see each test's docstring).
"""
import pytest

import zeroedit as ze
from zeroedit.toy import quality as Q


@pytest.fixture(scope="module")
def toy():
    return ze.load("toy")


def _mean(scores, key):
    return Q.rate(s[key] for s in scores)


def test_translate_pnp_keeps_structure_where_the_prompt_swap_does_not(toy):
    """Colour changed by the prompt, 10 steps, 2 cases. Measured IoU with the source mask: PnP 0.88 / 0.81,
    inversion + prompt swap 0.00 / 0.32; target colour reached by both. Margin asserted: 0.3."""
    results = Q.run_translate(toy, Q.edit_cases(2, kinds=("color",), seed=0), steps=10)
    pnp, swap = results.values()
    assert _mean(pnp, "target") == 1.0
    assert _mean(pnp, "iou") >= _mean(swap, "iou") + 0.3, (pnp, swap)
    assert min(s["iou"] for s in pnp) >= 0.6


def test_compose_draws_the_object_in_the_backgrounds_style(toy):
    """Photo-style object into sketch backgrounds (cases 1 and 4), 10 steps. Measured: TF-ICON puts the object
    in the region as an outline in both, cut-and-paste pastes a filled object (style 0/2); TF-ICON keeps the
    background at 30.0 / 19.9 dB outside the region."""
    cases = [c for c in Q.compose_cases(6, seed=0) if c.scene.style == "sketch"]
    assert len(cases) == 2
    results = Q.run_compose(toy, cases, steps=10)
    tficon, paste = results["TF-ICON"], results["cut-and-paste"]
    assert _mean(tficon, "present") == 1.0
    assert _mean(tficon, "style") >= _mean(paste, "style") + 0.5, (tficon, paste)
    assert min(s["bg_psnr"] for s in tficon) >= 17.0


def test_edit_reaches_the_target_colour(toy):
    """pix2pix-zero with a direction built from toy-world sentences, 10 steps, 1 regulariser round. On the toy
    model it does NOT beat the word-swap baseline on structure (benchmark table); what it must do is move the
    colour: red → blue here, where the reconstruction with a zero direction keeps red."""
    case = [c for c in Q.edit_cases(8, kinds=("color",), seed=100)][0]
    direction = ze.directions.build(toy, case.old, case.new, sentences=Q.sentences("color"))
    common = dict(source=case.old, target=case.new, caption=case.source_prompt, steps=10, reg_steps=1, seed=0)
    edited = Q.score_edit(case, ze.edit(toy, case.image, direction=direction, **common).image)
    kept = Q.score_edit(case, ze.edit(toy, case.image, direction=direction * 0, **common).image)
    assert edited["target"] and not kept["target"], (edited, kept)


def test_inversion_dpm_solver_beats_ddim_at_10_steps(toy):
    """Reconstruction PSNR over 2 images, 10 steps, empty prompt: DPM-Solver++ 34.3 dB (= the VAE's own round
    trip), DDIM 24.9 dB. Margin asserted: 5 dB."""
    results = Q.run_inversion(toy, Q.inversion_images(2), steps=(10,))
    assert results["DPM-Solver++, empty prompt"][10] >= results["DDIM, empty prompt"][10] + 5.0, results


@pytest.fixture(scope="module")
def toy_ip():
    return ze.load("toy", ip_adapter=True)


def _colour_share(image, color):
    """Share of the image's coloured pixels that are `color`."""
    import numpy as np
    from zeroedit.toy.detect import _hue_labels
    labels = _hue_labels(np.asarray(image))
    return float((labels == list(Q.COLORS).index(color)).sum() / max((labels >= 0).sum(), 1))


def test_personalize_toy_adapter_transfers_the_reference_colour(toy_ip):
    """One reference of each colour, prompt "a circle on a plain background, photo style", 10 steps. Measured
    share of the reference's colour among coloured pixels: scale 4 → 0.99 / 1.0 / 0.83 / 1.0 / 1.0; scale 0 (no
    image prompt) → the model's default blue for every reference (0.2 on average)."""
    shares = {0.0: [], 4.0: []}
    for index, color in enumerate(Q.COLORS):
        reference = Q.reference_image(Q.Obj("circle", color, "large", 0.5, 0.5))
        for scale in shares:
            out = ze.personalize(toy_ip, "a circle on a plain background, photo style", {"circle": reference},
                                 scale=scale, steps=10, guidance_scale=5.0, negative_prompt="", seed=index)
            shares[scale].append(_colour_share(out.image, color))
    assert sum(shares[4.0]) / 5 >= 0.8 and min(shares[4.0]) >= 0.6, shares
    assert sum(shares[0.0]) / 5 <= 0.3, shares


def test_personalize_relevance_keyed_inside_the_prompt_has_more_contrast(toy_ip):
    """The toy's causal text encoder embeds a later phrase by its context, so the paper's phrase-alone maps
    are nearly flat; keyed by the phrase's tokens inside the prompt they are not. 2 two-object cases, 10 steps.
    Measured std of the averaged maps: alone 0.015 / 0.006, prompt 0.034 / 0.021. Asserted: ≥ 1.5×."""
    for case in Q.personalize_cases(2, 2, seed=0):
        std = {}
        for encoding in ("alone", "prompt"):
            out = ze.personalize(toy_ip, case.prompt, case.references(), scale=4.0, steps=10, guidance_scale=5.0,
                                 negative_prompt="", seed=case.seed, phrase_encoding=encoding)
            std[encoding] = out.relevance_maps[0].std().item()
        assert std["prompt"] >= 1.5 * std["alone"], (case.prompt, std)
