"""The FLUX.1-family pipelines besides FluxPipeline: FluxKontextPipeline (FluxTransformer2DModel: runs as FLUX.1-dev
text-to-image, no context image) and ChromaPipeline (backbones/chroma.py: T5 with its mask, no pooled vector or
guidance embedding, true CFG). Each samples as its diffusers pipeline; every method at its defaults (calls, sizes,
restoration); the unsupported combinations refused before any model work."""
import numpy as np
import pytest
import torch
from diffusers import ChromaPipeline, ChromaTransformer2DModel, FluxKontextPipeline

import zeroedit as ze
from zeroedit.backbones import Cond, FlowBackbone, backbone_for
from zeroedit.backbones.chroma import ChromaBackbone
from zeroedit.backbones.flow import pack, unpack
from zeroedit.control import Controller, Record, attn_processors, joint_attention_layers
from zeroedit.errors import ParameterError, UnsupportedModel
from zeroedit.inversion import euler
from zeroedit.tiny_flow import build_tiny_flux

from conftest import make_image, no_model_work, processors_snapshot


def tiny_chroma(seed: int = 0) -> ChromaPipeline:
    """A ChromaPipeline from tiny-flux's T5, VAE and scheduler with a random tiny ChromaTransformer2DModel (FLUX's
    layout: 2 double- and 2 single-stream blocks, 4 heads × 8; a 2-layer, 32-wide distilled-guidance approximator)."""
    flux = build_tiny_flux(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ChromaTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=4,
            joint_attention_dim=64, axes_dims_rope=(2, 2, 4), approximator_hidden_dim=32, approximator_layers=2)
    pipe = ChromaPipeline(scheduler=flux.scheduler, vae=flux.vae, text_encoder=flux.text_encoder_2,
                          tokenizer=flux.tokenizer_2, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def kontext(flux) -> FluxKontextPipeline:
    pipe = FluxKontextPipeline(**flux.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def chroma():
    return tiny_chroma()


@pytest.fixture(scope="module", params=["kontext", "chroma"])
def pipe(request, chroma):
    return kontext(build_tiny_flux()) if request.param == "kontext" else chroma


def _latents(seed=0, h=16, w=20):
    return torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(seed))


def _object():
    seg = np.zeros((64, 64), bool)
    seg[16:48, 12:52] = True
    return make_image(1, (64, 64)), seg


# ------------------------------------------------------------------ the backbones against the pipelines
def test_kontext_samples_as_flux_dev_text_to_image():
    """FluxKontextPipeline without a context image is FLUX.1-dev text-to-image: the FLUX backbone samples exactly
    as it does (guidance embedding 3.5, mu from the image tokens)."""
    pipe = kontext(build_tiny_flux())
    backbone, x = backbone_for(pipe), _latents(1)
    assert type(backbone) is FlowBackbone and backbone.family == "flux"
    cond = backbone.encode_prompt("a red cat")
    ours = euler(lambda z, s, i, stage: backbone.transformer_call(z, s, cond, 3.5), x, backbone.sigmas(3, x.shape[-2:]))[-1]
    theirs = pipe(prompt="a red cat", num_inference_steps=3, height=128, width=160, max_area=128 * 160,
                  latents=pack(x), max_sequence_length=32, output_type="latent").images
    assert torch.allclose(ours, unpack(theirs, 16, 20), atol=1e-5)


def test_chroma_samples_exactly_as_the_diffusers_pipeline(chroma):
    """T5 with the pipeline's mask (the prompt's tokens and one padding token), the σ grid with mu, model time σ and
    CFG with [negative, prompt] in ONE call equal ChromaPipeline's two calls."""
    backbone, x = ChromaBackbone(chroma), _latents(2)
    cond = Cond.cat([backbone.encode_negative(""), backbone.encode_prompt("a red cat")])
    assert cond.token_mask().sum(1).tolist() == [2, 9] and cond.pooled is None  # "</s>" + 1, "a red cat</s>" + 1

    def velocity(z, sigma, i, stage):
        return backbone.guided(backbone.transformer_call(torch.cat([z, z]), sigma, cond), 4.0)

    ours = euler(velocity, x, backbone.sigmas(3, x.shape[-2:]))[-1]
    theirs = chroma("a red cat", num_inference_steps=3, guidance_scale=4.0, height=128, width=160, latents=pack(x),
                    max_sequence_length=32, output_type="latent").images
    assert torch.allclose(ours, unpack(theirs, 16, 20), atol=1e-5)
    assert backbone.stats.unet_calls == 3 and backbone.stats.unet_evals == 6


def test_chroma_controlled_attention_equals_the_original(chroma):
    """Every layer controlled with the explicit matrix (Record of probs, the float mask added as SDPA adds it): the
    output of diffusers' own processors; FLUX's [text, image] layout."""
    backbone, x = ChromaBackbone(chroma), _latents(3).repeat(2, 1, 1, 1)
    cond = backbone.encode_prompt(["a cat", "a dog on a bench"])
    layers = [key[: -len(".processor")] for key in attn_processors(chroma.transformer)]
    reference = backbone.transformer_call(x, 0.6, cond)
    controller = Controller()
    record = controller.add(Record(layers, ("q", "probs"), stream="image"))
    controller.set_call(0, 0.6, [("a", 2)], backbone.token_grid(x.shape[-2:]))
    with controller.installed(chroma.transformer):
        out = backbone.transformer_call(x, 0.6, cond)
    assert torch.allclose(out, reference, atol=1e-5)
    assert all(record.store[(layer, "probs", 0)].shape == (2, 4, 80, 80) for layer in layers)


def test_saved_folders_load_as_their_pipelines(chroma, tmp_path):
    chroma.save_pretrained(tmp_path / "chroma")
    kontext(build_tiny_flux()).save_pretrained(tmp_path / "kontext")
    assert isinstance(backbone_for(ze.load(str(tmp_path / "chroma"))), ChromaBackbone)
    assert type(ze.load(str(tmp_path / "kontext"))).__name__ == "FluxKontextPipeline"


# ------------------------------------------------------------------ every method at its defaults
def test_translate_and_flowedit_defaults(pipe):
    """FireFlow 8 steps: 18 calls as on FLUX.1 (Chroma's CFG doubles the evaluations, not the calls); FlowEdit 24."""
    before = processors_snapshot(pipe)
    cfg = 2 if backbone_for(pipe).has_cfg else 1
    out = ze.translate(pipe, make_image(0, (150, 90)), "a dog", source_prompt="a cat")
    assert (out.stats.unet_calls, out.stats.unet_evals) == (18, 9 + 9 * cfg) and out.image.size == (150, 90)
    edit = ze.translate(pipe, make_image(0, (150, 90)), "a dog", source_prompt="a cat", method="flowedit", seed=0)
    assert (edit.stats.unet_calls, edit.stats.unet_evals) == (24, 24 * 2 * cfg) and edit.image.size == (150, 90)
    assert processors_snapshot(pipe) == before


def test_kontext_translate_equals_flux():
    flux = build_tiny_flux()
    image = make_image(0)
    ours = ze.translate(kontext(flux), image, "a dog", source_prompt="a cat", output_type="latent")
    assert torch.equal(ours.images, ze.translate(flux, image, "a dog", source_prompt="a cat", output_type="latent").images)


def test_compose_defaults(pipe):
    ref, seg = _object()
    before = processors_snapshot(pipe)
    cfg = 2 if backbone_for(pipe).has_cfg else 1
    out = ze.compose(pipe, make_image(0, (160, 112)), ref, (48, 24, 112, 88), reference_mask=seg, prompt="a cat", seed=0)
    assert (out.stats.unet_calls, out.stats.unet_evals) == (42, 2 * 21 + cfg * 21 + 1)
    assert out.image.size == (160, 112) and processors_snapshot(pipe) == before
    seen = {}
    common = dict(reference_mask=seg, steps=4, tau_b=1.0, seed=0, output_type="latent")
    for prompt in ("a cat", "a red dog"):
        ze.compose(pipe, make_image(0), ref, (64, 64, 128, 128), prompt=prompt, **common,
                   callback_on_step_end=lambda p, step, t, kwargs, prompt=prompt: seen.__setitem__((prompt, step), kwargs["latents"].clone()))
    a, b = seen[("a cat", 2)], seen[("a red dog", 2)]
    assert torch.equal(a[..., :8, :], b[..., :8, :]) and (a[..., 8:, 8:] - b[..., 8:, 8:]).abs().max() > 1e-4


def test_edit_defaults(pipe):
    before = processors_snapshot(pipe)
    out = ze.edit(pipe, make_image(0, (150, 90)), "cat", "dog", seed=0)
    assert (out.stats.unet_calls, out.stats.unet_backward) == (150, 50) and out.image.size == (150, 90)
    assert processors_snapshot(pipe) == before and not pipe.transformer.gradient_checkpointing


@pytest.mark.parametrize("method, calls", [("euler", 4), ("rf-solver", 8), ("fireflow", 5)])
def test_invert_and_reconstruct(pipe, method, calls):
    inversion = ze.invert(pipe, make_image(0, (150, 90)), method=method, steps=4)
    back = ze.reconstruct(pipe, inversion)
    assert inversion.stats.unet_calls == back.stats.unet_calls == calls and back.image.size == (150, 90)


def test_kontext_personalize_with_a_flux_ip_adapter():
    """FluxKontextPipeline has FLUX's IP-Adapter mixin: personalize runs as on FluxPipeline (30 calls)."""
    pipe = kontext(ze.load("tiny-flux", ip_adapter=True))
    refs = {"cat": make_image(1, (64, 64)), "dog": make_image(2, (64, 64))}
    out = ze.personalize(pipe, "a cat and a dog", refs, height=128, width=128, seed=0, output_type="latent")
    assert (out.stats.unet_calls, out.stats.unet_evals) == (30, 30) and out.relevance_maps.shape == (2, 8, 8)


# ------------------------------------------------------------------ Chroma's refusals, before any model work
@pytest.mark.parametrize("call, error", [
    (lambda pipe: ze.personalize(pipe, "a cat", {"cat": make_image(1, (64, 64))}), UnsupportedModel),
    (lambda pipe: ze.compose(pipe, make_image(0), _object()[0], (40, 40, 88, 88), reference_mask=_object()[1],
                             inversion_prompt="exceptional"), ParameterError),
    (lambda pipe: ze.translate(pipe, make_image(0), "a dog", feature_steps=0.5), ParameterError),
    (lambda pipe: ze.translate(pipe, make_image(0), "a dog", layers="vital"), ParameterError),
], ids=["personalize", "exceptional-prompt", "feature-injection", "vital-layers"])
def test_chroma_refusals(chroma, call, error):
    with no_model_work(chroma), pytest.raises(error):
        call(chroma)


def test_chroma_layers(chroma):
    assert joint_attention_layers(chroma.transformer, "single") == [f"single_transformer_blocks.{i}.attn" for i in range(2)]
    with pytest.raises(UnsupportedModel, match="guidance embedding"):
        ze.personalize(chroma, "a cat", {"cat": make_image(1, (64, 64))})
