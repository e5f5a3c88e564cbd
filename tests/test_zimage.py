"""Z-Image (backbones/zimage.py, tiny_zimage.py): the backbone samples as ZImagePipeline, controlled attention at
the dispatcher seam equals the original with the ImageFirst token layout, every method at its defaults (calls,
sizes, restoration), and the unsupported combinations refused before any model work."""
import logging

import numpy as np
import pytest
import torch

import zeroedit as ze
from zeroedit.backbones import Cond, backbone_for
from zeroedit.backbones.zimage import ZImageBackbone
from zeroedit.control import Controller, Record, attn_processors, joint_attention_layers
from zeroedit.errors import ParameterError, UnsupportedModel
from zeroedit.inversion import euler
from zeroedit.methods.pnp_flow import flowedit_defaults, injection_layers

from conftest import latents_by_step, make_image, no_model_work, processors_snapshot


@pytest.fixture(scope="module")
def pipe():
    return ze.load("tiny-z-image")


def _latents(seed=0, batch=1, h=16, w=20):
    return torch.randn(batch, 16, h, w, generator=torch.Generator().manual_seed(seed))


def _object():
    seg = np.zeros((64, 64), bool)
    seg[16:48, 12:52] = True
    return make_image(1, (64, 64)), seg


# ------------------------------------------------------------------ backbone
@pytest.fixture(params=["static", "dynamic"])
def shifted(request, pipe):
    """The pipeline with its own static shift, or with dynamic shifting (mu from the image tokens)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from zeroedit.tiny_flow import FLUX_DEV_SCHEDULER
    saved = pipe.scheduler
    if request.param == "dynamic":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    yield pipe
    pipe.scheduler = saved


@pytest.mark.parametrize("guidance", [4.0, 0.0])
def test_backbone_samples_exactly_as_the_diffusers_pipeline(shifted, guidance):
    """Qwen3 text under the chat template, σ grid (static shift or mu), model time 1 − σ, the negated output and
    Z-Image's CFG (pos + g·(pos − neg), [negative, prompt] in one call) agree with ZImagePipeline on a non-square
    latent."""
    pipe = shifted
    backbone, x = ZImageBackbone(pipe), _latents(1)
    cond = Cond.cat([backbone.encode_negative(""), backbone.encode_prompt("a red cat")])

    def velocity(z, sigma, i, stage):
        return backbone.guided(backbone.transformer_call(torch.cat([z, z]), sigma, cond), guidance)

    ours = euler(velocity, x, backbone.sigmas(3, x.shape[-2:]))[-1]
    theirs = pipe("a red cat", num_inference_steps=3, guidance_scale=guidance, height=128, width=160, latents=x,
                  output_type="latent").images
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert backbone.stats.unet_calls == 3 and backbone.stats.unet_evals == 6
    if guidance:
        plain = pipe("a red cat", num_inference_steps=3, guidance_scale=0.0, height=128, width=160, latents=x,
                     output_type="latent").images
        assert (plain - theirs).abs().max() > 1e-3  # the guidance acted


def test_texts_of_their_own_length_in_one_call(pipe):
    """encode_prompt is the pipeline's (each text cut to its own tokens); a batch is padded and masked, and one
    call over texts of different lengths equals each text's own call."""
    backbone = ZImageBackbone(pipe)
    prompts = ["a cat", "a dog sitting on a long wooden bench"]
    cond = backbone.encode_prompt(prompts)
    theirs, _ = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False)
    lengths = cond.token_mask().sum(1).tolist()
    assert lengths == [len(t) for t in theirs] and lengths[0] < lengths[1] and cond.pooled is None
    for i, states in enumerate(theirs):
        assert torch.equal(cond.embeds[i, :lengths[i]], states) and not cond.embeds[i, lengths[i]:].any()
    x = _latents(2, batch=2)
    both = backbone.transformer_call(x, 0.7, cond)
    alone = torch.cat([backbone.transformer_call(x[i:i + 1], 0.7, backbone.encode_prompt(p)) for i, p in enumerate(prompts)])
    assert torch.allclose(both, alone, atol=1e-5)
    assert backbone.cond_shapes() == ((None, 32), None) and backbone.size_multiple == 16 and backbone.native_size == 128


def test_long_prompt_warns(pipe, caplog):
    backbone = ZImageBackbone(pipe)
    with caplog.at_level(logging.WARNING, logger="zeroedit"):
        cond = backbone.encode_prompt("a cat " * 100)  # 600 bytes: past the 512 tokens of the template + prompt
    assert cond.embeds.shape[1] == 512 and any("truncated" in r.getMessage() for r in caplog.records)


def test_loading_a_saved_folder_and_the_real_config(pipe, tmp_path):
    """A saved Z-Image folder loads as ZImagePipeline (chat template included) and encodes the same; the real-size
    config describes a ~6 B transformer."""
    from diffusers import ZImageTransformer2DModel
    from zeroedit.tiny_zimage import zimage_transformer_config
    pipe.save_pretrained(tmp_path / "z")
    loaded = ze.load(str(tmp_path / "z"))
    assert type(loaded).__name__ == "ZImagePipeline" and isinstance(backbone_for(loaded), ZImageBackbone)
    assert torch.equal(ZImageBackbone(loaded).encode_prompt("a cat").embeds, ZImageBackbone(pipe).encode_prompt("a cat").embeds)
    with torch.device("meta"):
        real = ZImageTransformer2DModel(**zimage_transformer_config(real=True))
    assert 6.0e9 < sum(p.numel() for p in real.parameters()) < 6.3e9


# ------------------------------------------------------------------ control at the seam
@pytest.mark.parametrize("stream", ["image", "text", "joint"])
def test_controlled_attention_equals_the_original(pipe, stream):
    """Every layer (refiners and main layers) controlled with the explicit matrix built (Record of probs): the
    output of diffusers' own processors; the recorded parts have the stream's token counts (80 image tokens padded
    to 96; texts of two lengths, each padded to a multiple of 32, the shorter one masked)."""
    backbone, x = ZImageBackbone(pipe), _latents(4, batch=2)
    cond = backbone.encode_prompt(["a cat", "a dog sitting on a long wooden bench in a park"])
    text = max(-(-n // 32) * 32 for n in cond.token_mask().sum(1).tolist())
    layers = [key[: -len(".processor")] for key in attn_processors(pipe.transformer)]
    reference = backbone.transformer_call(x, 0.6, cond)
    controller = Controller()
    record = controller.add(Record(layers, ("q", "v", "probs"), stream=stream))
    controller.set_call(0, 0.6, [("a", 2)], backbone.token_grid(x.shape[-2:]))
    with controller.installed(pipe.transformer):
        out = backbone.transformer_call(x, 0.6, cond)
    assert torch.allclose(out, reference, atol=1e-5)
    expected = {"image": {"noise": 80, "context": 0, "layers": 80}, "text": {"noise": 0, "context": text, "layers": text},
                "joint": {"noise": 96, "context": text, "layers": 96 + text}}[stream]
    for layer in layers:
        tokens = expected[layer.split("_")[0].split(".")[0]]
        assert record.store[(layer, "probs", 0)].shape == (2, 4, tokens, tokens)
        assert record.store[(layer, "q", 0)].shape == (2, 4, tokens, 8)


def test_token_layout_against_the_transformer(pipe):
    """ImageFirst as ZImageTransformer2DModel builds its sequence: the image tokens come first (text-independent
    before the main layers' attention: equal for one latent under two texts of one padded length), then each
    text; a shorter text's batch padding gets no attention, its own (padded) tokens do."""
    backbone = ZImageBackbone(pipe)
    x = _latents(5).expand(2, -1, -1, -1)
    same = backbone.encode_prompt(["a cat", "a dog"])
    controller = Controller()
    record = controller.add(Record(["layers.0.attention"], ("q", "probs"), stream="joint"))
    controller.set_call(0, 0.5, [("a", 2)], backbone.token_grid(x.shape[-2:]))
    with controller.installed(pipe.transformer):
        backbone.transformer_call(x, 0.5, same)
        q = record.store[("layers.0.attention", "q", 0)]
        assert torch.allclose(q[0, :, :96], q[1, :, :96], atol=1e-6) and (q[0, :, 96:] - q[1, :, 96:]).abs().max() > 1e-4
        different = backbone.encode_prompt(["a cat", "a dog sitting on a long wooden bench in a park"])
        backbone.transformer_call(x, 0.5, different)
    probs = record.store[("layers.0.attention", "probs", 0)]
    short = 96 + -(-int(different.token_mask()[0].sum()) // 32) * 32
    assert short < probs.shape[-1] and probs[0, :, :short, short:].abs().max() == 0
    assert probs[0, :, :short, 96:short].sum(-1).min() > 0


def test_layer_presets(pipe):
    backbone = ZImageBackbone(pipe)
    main = [f"layers.{i}.attention" for i in range(2)]
    assert joint_attention_layers(pipe.transformer, "single") == main
    assert joint_attention_layers(pipe.transformer, "double") == []
    assert injection_layers(backbone, "single") == (main, ("v",), "image")
    assert injection_layers(backbone, "last-single")[0] == main[-1:]
    with pytest.raises(ParameterError, match="FLUX.1 only"):
        injection_layers(backbone, "vital")
    assert flowedit_defaults(backbone) == dict(steps=28, n_max=24, source=2.5, target=13.5 * 5 / 7)


# ------------------------------------------------------------------ methods at their defaults
def test_translate_defaults_calls_sizes_and_restoration(pipe):
    """FireFlow, 8 steps: 9 + 9 calls, as on FLUX.1, for any number of prompts (CFG: negative and prompt branches);
    a source text of another length than the targets'; output at the non-square input's size; restored."""
    before = processors_snapshot(pipe)
    image = make_image(0, (150, 90))
    one = ze.translate(pipe, image, "a dog", source_prompt="a cat sitting on a long wooden bench in a park")
    three = ze.translate(pipe, image, ["a dog", "a cat", "a fox"], output_type="latent")
    assert one.stats.unet_calls == three.stats.unet_calls == 18
    assert three.stats.unet_evals == 9 + 9 * 3 * 2
    assert one.image.size == (150, 90) and one.stats.params["guidance_scale"] == 5.0
    assert one.stats.params["stream"] == "image" and one.stats.params["layers"] == joint_attention_layers(pipe.transformer, "single")
    assert processors_snapshot(pipe) == before


def test_translate_injection_acts_and_memory_equals_recompute(pipe):
    kwargs = dict(steps=3, attention_steps=1.0, output_type="latent")
    memory = ze.translate(pipe, make_image(2), ["a dog", "a cat"], **kwargs)
    recompute = ze.translate(pipe, make_image(2), ["a dog", "a cat"], source_cache="recompute", **kwargs)
    plain = ze.translate(pipe, make_image(2), ["a dog", "a cat"], steps=3, attention_steps=0, output_type="latent")
    assert memory.stats.store_bytes["attention"] > 0 and torch.allclose(memory.images, recompute.images, atol=1e-4)
    assert (memory.images - plain.images).abs().max() > 1e-3


def test_flowedit_defaults(pipe):
    """No published setting: FLUX's 28 steps / n_max 24, guidance in proportion to the pipeline's default; one
    call per step with source and target, each with its negative branch."""
    out = ze.translate(pipe, make_image(0, (150, 90)), "a dog", source_prompt="a cat", method="flowedit", seed=1)
    assert (out.stats.unet_calls, out.stats.unet_evals) == (24, 24 * 4) and out.image.size == (150, 90)


def test_compose_defaults_background_and_restoration(pipe):
    """42 calls (fireflow 21 + 21; the background rides in the first call); the latent outside the region after
    the preserved updates is the background's, whatever the prompt; output at the input's size; restored."""
    ref, seg = _object()
    before = processors_snapshot(pipe)
    out = ze.compose(pipe, make_image(0, (160, 112)), ref, (48, 24, 112, 88), reference_mask=seg, prompt="a cat", seed=0)
    assert out.stats.unet_calls == 42 and out.stats.unet_evals == 2 * 21 + 2 * 21 + 1
    assert out.image.size == (160, 112) and out.stats.params["inversion_prompt"] == "zeros"
    assert processors_snapshot(pipe) == before
    seen, keep = latents_by_step()

    common = dict(reference_mask=seg, steps=4, tau_b=1.0, seed=0, output_type="latent")
    box = (64, 64, 128, 128)  # latent rows/cols 8…16 of 16
    for name, prompt in (("a", "a cat"), ("b", "a red dog on a long wooden bench")):
        ze.compose(pipe, make_image(0), ref, box, prompt=prompt, callback_on_step_end=keep(name), **common)
    a, b = seen["a"][2], seen["b"][2]
    assert torch.equal(a[..., :8, :], b[..., :8, :]) and (a[..., 8:, 8:] - b[..., 8:, 8:]).abs().max() > 1e-4


def test_edit_defaults(pipe):
    """50 steps: 50 inversion calls + 2 per step, 50 backward passes (as on the UNet and FLUX.1); a direction over
    texts of their own length; output at the input's size; restored."""
    before = processors_snapshot(pipe)
    out = ze.edit(pipe, make_image(0, (150, 90)), "cat", "dog", seed=0)
    assert (out.stats.unet_calls, out.stats.unet_backward) == (150, 50) and out.stats.unet_evals == 50 + 50 * 6
    assert out.image.size == (150, 90) and out.stats.params["guidance_blocks"] == 2
    assert processors_snapshot(pipe) == before and not pipe.transformer.gradient_checkpointing
    direction = ze.directions.build(pipe, "cat", "dog")
    assert direction.pooled is None and direction.embeds.shape[-1] == 32
    guided = ze.edit(pipe, make_image(0), "cat", "dog", steps=2, reg_steps=0, seed=0, xa_guidance=0.5, output_type="latent")
    unguided = ze.edit(pipe, make_image(0), "cat", "dog", steps=2, reg_steps=0, seed=0, xa_guidance=0.0, output_type="latent")
    assert (guided.images - unguided.images).abs().max() > 1e-5


@pytest.mark.parametrize("method, calls", [("euler", 5), ("rf-solver", 10), ("fireflow", 6)])
def test_invert_and_reconstruct_with_every_solver(pipe, method, calls):
    images = [make_image(0, (150, 90)), make_image(1, (150, 90))]
    inversion = ze.invert(pipe, images, method=method, steps=5)
    assert inversion.latents.shape == (6, 2, 16, 10, 16)  # 128 × 80 px: the model's size, the aspect kept
    assert inversion.stats.unet_calls == calls and inversion.stats.unet_evals == 2 * calls
    single = ze.invert(pipe, images[1], method=method, steps=5)
    assert torch.allclose(single.latents[:, 0], inversion.latents[:, 1], atol=1e-4)
    back = ze.reconstruct(pipe, inversion)
    assert back.stats.unet_calls == calls and [im.size for im in back.images] == [(150, 90)] * 2


# ------------------------------------------------------------------ refused before any model work
def test_personalize_is_unsupported(pipe):
    with no_model_work(pipe), pytest.raises(UnsupportedModel):
        ze.personalize(pipe, "a cat", {"cat": make_image(1, (64, 64))})
    with pytest.raises(UnsupportedModel, match="Omni"):
        ze.personalize(pipe, "a cat", {"cat": make_image(1, (64, 64))})


def test_the_omni_pipeline_is_refused(pipe):
    from diffusers import ZImageOmniPipeline
    omni = ZImageOmniPipeline(**pipe.components, siglip=None, siglip_processor=None)
    with no_model_work(omni), pytest.raises(UnsupportedModel):
        ze.translate(omni, make_image(0), "a dog")


@pytest.mark.parametrize("call", [
    lambda pipe: ze.compose(pipe, make_image(0), *_object()[:1], (40, 40, 88, 88), reference_mask=_object()[1],
                            inversion_prompt="exceptional"),
    lambda pipe: ze.translate(pipe, make_image(0), "a dog", feature_steps=0.5),
    lambda pipe: ze.translate(pipe, make_image(0), "a dog", layers="vital"),
], ids=["exceptional-prompt", "feature-injection", "vital-layers"])
def test_unsupported_options_are_refused_before_model_work(pipe, call):
    with no_model_work(pipe), pytest.raises(ParameterError):
        call(pipe)
