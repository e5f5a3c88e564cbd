"""compose (TF-ICON): budgets, background preservation, the composite attention's blocks, geometry, errors."""
import types

import numpy as np
import pytest
import torch
from PIL import Image

import zeroedit as ze
from zeroedit.control import Controller
from zeroedit.errors import ImageError, MaskError, ParameterError
from zeroedit.methods.tficon import CompositeSelfAttention, latent_masks, place_reference

from conftest import make_image, processors_snapshot

BG = make_image(0, (192, 128))
REF = make_image(1, (64, 64))
SEG = np.zeros((64, 64), bool)
SEG[16:48, 12:52] = True
BOX = (40, 30, 100, 90)
SIZE = 192  # working long side = the background's own (the tiny model's default would be 128)


def test_budget_at_defaults(tiny_pipe):
    out = ze.compose(tiny_pipe, BG, REF, region=BOX, reference_mask=SEG, prompt="a painting", seed=0)
    assert out.stats.unet_calls == 40 <= 42  # 20 inversion (batched) + 20 sampling
    assert out.stats.unet_evals == 2 * 20 + 2 + 2 * 20 <= 120
    assert out.image.size == (192, 128)
    assert out.stats.params["guidance_scale"] == 5.0 and out.stats.params["injection_calls"] == 7


def test_background_is_preserved_outside_the_region(tiny_pipe):
    """During the first k_b updates the latent outside the region is the background's own inversion latent
    at that time (checked against ze.invert of the background alone); inside it is not."""
    seen = {}

    def keep(pipe, step, t, kwargs):
        seen[step] = kwargs["latents"].clone()
        return kwargs

    steps = 6
    out = ze.compose(tiny_pipe, BG, REF, region=BOX, reference_mask=SEG, steps=steps, tau_b=1.0, seed=0,
                     output_type="latent", callback_on_step_end=keep, size=SIZE)
    k_b = out.stats.params["preservation_updates"]
    assert k_b == steps - 1  # int(tau_b·steps + 1 − 2), as the reference
    inversion = ze.invert(tiny_pipe, BG, method="dpmpp", prompt="exceptional", steps=steps, size=SIZE).latents[:, 0]
    region, _ = latent_masks(out.stats.extra["regions"][0], np.ones((128, 192), bool), (192, 128), 8)
    outside = region[0, 0] == 0
    for step in range(k_b):
        level = inversion[steps - step - 1]
        assert torch.allclose(seen[step][0][:, outside], level[:, outside], atol=1e-3)
        assert not torch.allclose(seen[step][0][:, ~outside], level[:, ~outside], atol=1e-2)


def _fake_ctx(controller, grid, scale=1.0):
    return types.SimpleNamespace(name="layer", controller=controller, grid=grid, scale=scale, attn=types.SimpleNamespace(scale=scale),
                                 branch=controller.branch)


def test_composite_attention_blocks():
    """Each block of the composite logits comes from where TF-ICON says (Sec. 3.3)."""
    h = w = 4
    region = torch.zeros(1, 1, h, w)
    region[..., 1:3, 1:3] = 1
    foreground = torch.zeros(1, 1, h, w)
    foreground[..., 1, 1:3] = 1
    rule = CompositeSelfAttention(["layer"], None, {}, [(region, foreground)])
    controller = Controller()
    controller.set_call(0, 0.5, [("bg", 1), ("ref0", 1), ("uncond", 1), ("cond", 1)], (h, w))
    q, k = torch.randn(4, 1, h * w, 8), torch.randn(4, 1, h * w, 8)
    rule.qkv(None, q, k, None)
    own = q @ k.transpose(-1, -2)
    out = rule.logits(_fake_ctx(controller, (h, w)), own.clone())
    generated, background, reference = own[3, 0], own[0, 0], own[1, 0]
    inside = region.flatten().bool()
    fg = foreground.flatten().bool()
    composite = out[3, 0]
    assert torch.equal(out[:3], own[:3])  # only the conditional branch changes
    both_out = (~inside)[:, None] & (~inside)[None, :]
    assert torch.allclose(composite[both_out], background[both_out])
    assert torch.allclose(composite[fg][:, fg], reference[fg][:, fg])  # foreground block
    rows = ~fg
    assert torch.allclose(composite[rows][:, fg], reference[rows][:, fg])  # pseudo cross: all rows × fg columns
    assert torch.allclose(composite[fg][:, rows], reference.T[fg][:, rows])  # and its transpose
    rest = inside[:, None] & ~fg[None, :] & ~fg[:, None]
    assert torch.allclose(composite[rest], generated[rest])  # the rest keeps the generation's own logits


def test_regions_at_and_across_the_border(tiny_pipe):
    for box in [(150, 90, 230, 170), (-30, -20, 40, 40), (0, 0, 192, 128)]:
        out = ze.compose(tiny_pipe, BG, REF, region=box, reference_mask=SEG, steps=4, seed=0, size=SIZE)
        x0, y0, x1, y1 = out.stats.extra["regions"][0]
        assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 128
        assert out.image.size == (192, 128)


def test_mask_region_equals_its_box(tiny_pipe):
    mask = np.zeros((128, 192), np.uint8)
    mask[30:90, 40:100] = 255
    a = ze.compose(tiny_pipe, BG, REF, region=mask, reference_mask=SEG, steps=4, seed=1, output_type="latent")
    b = ze.compose(tiny_pipe, BG, REF, region=BOX, reference_mask=SEG, steps=4, seed=1, output_type="latent")
    assert torch.equal(a.images, b.images)


def test_seed_determines_the_noise(tiny_pipe):
    run = lambda seed: ze.compose(tiny_pipe, BG, REF, region=BOX, reference_mask=SEG, steps=4, seed=seed,  # noqa: E731
                                  output_type="latent", size=SIZE).images
    first = run(3)
    assert first.shape == (1, 4, 128 // 8, 192 // 8)  # output_type="latent": the background's latent grid
    assert torch.equal(first, run(3))
    assert not torch.equal(run(3), run(4))


def test_two_objects_and_same_domain(tiny_pipe):
    two = ze.compose(tiny_pipe, BG, [REF, make_image(2, (48, 64))], region=[BOX, (120, 20, 180, 100)],
                     reference_mask=[SEG, None], steps=8, seed=0)
    assert two.stats.params["injection_calls"] == 2  # int(0.4·8 + 1 − 2)
    assert two.stats.unet_calls == 16 and two.stats.unet_evals == 3 * 8 + 3 + 2 * 8
    same = ze.compose(tiny_pipe, BG, REF, region=BOX, reference_mask=SEG, domain="same", steps=8, seed=0)
    # the composite is inverted too (3 rows); background and reference ride in the first step
    assert same.stats.params["guidance_scale"] == 2.5 and same.stats.unet_evals == 3 * 8 + 2 + 2 * 8


def test_placement_keeps_the_reference_aspect():
    canvas, seg, rect = place_reference(Image.new("RGB", (40, 20), (255, 0, 0)), np.ones((20, 40), bool),
                                        (20, 20, 100, 60), (128, 128))
    assert rect == (20, 20, 100, 60) and seg.sum() == 80 * 40
    assert np.asarray(canvas)[40, 60, 0] == 255 and np.asarray(canvas)[10, 10].sum() == 0


def test_sdxl_runs(tiny_xl_pipe):
    out = ze.compose(tiny_xl_pipe, BG, REF, region=BOX, reference_mask=SEG, steps=4, seed=0)
    assert out.image.size == (192, 128) and out.stats.unet_calls == 8


def test_pipeline_restored_also_after_an_error(tiny_pipe):
    before = processors_snapshot(tiny_pipe)

    def boom(pipe, step, t, kwargs):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        ze.compose(tiny_pipe, BG, REF, region=BOX, steps=4, callback_on_step_end=boom)
    assert processors_snapshot(tiny_pipe) == before


@pytest.mark.parametrize("kwargs, error", [
    (dict(region=np.zeros((128, 192), np.uint8)), MaskError), (dict(region=(10, 10, 5, 20)), MaskError),
    (dict(region=(300, 300, 400, 400)), MaskError), (dict(reference_mask=np.zeros((64, 64), bool)), MaskError),
    (dict(reference_mask=np.ones((10, 10), bool)), MaskError), (dict(domain="photo"), ParameterError),
    (dict(tau_a=1.5), ParameterError), (dict(steps=1), ParameterError), (dict(order=3), ParameterError),
    (dict(reference=[REF, REF], region=[BOX]), ParameterError), (dict(reference="/missing.png"), ImageError),
    (dict(output_type="gif"), ParameterError), (dict(preset="best"), ParameterError)])
def test_bad_input_is_refused_before_model_work(tiny_pipe, kwargs, error):
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        args = dict(background=BG, reference=REF, region=BOX) | kwargs
        with pytest.raises(error):
            ze.compose(tiny_pipe, args.pop("background"), args.pop("reference"), args.pop("region"), **args)
    finally:
        handle.remove()
    assert not calls
