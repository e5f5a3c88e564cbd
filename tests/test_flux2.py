"""FLUX.2 ([klein] base and distilled, [dev]) on the tiny models: the adapter samples exactly as diffusers'
pipelines, the dispatcher seam leaves the attention unchanged, every method runs at its defaults with the counted
calls, personalize weights each object's reference images by its relevance, and refusals come before model work."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import zeroedit as ze
from zeroedit.backbones import backbone_for
from zeroedit.backbones.flux2 import Flux2Backbone
from zeroedit.control import Controller, Record, Rule, joint_attention_layers
from zeroedit.errors import ImageError, ParameterError, UnsupportedModel
from zeroedit.methods.common import finish
from zeroedit.methods.mip import _phrase_span
from zeroedit.methods.mip_refs import ReferenceRelevance
from zeroedit.tiny_flux2 import build_tiny_flux2

from conftest import latents_by_step, make_image, no_model_work, processors_snapshot

SIZE = (160, 96)  # a non-square input: latents 6 × 10 after the ×16 of VAE and patchify


@pytest.fixture(scope="module")
def klein():
    return ze.load("tiny-flux2")


@pytest.fixture(scope="module")
def variants(klein):
    return {"klein": klein, "klein-distilled": build_tiny_flux2(0, "klein-distilled"), "dev": build_tiny_flux2(0, "dev")}


def _latents(seed=0, h=6, w=10):
    return torch.randn(1, 32, h, w, generator=torch.Generator().manual_seed(seed))


def _ours(backbone, x, prompt, steps, guidance, refs=None):
    """Plain sampling through the backbone: Euler on its σ grid, [uncond, cond] in one call where it has CFG."""
    from zeroedit.inversion import euler
    cond = backbone.encode_prompt(prompt)
    cond = ze.Cond.cat([backbone.encode_negative(""), cond]) if backbone.has_cfg else cond

    def velocity(z, sigma, i, stage):
        return backbone.guided(backbone.transformer_call(z.expand(len(cond), -1, -1, -1), sigma, cond, guidance,
                                                         references=refs), guidance)
    return euler(velocity, x, backbone.sigmas(steps, x.shape[-2:]))[-1]


# ------------------------------------------------------------------ the adapter
@pytest.mark.parametrize("variant", ["klein", "klein-distilled", "dev"])
def test_backbone_samples_exactly_as_the_diffusers_pipeline(variants, variant):
    """Text (chat template, stacked hidden states), σ grid (compute_empirical_mu), model time, packing and ids,
    guidance (true CFG in one call / none / embedding) and the VAE's BatchNorm and unpatchify: the decoded image
    equals the pipeline's own."""
    pipe = variants[variant]
    backbone, x = backbone_for(pipe), _latents(1)
    assert isinstance(backbone, Flux2Backbone) and backbone.family == "flux2"
    assert (backbone.has_cfg, backbone.guidance_embeds) == {"klein": (True, False), "klein-distilled": (False, False),
                                                           "dev": (False, True)}[variant]
    ours = _ours(backbone, x, "a red cat", 3, 4.0)
    image = finish(backbone, ours, "pt")
    theirs = pipe(prompt="a red cat", num_inference_steps=3, guidance_scale=4.0, height=96, width=160, latents=x,
                  output_type="pt", max_sequence_length=backbone.text_length()).images
    assert image.shape == theirs.shape == (1, 3, 96, 160)
    assert torch.allclose(image, theirs, atol=1e-4)
    assert backbone.stats.unet_calls == 3 and backbone.stats.unet_evals == (6 if backbone.has_cfg else 3)


def test_latents_are_the_pipelines_normalised_patchified_ones(klein):
    backbone = backbone_for(klein)
    image = torch.rand(1, 3, 96, 160, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = backbone.encode_image(image)
    assert latents.shape == (1, 32, 6, 10) and backbone.vae_scale == 16 and backbone.patch == 1
    assert torch.allclose(latents, klein._encode_vae_image(image, None), atol=1e-6)
    assert klein.vae.bn.running_mean.abs().max() > 0.1  # the tiny VAE's statistics are not the identity
    assert backbone.decode(latents).shape == (1, 3, 96, 160)


def test_loading_is_deterministic_and_folders_load(klein, tmp_path):
    again, other = ze.load("tiny-flux2"), ze.load("tiny-flux2", seed=1)
    weight = lambda pipe: pipe.transformer.x_embedder.weight  # noqa: E731
    assert torch.equal(weight(again), weight(klein)) and not torch.equal(weight(other), weight(klein))
    assert torch.equal(again.text_encoder.model.embed_tokens.weight, klein.text_encoder.model.embed_tokens.weight)
    klein.save_pretrained(tmp_path / "klein")
    loaded = ze.load(str(tmp_path / "klein"))
    assert type(loaded).__name__ == "Flux2KleinPipeline" and torch.equal(weight(loaded), weight(klein))
    assert torch.equal(loaded.vae.bn.running_var, klein.vae.bn.running_var)


@pytest.mark.parametrize("variant", ["klein", "dev"])
def test_phrase_tokens_are_found_inside_the_chat_template(variants, variant):
    """token_offsets maps the encoded sequence back to the prompt: the phrase's tokens are the prompt's, not the
    template's ([dev]'s system message also says "object")."""
    pipe = variants[variant]
    backbone, prompt = backbone_for(pipe), "an object and a cat"
    offsets = backbone.token_offsets(prompt)
    assert len(offsets) == backbone.text_length()
    text = backbone.chat_text(prompt)
    assert "object" in text[: text.index(prompt)] if variant == "dev" else True
    ids = backbone._tokenizer()(text, padding="max_length", truncation=True, max_length=backbone.text_length(),
                                add_special_tokens=False).input_ids
    for phrase in ("object", "a cat"):
        start, count = _phrase_span(offsets, prompt, phrase)
        assert backbone._tokenizer().decode(ids[start:start + count]).strip() == phrase


def test_long_prompt_warns(klein, caplog):
    backbone = backbone_for(klein)
    with caplog.at_level(logging.WARNING, logger="zeroedit"):
        backbone.encode_prompt("a cat " * 12)
        assert any("truncated" in record.getMessage() for record in caplog.records)
        caplog.clear()
        backbone.encode_prompt("a cat")
    assert not any("truncated" in record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------ control
@pytest.mark.parametrize("stream", ["image", "text", "joint"])
def test_controlled_attention_equals_the_original_with_references(klein, stream):
    """Every layer controlled and the matrix built (Record of probs): the same output as diffusers' processors with
    two reference images in the sequence; each part has its stream's token count; the references' split is theirs."""
    backbone = backbone_for(klein)
    refs = backbone.encode_references([Image.fromarray(make_image(1, (64, 64))), Image.fromarray(make_image(2, (96, 64)))])
    assert refs.counts == [16, 24] and refs.ids[16:, 0].unique().tolist() == [20]
    x, cond = _latents(2).expand(2, -1, -1, -1), backbone.encode_prompt(["a cat", "a dog"])
    layers = [key[: -len(".processor")] for key in klein.transformer.attn_processors]
    reference = backbone.transformer_call(x, 0.6, cond, references=refs)
    seen = []

    class Splits(Rule):
        def qkv(self, ctx, q, k, v):
            seen.append(ctx.split.references.stop - ctx.split.references.start)
            return q, k, v

    controller = Controller()
    record = controller.add(Record(layers, ("q", "v", "probs"), stream=stream))
    controller.add(Splits(layers))
    controller.set_call(0, 0.6, [("a", 1), ("b", 1)], backbone.token_grid(x.shape[-2:]), reference_tokens=40)
    with controller.installed(klein.transformer):
        out = backbone.transformer_call(x, 0.6, cond, references=refs)
    assert out.shape == (2, 32, 6, 10) and torch.allclose(out, reference, atol=1e-5)
    text = backbone.text_length()
    tokens = {"image": 60, "text": text, "joint": text + 60 + 40}[stream]
    assert record.store[(layers[0], "probs", 0)].shape == (2, 4, tokens, tokens)
    assert record.store[(layers[-1], "v", 0)].shape[2] == tokens and seen == [40] * len(layers)


def test_references_are_refused_by_families_without_them(tiny_flux_pipe, klein):
    flux = backbone_for(tiny_flux_pipe)
    refs = backbone_for(klein).encode_references([Image.fromarray(make_image(1, (64, 64)))])
    with pytest.raises(UnsupportedModel, match="reference"):
        flux.transformer_call(torch.zeros(1, 16, 16, 16), 0.5, flux.encode_prompt("a"), references=refs)
    assert flux.stats.unet_calls == 0  # refused before the forward, not counted
    assert joint_attention_layers(klein.transformer, "double") == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    assert joint_attention_layers(klein.transformer, "single", [-1]) == ["single_transformer_blocks.1.attn"]


# ------------------------------------------------------------------ every method at its defaults
def test_translate_and_flowedit_at_defaults(klein):
    """translate: FireFlow 8 steps, 9 + 9 calls as on FLUX.1 (CFG: 2 evaluations per sampling call); FlowEdit:
    24 of 28 steps, source and target with CFG in one call. Output at the input's size; processors restored."""
    before = processors_snapshot(klein)
    out = ze.translate(klein, make_image(0, SIZE), "a dog", source_prompt="a cat")
    assert (out.stats.unet_calls, out.stats.unet_evals) == (18, 9 + 2 * 9) and out.image.size == SIZE
    assert out.stats.params["guidance_scale"] == 4.0 and out.stats.params["layers"] == joint_attention_layers(
        klein.transformer, "single")
    edit = ze.translate(klein, make_image(0, SIZE), "a dog", source_prompt="a cat", method="flowedit", seed=0)
    assert (edit.stats.unet_calls, edit.stats.unet_evals) == (24, 24 * 4) and edit.image.size == SIZE
    assert processors_snapshot(klein) == before


def test_compose_at_defaults_keeps_the_background(klein):
    """Defaults (FireFlow 20 steps, zeros text, KV-Edit's background K/V): 21 + 21 calls, CFG in sampling, the
    background rides in the first call. The background is pasted back outside the region; in the latent, after
    each preserved update, the cells outside the region are the background's whatever the prompt."""
    ref, seg = make_image(1, (64, 64)), np.zeros((64, 64), bool)
    seg[16:48, 12:52] = True
    background, box = make_image(0, SIZE), (112, 16, 160, 80)
    before = processors_snapshot(klein)
    out = ze.compose(klein, background, ref, box, reference_mask=seg, prompt="a cat", seed=0)
    assert (out.stats.unet_calls, out.stats.unet_evals) == (42, 2 * 21 + 2 * 21 + 1) and out.image.size == SIZE
    assert out.stats.params["inversion_prompt"] == "zeros" and out.stats.params["attention"] == "kv"
    pixels, original = np.asarray(out.image).astype(int), background.astype(int)
    assert np.array_equal(pixels[:, :16], original[:, :16])  # the untouched background, far from the region
    assert np.abs(pixels[16:80, 112:] - original[16:80, 112:]).max() > 0
    seen, keep = latents_by_step()

    common = dict(reference_mask=seg, seed=0, steps=4, tau_b=1.0, output_type="latent")
    a = ze.compose(klein, background, ref, box, prompt="a cat", callback_on_step_end=keep("a"), **common)
    ze.compose(klein, background, ref, box, prompt="a red dog", callback_on_step_end=keep("b"), **common)
    x0, k_b = a.stats.extra["regions"][0][0] // 16, a.stats.params["preservation_updates"] - 1
    latent_a, latent_b = seen["a"][k_b], seen["b"][k_b]
    assert x0 >= 2 and torch.equal(latent_a[..., :x0], latent_b[..., :x0])
    assert (latent_a[..., x0:] - latent_b[..., x0:]).abs().max() > 1e-4
    assert processors_snapshot(klein) == before


def test_edit_at_defaults(klein):
    before = processors_snapshot(klein)
    out = ze.edit(klein, make_image(0, SIZE), "cat", "dog", seed=0)
    assert (out.stats.unet_calls, out.stats.unet_backward) == (150, 50) and out.stats.unet_evals == 50 + 50 * 6
    assert out.image.size == SIZE and processors_snapshot(klein) == before
    direction = ze.directions.build(klein, "cat", "dog")
    assert direction.pooled is None and direction.embeds.shape == (1, 64, 48)


@pytest.mark.parametrize("method, calls", [("euler", 8), ("rf-solver", 16), ("fireflow", 9)])
def test_invert_and_reconstruct_with_every_solver(klein, method, calls):
    inversion = ze.invert(klein, [make_image(0, SIZE), make_image(1, SIZE)], method=method, steps=8)
    assert inversion.latents.shape == (9, 2, 32, 5, 8) and inversion.stats.unet_calls == calls
    back = ze.reconstruct(klein, inversion)
    assert back.stats.unet_calls == calls and back.images[0].size == SIZE


# ------------------------------------------------------------------ personalize: reference images
@pytest.mark.parametrize("variant", ["klein", "dev"])
def test_personalize_uniform_single_reference_equals_diffusers(variants, variant):
    """One object, weighting="uniform": exactly the pipeline's own multi-reference generation (`image=[ref]`), and
    "relevance" with one object is the same (Ã ≡ 1)."""
    pipe = variants[variant]
    ref = make_image(1, (96, 64))
    common = dict(steps=3, height=96, width=160, seed=0, output_type="latent")
    uniform = ze.personalize(pipe, "a cat on grass", {"cat": ref}, weighting="uniform", **common)
    relevance = ze.personalize(pipe, "a cat on grass", {"cat": ref}, **common)
    backbone = backbone_for(pipe)
    x = torch.randn(1, 32, 6, 10, generator=torch.Generator().manual_seed(0))
    theirs = pipe(image=[Image.fromarray(ref)], prompt="a cat on grass", num_inference_steps=3, height=96, width=160,
                  latents=x, output_type="latent", max_sequence_length=backbone.text_length()).images
    ours = uniform.latents
    if variant == "dev":  # Flux2Pipeline returns packed tokens; Flux2KleinPipeline the VAE's raw latents
        theirs = theirs.transpose(1, 2).unflatten(2, (6, 10))
    else:
        mean, std = backbone._bn(ours)
        ours = type(pipe)._unpatchify_latents(ours * std + mean)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(relevance.latents, uniform.latents, atol=1e-5)
    assert uniform.relevance_maps is None and torch.allclose(relevance.relevance_maps, torch.ones(1, 6, 10))


def test_personalize_default_budget_maps_and_restoration(klein):
    """Defaults (30 steps, CFG 4): 30 calls with [uncond, cond], as plain generation; the maps are normalised over
    the objects; relevance and uniform weighting differ; deterministic; processors restored."""
    before = processors_snapshot(klein)
    refs = {"cat": make_image(1, (64, 64)), "dog": [make_image(2, (64, 64)), make_image(3, (96, 64))]}
    out = ze.personalize(klein, "a cat and a dog", refs, seed=0, output_type="latent")
    again = ze.personalize(klein, "a cat and a dog", refs, seed=0, output_type="latent")
    uniform = ze.personalize(klein, "a cat and a dog", refs, weighting="uniform", seed=0, output_type="latent")
    assert (out.stats.unet_calls, out.stats.unet_evals) == (30, 60)
    assert out.stats.params["guidance_scale"] == 4.0 and out.stats.params["scale"] == 1.0
    assert out.relevance_maps.shape == (2, 8, 8)
    assert torch.allclose(out.relevance_maps.sum(0), torch.ones(8, 8), atol=1e-5)
    assert torch.equal(out.images, again.images) and (out.images - uniform.images).abs().max() > 1e-4
    assert processors_snapshot(klein) == before
    image = ze.personalize(klein, "a cat and a dog", refs, steps=2, size=SIZE, seed=0).image
    assert image.size == SIZE


def test_each_reference_is_weighted_by_its_objects_relevance(klein):
    """In a controlled layer, image query p's attention on reference k (object i) relative to a text key is
    multiplied by s·Ã_i(p) — compared with the same layer's probabilities without the rule."""
    backbone = backbone_for(klein)
    images = [Image.fromarray(make_image(seed, (64, 64))) for seed in (1, 2, 3)]
    refs = backbone.encode_references(images)
    prompt = "a cat and a dog"
    offsets = backbone.token_offsets(prompt)
    spans = [_phrase_span(offsets, prompt, phrase) for phrase in ("cat", "dog")]
    layer, x, cond = "transformer_blocks.0.attn", _latents(3), backbone.encode_prompt(prompt)

    def probs(rule):
        controller = Controller()
        if rule is not None:
            controller.add(rule)
        record = controller.add(Record([layer], "probs", stream="joint"))
        controller.set_call(0, 0.7, [("cond", 1)], (6, 10), reference_tokens=48)
        with controller.installed(klein.transformer):
            backbone.transformer_call(x, 0.7, cond, references=refs)
        return record.store[(layer, "probs", 0)][0].double()

    rule = ReferenceRelevance([layer], spans, [0, 1, 1], refs.counts, 2.0, "relevance")
    plain, weighted = probs(None), probs(rule)
    maps = rule.maps_sum.flatten(1).double()  # Ã (objects, 60), one call
    text, image, start = 64, slice(64, 124), 124
    for k, owner in enumerate([0, 1, 1]):
        cols = slice(start + 16 * k, start + 16 * (k + 1))
        ratio = (weighted[:, image, cols] / weighted[:, image, :1]) / (plain[:, image, cols] / plain[:, image, :1])
        assert torch.allclose(ratio, (2.0 * maps[owner])[None, :, None].expand_as(ratio), rtol=1e-3)
    assert torch.allclose(weighted[:, :text], plain[:, :text], atol=1e-6)  # text queries untouched


def test_unsupported_combinations_are_refused_before_model_work(klein, variants):
    """Typed errors, and no component of the pipeline has run; processors unchanged."""
    ref, seg, dev = make_image(1, (64, 64)), np.ones((64, 64), bool), variants["dev"]
    cases = [
        (ParameterError, klein, lambda: ze.compose(klein, make_image(0), ref, (40, 40, 88, 88), reference_mask=seg,
                                                   inversion_prompt="exceptional")),
        (ParameterError, klein, lambda: ze.translate(klein, make_image(0), "a dog", layers="vital")),
        (ParameterError, klein, lambda: ze.invert(klein, make_image(0), prompt="exceptional")),
        (ParameterError, klein, lambda: ze.personalize(klein, "a cat", {"cat": ref}, regions={"cat": (0, 0, 64, 64)})),
        (ParameterError, klein, lambda: ze.personalize(klein, "a cat", {"cat": ref}, mip_weights="x.bin")),
        (ParameterError, klein, lambda: ze.personalize(klein, "a cat", {"dog": ref})),
        (ParameterError, klein, lambda: ze.personalize(klein, "a cat", {"cat": ref}, scale=0.0)),
        (ParameterError, klein, lambda: ze.personalize(klein, "a cat", {"cat": ref}, phrase_encoding="alone")),
        (ParameterError, dev, lambda: ze.personalize(dev, "a cat", {"cat": ref}, negative_prompt="ugly")),
        (ImageError, klein, lambda: ze.personalize(klein, "a cat and a dog", {"cat": ref, "dog": make_image(2, (32, 32))})),
    ]
    for error, pipe, call in cases:
        with no_model_work(pipe), pytest.raises(error):
            call()
    with pytest.raises(ParameterError, match="zeros"):
        backbone_for(klein).exceptional_cond(1, "exceptional")
    with pytest.raises(ParameterError, match="FLUX.2"):
        ze.load("tiny-flux2", ip_adapter=True)
