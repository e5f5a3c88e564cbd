"""compose (TF-ICON), edit (pix2pix-zero) and personalize (MIP) on SD3 / FLUX flow transformers: budgets at
defaults, restoration, errors, determinism, and properties of each algorithm."""
import numpy as np
import pytest
import torch

import zeroedit as ze
from zeroedit.backbones import Cond, FlowBackbone, backbone_for
from zeroedit.backbones.flow import pack, unpack
from zeroedit.errors import CheckpointError, ModelError, ParameterError, UnsupportedModel

from conftest import latents_by_step, make_image, no_model_work, processors_snapshot


@pytest.fixture(scope="module", params=["sd3", "flux"])
def pipe(request, tiny_sd3_pipe, tiny_flux_pipe):
    return tiny_sd3_pipe if request.param == "sd3" else tiny_flux_pipe


@pytest.fixture(scope="module")
def flux_ip_pipe():
    return ze.load("tiny-flux", ip_adapter=True)


def _object():
    seg = np.zeros((64, 64), bool)
    seg[16:48, 12:52] = True
    return make_image(1, (64, 64)), seg


# ------------------------------------------------------------------ compose
def test_compose_default_budget_determinism_and_restoration(pipe):
    """Defaults (fireflow, 20 steps, KV-Edit's background K/V): 21 inversion + 21 sampling calls for background
    and reference together; the first sampling call also carries the background branch (and for the composite
    rule the reference's): their σ = 1 was not evaluated by the inversion."""
    ref, seg = _object()
    before = processors_snapshot(pipe)
    out = ze.compose(pipe, make_image(0), ref, (40, 40, 88, 88), reference_mask=seg, prompt="a cat", seed=0,
                     output_type="latent")
    again = ze.compose(pipe, make_image(0), ref, (40, 40, 88, 88), reference_mask=seg, prompt="a cat", seed=0,
                       output_type="latent")
    branches = 2 if FlowBackbone(pipe).has_cfg else 1
    assert out.stats.unet_calls == 42
    assert out.stats.unet_evals == 2 * 21 + branches * 21 + 1  # the background rides in the first call
    assert out.stats.params["solver"] == "fireflow" and out.stats.params["inversion_prompt"] == "zeros"
    assert out.stats.params["attention"] == "kv"
    composite = ze.compose(pipe, make_image(0), ref, (40, 40, 88, 88), reference_mask=seg, prompt="a cat", seed=0,
                           attention="composite", output_type="latent")
    assert composite.stats.unet_calls == 42 and composite.stats.unet_evals == 2 * 21 + branches * 21 + 2
    assert torch.equal(out.images, again.images)
    assert processors_snapshot(pipe) == before


def test_compose_background_preserved_and_injection_acts(pipe):
    """Outside the region the latent after each preserved update is the background's inversion latent: the same
    for two prompts; inside it differs. Composite attention (and KV-Edit's background K/V) change the result."""
    ref, seg = _object()
    seen, keep = latents_by_step()

    common = dict(reference_mask=seg, steps=4, tau_b=1.0, seed=0, output_type="latent")
    box = (64, 64, 128, 128)
    plain = ze.compose(pipe, make_image(0), ref, box, prompt="a cat", callback_on_step_end=keep("a"), tau_a=0.0, **common)
    ze.compose(pipe, make_image(0), ref, box, prompt="a red dog", callback_on_step_end=keep("b"), tau_a=0.0, **common)
    k_b = plain.stats.params["preservation_updates"]
    assert k_b == 3
    a, b = seen["a"][k_b - 1], seen["b"][k_b - 1]
    assert torch.equal(a[..., :8, :], b[..., :8, :])  # rows above the region (latent 8…16 is the region)
    assert (a[..., 8:, 8:] - b[..., 8:, 8:]).abs().max() > 1e-4
    composite = ze.compose(pipe, make_image(0), ref, box, prompt="a cat", tau_a=1.0, attention="composite", **common)
    kv = ze.compose(pipe, make_image(0), ref, box, prompt="a cat", tau_a=1.0, **common)
    assert (composite.images - plain.images).abs().max() > 1e-4
    assert (kv.images - composite.images).abs().max() > 1e-4


def test_compose_restores_on_error_and_checks_arguments(tiny_flux_pipe, tiny_pipe):
    ref, seg = _object()
    before = processors_snapshot(tiny_flux_pipe)

    def boom(*args):
        raise RuntimeError("stop")
    with pytest.raises(RuntimeError, match="stop"):
        ze.compose(tiny_flux_pipe, make_image(0), ref, (40, 40, 88, 88), reference_mask=seg, steps=3,
                   callback_on_step_end=boom)
    assert processors_snapshot(tiny_flux_pipe) == before
    for kwargs, error in ((dict(solver="heun"), ParameterError), (dict(inversion_prompt="nothing"), ParameterError),
                          (dict(attention="paste"), ParameterError), (dict(tau_a=2.0), ParameterError),
                          (dict(domain="other"), ParameterError)):
        with pytest.raises(error):
            ze.compose(tiny_flux_pipe, make_image(0), ref, (40, 40, 88, 88), reference_mask=seg, **kwargs)
    with pytest.raises(ParameterError, match="SD3/FLUX"):
        ze.compose(tiny_pipe, make_image(0), ref, (40, 40, 88, 88), reference_mask=seg, solver="euler")
    with pytest.raises(ParameterError, match="SD3/FLUX"):
        ze.edit(tiny_pipe, make_image(0), checkpointing=True)


def test_exceptional_prompt_rows_identical(pipe):
    """The exceptional prompt through CLIP and its T5 analogue (no position bias): within each encoder's part,
    every row is the same; the variants differ from each other."""
    backbone = FlowBackbone(pipe)
    cond = backbone.exceptional_cond(2, "exceptional")
    empty = backbone.exceptional_cond(1, "empty")
    assert cond.embeds.shape[1:] == empty.embeds.shape[1:] and cond.pooled.shape[1:] == empty.pooled.shape[1:]
    t5 = cond.embeds[0, -backbone.t5_length():]
    assert torch.allclose(t5, t5[:1].expand_as(t5), atol=1e-5)
    if not backbone.is_flux:
        clip = cond.embeds[0, :77]
        assert torch.allclose(clip, clip[:1].expand_as(clip), atol=1e-5)
    assert (cond.embeds[0] - empty.embeds[0]).abs().max() > 1e-3
    assert torch.equal(backbone.exceptional_cond(1, "zeros").embeds, torch.zeros_like(empty.embeds))


# ------------------------------------------------------------------ edit
def test_edit_default_budget(tiny_flux_pipe):
    """50 steps: 50 inversion calls + 2 per step (one gradient call stopped after the last guided block, one
    full call), 50 backward passes; processors and gradient checkpointing restored."""
    before = processors_snapshot(tiny_flux_pipe)
    out = ze.edit(tiny_flux_pipe, make_image(0), "cat", "dog", reg_steps=0, seed=0, output_type="latent")
    assert (out.stats.unet_calls, out.stats.unet_backward) == (150, 50)
    assert out.stats.unet_evals == 50 + 50 * 6
    assert processors_snapshot(tiny_flux_pipe) == before and not tiny_flux_pipe.transformer.gradient_checkpointing


def test_edit_guidance_checkpointing_and_zero_direction(pipe):
    """The cross-attention gradient moves the edit; gradient checkpointing gives the same edit; with a zero
    direction the edit's maps equal the reference's, the gradient is zero and xa_guidance has no effect."""
    common = dict(steps=3, reg_steps=1, seed=0, output_type="latent")
    guided = ze.edit(pipe, make_image(0), "cat", "dog", xa_guidance=0.5, **common)
    unguided = ze.edit(pipe, make_image(0), "cat", "dog", xa_guidance=0.0, **common)
    checkpointed = ze.edit(pipe, make_image(0), "cat", "dog", xa_guidance=0.5, checkpointing=True, **common)
    again = ze.edit(pipe, make_image(0), "cat", "dog", xa_guidance=0.5, **common)
    assert (guided.images - unguided.images).abs().max() > 1e-5
    assert torch.allclose(guided.images, checkpointed.images, atol=1e-5)
    assert torch.equal(guided.images, again.images)
    assert not pipe.transformer.gradient_checkpointing
    zero = ze.directions.build(pipe, "cat", "cat")
    assert isinstance(zero, Cond) and zero.embeds.abs().max() == 0
    a = ze.edit(pipe, make_image(0), "cat", "dog", direction=zero, xa_guidance=0.5, **common)
    b = ze.edit(pipe, make_image(0), "cat", "dog", direction=zero, xa_guidance=0.0, **common)
    assert torch.allclose(a.images, b.images, atol=1e-5)


@pytest.mark.parametrize("piece", [2 ** 26, 2 ** 12])
def test_edit_guidance_in_pieces_equals_the_full_matrix(tiny_flux_pipe, monkeypatch, piece):
    """The guidance loss read piece by piece from q and k (the layers attend with their kernel, no matrix kept)
    equals CrossAttentionGuidance's on the full joint matrix (explicit logits), and so does its gradient, whatever
    the piece size."""
    from zeroedit.control import Controller
    from zeroedit.methods import pix2pix_zero_flow as flow_edit
    from zeroedit.methods.pix2pix_zero import CrossAttentionGuidance

    class FullMatrix(CrossAttentionGuidance):
        stream = "joint"

        def probs(self, ctx, probs):
            super().probs(ctx, probs[:, :, ctx.split.image, ctx.split.text])
            return probs

    monkeypatch.setattr(flow_edit, "PIECE_ELEMENTS", piece)
    backbone = backbone_for(tiny_flux_pipe)
    layers = flow_edit._blocks(backbone, None)
    cond = Cond.cat([backbone.encode_prompt("a cat")] * 2 + [backbone.encode_prompt("a dog")])
    results = []
    for rule in (FullMatrix(layers), flow_edit.ImageToTextGuidance(layers)):
        x = torch.randn(3, 16, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        controller = Controller()
        controller.add(rule)
        rule.enabled = True
        controller.set_call(0, 0.5, [("ref", 1), ("edit", 2)], backbone.token_grid((16, 16)))
        with torch.enable_grad(), controller.installed(tiny_flux_pipe.transformer):
            backbone.transformer_call(x, 0.5, cond, 1.0)
        results.append((rule.loss.detach(), torch.autograd.grad(rule.loss, x)[0]))
    (full_loss, full_grad), (loss, grad) = results
    assert full_loss > 0 and torch.allclose(loss, full_loss, rtol=1e-5)
    assert torch.allclose(grad, full_grad, atol=1e-7, rtol=1e-4) and grad.abs().max() > 0


def test_edit_subset_of_blocks_and_errors(tiny_flux_pipe, tiny_sd3_pipe):
    before = processors_snapshot(tiny_flux_pipe)
    one = ze.edit(tiny_flux_pipe, make_image(0), "cat", "dog", steps=2, reg_steps=0, guidance_blocks=1, seed=0,
                  output_type="latent", xa_guidance=0.5)
    assert one.stats.params["guidance_blocks"] == 1 and one.stats.unet_backward == 2
    with pytest.raises(RuntimeError, match="stop"):
        ze.edit(tiny_flux_pipe, make_image(0), "cat", "dog", steps=2, reg_steps=0, checkpointing=True,
                callback_on_step_end=lambda *a: (_ for _ in ()).throw(RuntimeError("stop")))
    assert processors_snapshot(tiny_flux_pipe) == before and not tiny_flux_pipe.transformer.gradient_checkpointing
    for kwargs in (dict(guidance_blocks=0), dict(guidance_blocks=9), dict(checkpointing="yes"),
                   dict(direction=torch.zeros(1, 3, 5)), dict(guidance_embedding=-1), dict(xa_guidance=-1)):
        with pytest.raises(ParameterError):
            ze.edit(tiny_flux_pipe, make_image(0), "cat", "dog", steps=2, **kwargs)


def test_flow_directions_save_load_and_fingerprint(tiny_flux_pipe, tiny_sd3_pipe, tiny_pipe, tmp_path):
    direction = ze.directions.build(tiny_flux_pipe, "cat", "dog")
    probe = FlowBackbone(tiny_flux_pipe).encode_prompt("")
    assert direction.embeds.shape[1:] == probe.embeds.shape[1:] and direction.pooled.shape[1:] == probe.pooled.shape[1:]
    path = tmp_path / "cat2dog.safetensors"
    ze.directions.save(direction, path, tiny_flux_pipe, "cat", "dog")
    loaded = ze.directions.load(path, tiny_flux_pipe)
    assert torch.equal(loaded.embeds, direction.embeds) and torch.equal(loaded.pooled, direction.pooled)
    with pytest.raises(CheckpointError, match="another text encoder"):
        ze.directions.load(path, tiny_sd3_pipe)
    fingerprints = {ze.directions.text_encoder_fingerprint(p) for p in (tiny_flux_pipe, tiny_sd3_pipe, tiny_pipe)}
    assert len(fingerprints) == 3


# ------------------------------------------------------------------ personalize
def test_personalize_uniform_single_reference_equals_diffusers(flux_ip_pipe):
    """One object, uniform weighting, scale 1: exactly FluxPipeline with the same IP-Adapter and image."""
    ref = make_image(1, (64, 64))
    ours = ze.personalize(flux_ip_pipe, "a cat on grass", {"cat": ref}, weighting="uniform", scale=1.0, steps=3,
                          height=128, width=128, seed=0, output_type="latent").images
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    theirs = flux_ip_pipe("a cat on grass", ip_adapter_image=ref, num_inference_steps=3, height=128, width=128,
                          latents=pack(x), max_sequence_length=32, output_type="latent").images
    assert torch.allclose(ours, unpack(theirs, 16, 16), atol=1e-5)


def test_personalize_default_budget_maps_and_restoration(flux_ip_pipe):
    """Defaults (30 steps): 30 calls at batch 1, as plain FLUX generation; relevance maps sum to 1 over the
    objects; relevance and uniform merges differ; deterministic; processors restored."""
    before = processors_snapshot(flux_ip_pipe)
    refs = {"cat": make_image(1, (64, 64)), "dog": [make_image(2, (64, 64)), make_image(3, (64, 64))]}
    out = ze.personalize(flux_ip_pipe, "a cat and a dog", refs, height=128, width=128, seed=0, output_type="latent")
    again = ze.personalize(flux_ip_pipe, "a cat and a dog", refs, height=128, width=128, seed=0, output_type="latent")
    uniform = ze.personalize(flux_ip_pipe, "a cat and a dog", refs, weighting="uniform", steps=30, height=128,
                             width=128, seed=0, output_type="latent")
    assert (out.stats.unet_calls, out.stats.unet_evals) == (30, 30)
    assert out.stats.params["scale"] == 1.0 and out.stats.params["guidance_scale"] == 3.5
    assert out.relevance_maps.shape == (2, 8, 8)
    assert torch.allclose(out.relevance_maps.sum(0), torch.ones(8, 8), atol=1e-5)
    assert torch.equal(out.images, again.images)
    assert (out.images - uniform.images).abs().max() > 1e-5
    assert processors_snapshot(flux_ip_pipe) == before


def test_personalize_errors(flux_ip_pipe, tiny_flux_pipe, tiny_sd3_pipe):
    image = make_image(0, (64, 64))
    with pytest.raises(UnsupportedModel, match="SD3"):
        ze.personalize(tiny_sd3_pipe, "a cat", {"cat": image})
    with pytest.raises(ModelError, match="load_ip_adapter"):
        ze.personalize(tiny_flux_pipe, "a cat", {"cat": image})
    for kwargs in (dict(phrase_encoding="alone"), dict(mip_weights="x.bin"), dict(negative_prompt="ugly"),
                   dict(height=100), dict(weighting="max")):
        with pytest.raises(ParameterError):
            ze.personalize(flux_ip_pipe, "a cat", {"cat": image}, **kwargs)
    with pytest.raises(ParameterError, match="phrase"):
        ze.personalize(flux_ip_pipe, "a cat", {"dog": image})
    with pytest.raises(ParameterError, match="tiny-sd3"):
        ze.load("tiny-sd3", ip_adapter=True)


def test_controlled_flux_ip_adapter_layer_mirrors_diffusers(flux_ip_pipe):
    """A rule on FluxIPAdapterAttnProcessor layers (here: recording probabilities, so the explicit matrix runs)
    leaves the output of FluxPipeline with an IP-Adapter image unchanged: the mirror adds the same image term."""
    from zeroedit.control import Controller, Record, joint_attention_layers
    ref = make_image(1, (64, 64))
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(ip_adapter_image=ref, num_inference_steps=2, height=128, width=128, latents=pack(x),
                  max_sequence_length=32, output_type="latent")
    plain = flux_ip_pipe("a cat", **kwargs).images
    controller = Controller()
    controller.add(Record(joint_attention_layers(flux_ip_pipe.transformer, "double"), ("q", "probs"), stream="joint"))
    controller.set_call(0, 1.0, [("cond", 1)], (8, 8))
    with controller.installed(flux_ip_pipe.transformer):
        controlled = flux_ip_pipe("a cat", **kwargs).images
    assert len(controller.rules[0].store) > 0
    assert torch.allclose(plain, controlled, atol=1e-5)


# ------------------------------------------------------------------ bad input, on every model component
def _edit(pipe, **kwargs):
    return ze.edit(pipe, make_image(0), "cat", "dog", steps=2, **kwargs)


def _compose(pipe, **kwargs):
    ref, seg = _object()
    return ze.compose(pipe, make_image(0), ref, (40, 40, 88, 88), reference_mask=seg, steps=2, **kwargs)


FLOW_BAD_INPUTS = [
    (_edit, dict(seed=1.5)), (_edit, dict(seed=-1)), (_edit, dict(caption=3)), (_edit, dict(reg_steps=-1)),
    (_edit, dict(direction=torch.full((1, 32, 64), float("nan")))), (_edit, dict(direction=torch.zeros(1, 3, 5))),
    (_edit, dict(guidance_scale=float("inf"))), (_edit, dict(callback_on_step_end="no")),
    (_edit, dict(preset="fast")), (_edit, dict(output_type="jpg")),
    (_compose, dict(order=7)), (_compose, dict(order=1)), (_compose, dict(seed="x")), (_compose, dict(prompt=3)),
    (_compose, dict(paste_background="yes")), (_compose, dict(tau_b=float("nan"))),
]


@pytest.mark.parametrize("call, kwargs", FLOW_BAD_INPUTS, ids=lambda v: getattr(v, "__name__", None) or str(v)[:40])
def test_flow_bad_input_is_refused_before_any_model_work(tiny_flux_pipe, call, kwargs):
    """A typed error, and no component of the pipeline (not even a text encoder) has run; processors unchanged."""
    with no_model_work(tiny_flux_pipe), pytest.raises(ParameterError):
        call(tiny_flux_pipe, **kwargs)


def test_methods_on_a_flux_pipeline_with_an_ip_adapter_loaded(flux_ip_pipe, tiny_flux_pipe):
    """A FLUX pipeline that carries an IP-Adapter (loaded for personalize) runs every other method as without it:
    the adapter's layers get no image tokens (their term is zero), and diffusers' processor does not fail on None."""
    image, reference = make_image(0), make_image(1, (64, 64))
    runs = [lambda p: ze.translate(p, image, "a dog", output_type="latent").latents,
            lambda p: ze.compose(p, image, reference, (32, 32, 96, 96), prompt="a cat", steps=4, seed=0,
                                 output_type="latent").latents,
            lambda p: ze.invert(p, image, steps=3).latents]
    for run in runs:
        assert torch.equal(run(flux_ip_pipe), run(tiny_flux_pipe))
