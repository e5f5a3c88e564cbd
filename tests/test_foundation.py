"""Foundation: loading, inputs, backbone counting, exceptional prompt, control core, inversions."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

import zeroedit as ze
from zeroedit.backbones import Backbone
from zeroedit.control import Controller, Inject, Record, Rule, attention_layers, from_branch
from zeroedit.errors import ImageError, MaskError, ModelError, ParameterError
from zeroedit.images import load_image, load_mask, prepare_image, round_size
from zeroedit.inversion import ddim_invert, ddim_sample, ddim_timesteps, dpmpp_trajectory
from zeroedit.inversion.dpm_solver import VPSchedule

from conftest import make_image, processors_snapshot
from oracles import GaussianModel


# ------------------------------------------------------------------ loading
def test_tiny_is_deterministic_and_sd_shaped():
    a, b = ze.load("tiny"), ze.load("tiny")
    for (name, p), (_, q) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.unet.conv_in.weight, ze.load("tiny", seed=1).unet.conv_in.weight)
    assert len(a.unet.down_blocks) == 4 and not hasattr(a.unet.up_blocks[0], "attentions")
    assert all(len(a.unet.up_blocks[i].attentions) == 3 for i in (1, 2, 3))
    assert 2 ** (len(a.vae.config.block_out_channels) - 1) == 8
    assert a.safety_checker is None


def test_tiny_xl_has_two_encoders(tiny_xl_pipe):
    assert tiny_xl_pipe.text_encoder_2 is not None
    assert Backbone(tiny_xl_pipe).is_xl


def test_hub_model_offline_says_how_to_use_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="local folder"):
        ze.load("nobody/not-a-model")


def test_local_folder_round_trip(tmp_path, tiny_pipe):
    tiny_pipe.save_pretrained(tmp_path / "m", safe_serialization=True)
    pipe = ze.load(str(tmp_path / "m"))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert torch.equal(pipe.unet.conv_in.weight, tiny_pipe.unet.conv_in.weight)
    with pytest.raises(ModelError, match="model_index.json"):
        ze.load(str(tmp_path))


def test_bad_dtype():
    with pytest.raises(ParameterError):
        ze.load("tiny", dtype="float7")


# ------------------------------------------------------------------ inputs
def _png(image: Image.Image) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def test_image_modes_convert_to_rgb(tmp_path):
    rgb = Image.fromarray(make_image(1, (40, 30)))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)  # fully transparent -> white
    assert np.asarray(load_image(rgba)).min() == 255
    for mode in ("L", "P", "LA"):
        assert load_image(rgb.convert(mode)).mode == "RGB"
    sixteen = Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16))
    path = tmp_path / "deep.png"
    sixteen.save(path)
    converted = np.asarray(load_image(str(path)))
    assert converted.shape == (30, 40, 3) and converted.max() > 200
    assert load_image(np.zeros((8, 8, 3), np.float32)).size == (8, 8)
    assert load_image(torch.zeros(1, 3, 8, 8)).getpixel((0, 0)) == (0, 0, 0)  # floats in [0, 1], as diffusers
    with pytest.raises(ImageError, match=r"\(x \+ 1\) / 2"):  # a [-1, 1] tensor is refused with the conversion
        load_image(torch.zeros(1, 3, 8, 8) - 1)


def test_image_errors(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(str(tmp_path / "bad.png"))
    with pytest.raises(ImageError):
        load_image(np.zeros((5, 5, 7)))
    with pytest.raises(MaskError):
        load_mask(str(tmp_path / "missing.png"))


def test_sizes_are_rounded_to_multiples_of_64():
    assert round_size(500, 375) == (512, 384)
    assert round_size(1000, 600, size=512) == (512, 320)
    assert prepare_image(make_image(0, (100, 70))).size == (128, 64)


# ------------------------------------------------------------------ backbone
def test_unet_evals_match_an_independent_count(tiny_pipe, image):
    calls, items = [], []

    def count(module, args):
        calls.append(1)
        items.append(args[0].shape[0])

    hook = tiny_pipe.unet.register_forward_pre_hook(count)
    try:
        result = ze.invert(tiny_pipe, [image, image], steps=3)
    finally:
        hook.remove()
    assert result.stats.unet_calls == len(calls) == 3
    assert result.stats.unet_evals == sum(items) == 6


@pytest.mark.parametrize("which", ["tiny_pipe", "tiny_xl_pipe"])
def test_exceptional_prompt_rows_identical_and_not_empty_prompt(which, request):
    backbone = Backbone(request.getfixturevalue(which))
    exceptional = backbone.exceptional_cond(2)
    assert exceptional.embeds.shape[:2] == (2, 77)
    assert torch.allclose(exceptional.embeds, exceptional.embeds[:, :1].expand_as(exceptional.embeds))
    empty = backbone.encode_prompt([""])
    assert not torch.allclose(exceptional.embeds[:1], empty.embeds, atol=1e-3)
    assert empty.embeds.shape[-1] == exceptional.embeds.shape[-1]
    if backbone.is_xl:
        assert exceptional.pooled.shape == (2, empty.pooled.shape[-1])


def test_encode_prompt_matches_pipeline(tiny_pipe):
    ours = Backbone(tiny_pipe).encode_prompt(["a red cat"]).embeds
    theirs = tiny_pipe.encode_prompt("a red cat", "cpu", 1, False)[0]
    assert torch.allclose(ours, theirs)


# ------------------------------------------------------------------ control core
def _x(seed=0, hw=(16, 16)):
    return torch.randn(1, 4, *hw, generator=torch.Generator().manual_seed(seed))


def test_inject_everything_from_source_reproduces_source(tiny_pipe):
    """Injecting q, k, v of every attention layer and the input of every resnet from branch `src` into `tgt`
    makes the target compute the source's function: with equal inputs elsewhere, outputs agree."""
    backbone = Backbone(tiny_pipe)
    cond = backbone.encode_prompt(["a cat", "a dog"])
    layers = attention_layers(tiny_pipe.unet, "attn1") + attention_layers(tiny_pipe.unet, "attn2")
    ctl = Controller()
    ctl.add(Inject(layers, what=("q", "k", "v"), source=from_branch("src"), targets=["tgt"]))
    x = _x(0)
    with torch.no_grad(), ctl.installed(tiny_pipe.unet):
        ctl.set_call(0, 500, [("src", 1), ("tgt", 1)], (16, 16))
        out = backbone.unet_call(torch.cat([x, x]), 500, cond)
        ctl.rules.clear()
        plain = backbone.unet_call(torch.cat([x, x]), 500, cond)
    # prompts differ, so without injection the branches differ; with q/k/v injected they coincide
    assert not torch.allclose(plain[0], plain[1], atol=1e-4)
    assert torch.allclose(out[0], out[1], atol=1e-5)


def test_record_without_changes_is_exact_and_restores(tiny_pipe):
    backbone = Backbone(tiny_pipe)
    cond = backbone.encode_prompt(["a cat"])
    layers = attention_layers(tiny_pipe.unet, "attn1")
    before = processors_snapshot(tiny_pipe)
    x = _x(1)
    with torch.no_grad():
        plain = backbone.unet_call(x, 300, cond)
        ctl = Controller()
        rec = ctl.add(Record(layers, what=("q", "logits", "probs"), branch="a", steps={0}))
        feats = ctl.add(Record(["up_blocks.1.resnets.1.conv2"], what="feature", target="feature"))
        with ctl.installed(tiny_pipe.unet):
            untouched = [k for k in tiny_pipe.unet.attn_processors if ".attn2" in k]
            assert all(tiny_pipe.unet.attn_processors[k] is not None for k in untouched)
            ctl.set_call(0, 300, [("a", 1)], (16, 16))
            out = backbone.unet_call(x, 300, cond)
            ctl.set_call(1, 300, [("a", 1)], (16, 16))  # outside the Record window
            backbone.unet_call(x, 300, cond)
    assert torch.allclose(out, plain, atol=1e-5)
    assert len(rec.store) == 3 * len(layers)  # step 0 only
    probs = rec.store[(layers[0], "probs", 0)]
    assert torch.allclose(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-5)
    assert len(feats.store) == 2
    assert processors_snapshot(tiny_pipe) == before


def test_processors_and_hooks_restored_after_error(tiny_pipe):
    before = processors_snapshot(tiny_pipe)
    ctl = Controller()
    ctl.add(Record(attention_layers(tiny_pipe.unet, "attn1")))
    ctl.add(Record(["up_blocks.1.resnets.1.conv2"], what="feature", target="feature"))
    with pytest.raises(RuntimeError, match="boom"):
        with ctl.installed(tiny_pipe.unet):
            assert processors_snapshot(tiny_pipe) != before
            raise RuntimeError("boom")
    assert processors_snapshot(tiny_pipe) == before


def test_unknown_layer_is_refused_before_installation(tiny_pipe):
    before = processors_snapshot(tiny_pipe)
    ctl = Controller()
    ctl.add(Record(["up_blocks.9.attentions.0.transformer_blocks.0.attn1"]))
    with pytest.raises(ModelError):
        with ctl.installed(tiny_pipe.unet):
            pass
    assert processors_snapshot(tiny_pipe) == before


def test_logit_rule_sees_nonsquare_grid(tiny_pipe):
    grids = []

    class Spy(Rule):
        needs_logits = True

        def logits(self, ctx, logits):
            grids.append((ctx.grid, logits.shape[-1]))
            return logits

    backbone = Backbone(tiny_pipe)
    ctl = Controller()
    ctl.add(Spy(attention_layers(tiny_pipe.unet, "attn1")))
    with torch.no_grad(), ctl.installed(tiny_pipe.unet):
        ctl.set_call(0, 10, [("a", 1)], (8, 12))
        backbone.unet_call(_x(2, (8, 12)), 10, backbone.encode_prompt([""]))
    assert {g for g, _ in grids} == {(8, 12), (4, 6), (2, 3), (1, 2)}  # 3 levels + mid block (ceil halving)
    assert all(h * w == n for (h, w), n in grids)


# ------------------------------------------------------------------ inversions
@pytest.mark.parametrize("steps", [10, 50])
def test_round_trip_is_exact_for_an_exact_model(tiny_pipe, steps):
    gb = GaussianModel(tiny_pipe)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * gb.s
    grid = ddim_timesteps(gb, steps)
    traj = ddim_invert(gb, gb.eps_discrete, x0, grid)
    assert len(traj) == steps + 1
    assert abs(traj[-1].std().item() - 1.0) < 0.2  # the top of the trajectory is (nearly) unit noise
    # Measured on this model: DDIM 3.9e-2 / 2.3e-3, DPM-Solver++ 3.2e-3 / 5.9e-5 at 10 / 50 steps.
    ddim_error = (ddim_sample(gb, gb.eps_discrete, traj[-1], grid) - x0).pow(2).mean()
    assert ddim_error < (5e-2 if steps == 10 else 3e-3)
    schedule = VPSchedule(gb.alphas_cumprod)
    up = dpmpp_trajectory(gb, gb.eps_continuous, x0, schedule.times(steps, invert=True))
    down = dpmpp_trajectory(gb, gb.eps_continuous, up[-1], schedule.times(steps))
    dpmpp_error = (down[-1] - x0).pow(2).mean()
    assert dpmpp_error < (5e-3 if steps == 10 else 1e-4)
    assert dpmpp_error < ddim_error  # the second-order solver is the more exact inversion


def test_tiny_round_trip_error_shrinks_with_steps(tiny_pipe):
    """On random weights the round trip is inexact, but more steps must reduce the error."""
    image = make_image(3)
    errors = {}
    for method, prompt in (("ddim", ""), ("dpmpp", "exceptional")):
        for steps in (10, 50):
            inv = ze.invert(tiny_pipe, image, method=method, prompt=prompt, steps=steps)
            rec = ze.reconstruct(tiny_pipe, inv, output_type="latent")
            errors[method, steps] = (rec.latents - inv.latents[0]).pow(2).mean().item()
            assert inv.stats.unet_calls == rec.stats.unet_calls == steps
    for method in ("ddim", "dpmpp"):
        assert errors[method, 50] < errors[method, 10]
    assert errors["dpmpp", 50] < 2.0  # latents have unit variance; see benchmarks/inversion.py


def test_invert_batches_a_list_in_one_trajectory(tiny_pipe):
    a, b = make_image(0), make_image(1)
    both = ze.invert(tiny_pipe, [a, b], method="dpmpp", prompt="exceptional", steps=4)
    one = ze.invert(tiny_pipe, b, method="dpmpp", prompt="exceptional", steps=4)
    assert both.stats.unet_calls == 4 and both.stats.unet_evals == 8
    assert both.latents.shape == (5, 2, 4, 16, 16)
    assert torch.allclose(both.latents[:, 1], one.latents[:, 0], atol=1e-4)


def test_invert_rejects_bad_input(tiny_pipe, image):
    for kwargs in (dict(method="euler"), dict(steps=0), dict(steps=2.5), dict(prompt=3), dict(order=3)):
        with pytest.raises(ParameterError):
            ze.invert(tiny_pipe, image, **kwargs)
    with pytest.raises(ImageError):
        ze.invert(tiny_pipe, [make_image(0), make_image(0, (64, 128))])
