"""Flow transformers (SD3 / FLUX): backbone vs diffusers, joint-attention control, rectified-flow inversion,
translate (injection and FlowEdit): budgets, restoration, determinism, errors."""
import numpy as np
import pytest
import torch

import zeroedit as ze
from zeroedit.backbones import FlowBackbone, backbone_for
from zeroedit.backbones.flow import image_ids, pack, unpack
from zeroedit.control import (Controller, Inject, Record, Rule, double_block, from_branch, joint_attention_layers,
                              single_block)
from zeroedit.errors import ModelError, ParameterError
from zeroedit.inversion import FLOW_SOLVERS, euler
from zeroedit.methods.pnp_flow import injection_layers

from conftest import make_image, processors_snapshot
from oracles import GaussianFlow, flow_round_trip


@pytest.fixture(scope="module", params=["sd3", "flux"])
def pipe(request, tiny_sd3_pipe, tiny_flux_pipe):
    return tiny_sd3_pipe if request.param == "sd3" else tiny_flux_pipe


def _latents(seed=0, batch=1, channels=16, side=16):
    return torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(seed))


def _backbone_euler(backbone, x, prompt, steps, guidance):
    """Plain sampling with the backbone: Euler on the pipeline's σ grid, CFG (SD3, negative "") or guidance embedding."""
    cond = backbone.encode_prompt(prompt)
    if backbone.has_cfg:
        cond = ze.Cond.cat([backbone.encode_negative(""), cond])

    def velocity(z, sigma, i, stage):
        out = backbone.transformer_call(torch.cat([z] * len(cond)), sigma, cond, guidance).float()
        if not backbone.has_cfg:
            return out
        uncond, text = out.chunk(2)
        return uncond + guidance * (text - uncond)
    return euler(velocity, x, backbone.sigmas(steps, x.shape[-2:]))[-1]


def _diffusers(pipe, x, prompt, steps, guidance, **kwargs):
    side = x.shape[-1] * FlowBackbone(pipe).vae_scale
    latents = pack(x) if FlowBackbone(pipe).is_flux else x
    out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=side, width=side,
               latents=latents, output_type="latent", **kwargs).images
    return unpack(out, *x.shape[-2:]) if FlowBackbone(pipe).is_flux else out


# ------------------------------------------------------------------ backbone
def test_backbone_samples_exactly_as_the_diffusers_pipeline(pipe):
    """Prompt encoding (CLIP + T5, pooled), the σ grid (shift / mu), model time, packing and guidance all agree
    with the pipeline's own sampler."""
    x, backbone = _latents(1), FlowBackbone(pipe)
    ours = _backbone_euler(backbone, x, "a red cat", 3, 4.0)
    theirs = _diffusers(pipe, x, "a red cat", 3, 4.0, max_sequence_length=backbone.t5_length())
    assert torch.allclose(ours, theirs.float(), atol=1e-4)
    assert backbone.stats.unet_calls == 3 and backbone.stats.unet_evals == (6 if backbone.has_cfg else 3)


def test_pack_unpack_and_ids():
    x = _latents(2, batch=2)
    tokens = pack(x)
    assert tokens.shape == (2, 64, 64) and torch.equal(unpack(tokens, 16, 16), x)
    assert torch.equal(tokens[0, 1, ::4], x[0, :, 0, 2])  # token 1 = patch (row 0, col 1); features (C, 2, 2)
    ids = image_ids(8, 8, "cpu", torch.float32)
    assert ids.shape == (64, 3) and ids[9].tolist() == [0.0, 1.0, 1.0]


def test_sd3_without_t5_and_a_4_channel_vae():
    """The toy-flow layout: SD3 transformer on a ×4, 4-channel VAE without shift_factor, no T5 (zeros, as the
    diffusers pipeline)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection
    from zeroedit.tiny import _text_config, tiny_tokenizer
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 16, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=32)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=CLIPTextModelWithProjection(_text_config()),
                                    tokenizer=tiny_tokenizer(), text_encoder_2=CLIPTextModelWithProjection(_text_config()),
                                    tokenizer_2=tiny_tokenizer(), text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    backbone = FlowBackbone(pipe)
    assert backbone.vae_scale == 4 and backbone.encode_prompt("a").embeds.shape == (1, 77 + 256, 64)
    x = _latents(3, channels=4)
    assert torch.allclose(_backbone_euler(backbone, x, "a cat", 2, 3.0), _diffusers(pipe, x, "a cat", 2, 3.0).float(),
                          atol=1e-4)
    out = ze.translate(pipe, make_image(0, (64, 64)), "a dog", steps=2)
    assert out.image.size == (64, 64)


def test_factory_and_loading(tmp_path, tiny_pipe, tiny_flux_pipe):
    assert type(backbone_for(tiny_pipe)).__name__ == "Backbone"
    assert isinstance(backbone_for(tiny_flux_pipe), FlowBackbone)
    with pytest.raises(ModelError):
        backbone_for(object())
    tiny_flux_pipe.save_pretrained(tmp_path / "flux")
    loaded = ze.load(str(tmp_path / "flux"))
    assert type(loaded).__name__ == "FluxPipeline"
    assert torch.equal(loaded.transformer.x_embedder.weight, tiny_flux_pipe.transformer.x_embedder.weight)


# ------------------------------------------------------------------ control
@pytest.mark.parametrize("stream", ["image", "text", "joint"])
def test_controlled_joint_attention_equals_the_original(pipe, stream):
    """Every layer controlled, the explicit attention matrix built (Record of probs): same output as diffusers'
    own processors (SDPA), and the recorded parts have the stream's token counts."""
    backbone, x = FlowBackbone(pipe), _latents(4, batch=2)
    cond = backbone.encode_prompt(["a cat", "a dog"])
    layers = [key[: -len(".processor")] for key in pipe.transformer.attn_processors]
    reference = backbone.transformer_call(x, 0.6, cond, 2.0)
    controller = Controller()
    record = controller.add(Record(layers, ("q", "v", "probs"), stream=stream))
    controller.set_call(0, 0.6, [("a", 1), ("b", 1)], backbone.token_grid(x.shape[-2:]))
    with controller.installed(pipe.transformer):
        out = backbone.transformer_call(x, 0.6, cond, 2.0)
    assert torch.allclose(out, reference, atol=1e-5)
    text = cond.embeds.shape[1]
    tokens = {"image": 64, "text": text, "joint": 64 + text}[stream]
    first = record.store[(layers[0], "probs", 0)]
    assert first.shape == (2, 4, tokens, tokens) and record.store[(layers[-1], "q", 0)].shape[2] == tokens


def test_injection_reaches_only_the_targets_and_is_the_identity_between_equal_branches(pipe):
    backbone = FlowBackbone(pipe)
    layers = joint_attention_layers(pipe.transformer, "single" if backbone.is_flux else "joint")
    grid = backbone.token_grid((16, 16))
    same_x, same_cond = _latents(5).expand(2, -1, -1, -1), backbone.encode_prompt("a cat").repeat(2)
    x, cond = _latents(6, batch=2), backbone.encode_prompt(["a cat", "a dog"])

    def run(latents, conds, what, stream):
        controller = Controller()
        controller.add(Inject(layers, what, from_branch("a"), ("b",), stream=stream))
        controller.set_call(0, 0.5, [("a", 1), ("b", 1)], grid)
        with controller.installed(pipe.transformer):
            return backbone.transformer_call(latents, 0.5, conds, 2.0)

    assert torch.equal(run(same_x, same_cond, ("q", "k", "v"), "joint"), backbone.transformer_call(same_x, 0.5, same_cond, 2.0))
    plain, injected = backbone.transformer_call(x, 0.5, cond, 2.0), run(x, cond, ("v",), "image")
    assert torch.equal(injected[0], plain[0]) and (injected[1] - plain[1]).abs().max() > 1e-3


def test_layer_names(tiny_sd3_pipe, tiny_flux_pipe):
    assert joint_attention_layers(tiny_flux_pipe.transformer, "double") == [double_block(0), double_block(1)]
    assert joint_attention_layers(tiny_flux_pipe.transformer, "single", blocks=[-1]) == [single_block(1)]
    assert joint_attention_layers(tiny_sd3_pipe.transformer, "joint") == ["transformer_blocks.0.attn",
                                                                         "transformer_blocks.1.attn"]
    assert joint_attention_layers(tiny_sd3_pipe.transformer, "single") == []
    with pytest.raises(ParameterError, match="does not exist"):
        joint_attention_layers(tiny_flux_pipe.transformer, "single", blocks=[2])
    with pytest.raises(ParameterError, match="kind"):
        joint_attention_layers(tiny_flux_pipe.transformer, "triple")


def test_unknown_joint_processor_is_refused_and_restored(tiny_sd3_pipe):
    from diffusers.models.attention_processor import FusedJointAttnProcessor2_0
    transformer = tiny_sd3_pipe.transformer
    saved = transformer.attn_processors
    transformer.set_attn_processor({**saved, "transformer_blocks.0.attn.processor": FusedJointAttnProcessor2_0()})
    try:
        before = processors_snapshot(tiny_sd3_pipe)
        controller = Controller()
        controller.add(Record(["transformer_blocks.0.attn"], "v"))
        with pytest.raises(ModelError, match="JointAttnProcessor2_0"):
            with controller.installed(transformer):
                pass
        assert processors_snapshot(tiny_sd3_pipe) == before
    finally:
        transformer.set_attn_processor(saved)


def test_logit_rule_sees_the_image_block(tiny_flux_pipe):
    """A logits rule that masks image→image attention on the diagonal changes the output; it sees (B, h, 64, 64)."""
    seen = []

    class NoSelf(Rule):
        needs_logits = True

        def logits(self, ctx, logits):
            seen.append(tuple(logits.shape))
            return logits - 1e4 * torch.eye(logits.shape[-1])

    backbone = FlowBackbone(tiny_flux_pipe)
    x, cond = _latents(7), backbone.encode_prompt("a cat")
    controller = Controller()
    controller.add(NoSelf([single_block(0)]))
    controller.set_call(0, 0.5, [("a", 1)], backbone.token_grid(x.shape[-2:]))
    with controller.installed(tiny_flux_pipe.transformer):
        out = backbone.transformer_call(x, 0.5, cond, 2.0)
    assert seen == [(1, 4, 64, 64)] and (out - backbone.transformer_call(x, 0.5, cond, 2.0)).abs().max() > 1e-4


# ------------------------------------------------------------------ inversion
@pytest.mark.parametrize("steps", [8, 15, 30])
def test_second_order_beats_euler_on_the_exact_gaussian_flow(steps):
    oracle = GaussianFlow(torch.tensor([0.3, 0.7, 1.0, 1.5]))
    x0 = oracle.sample((2, 4, 8, 8))
    errors = {name: flow_round_trip(solver, oracle, x0, steps)[1] for name, solver in FLOW_SOLVERS.items()}
    assert errors["euler"] > 100 * errors["rf-solver"]
    assert errors["euler"] > 10 * errors["fireflow"]


@pytest.mark.parametrize("method, calls", [("euler", 5), ("rf-solver", 10), ("fireflow", 6)])
def test_invert_budget_batch_and_reconstruct(pipe, method, calls):
    images = [make_image(0), make_image(1)]
    inversion = ze.invert(pipe, images, method=method, steps=5)
    assert inversion.latents.shape == (6, 2, 16, 16, 16)
    assert inversion.stats.unet_calls == calls and inversion.stats.unet_evals == 2 * calls
    assert inversion.extra["times"][0] == 0.0 and inversion.extra["times"][-1] == 1.0
    single = ze.invert(pipe, images[1], method=method, steps=5)
    assert torch.allclose(single.latents[:, 0], inversion.latents[:, 1], atol=1e-4)  # batching changes nothing
    back = ze.reconstruct(pipe, inversion, output_type="latent")
    assert back.latents.shape == (2, 16, 16, 16) and back.stats.unet_calls == calls


def test_invert_defaults_and_errors(tiny_flux_pipe, tiny_pipe):
    assert ze.invert(tiny_flux_pipe, make_image(0), steps=3).stats.params["method"] == "fireflow"
    for pipe, kwargs in ((tiny_flux_pipe, dict(method="ddim")), (tiny_pipe, dict(method="euler")),
                         (tiny_flux_pipe, dict(prompt="exceptional")), (tiny_flux_pipe, dict(guidance="high"))):
        with pytest.raises(ParameterError):
            ze.invert(pipe, make_image(0), **kwargs)


# ------------------------------------------------------------------ translate
def test_translate_budgets_at_defaults(pipe):
    """Default (FireFlow, 8 steps): inversion 9 calls + sampling 9 calls, whatever the number of prompts."""
    image, cfg = make_image(0), not FlowBackbone(pipe).is_flux
    one = ze.translate(pipe, image, "a dog", output_type="latent")
    three = ze.translate(pipe, image, ["a dog", "a cat", "a fox"], output_type="latent")
    assert one.stats.unet_calls == three.stats.unet_calls == 9 + 9
    assert three.stats.unet_evals == 9 + 9 * 3 * (2 if cfg else 1)
    assert torch.allclose(three.images[:1], one.images, atol=1e-4)  # prompt 1 is unchanged by the others
    reference = ze.translate(pipe, image, "a dog", preset="reference", steps=4, output_type="latent")
    assert reference.stats.unet_calls == 2 * 4 + 2 * 4 and reference.stats.params["solver"] == "rf-solver"


def test_reference_preset_budget_at_its_defaults(tiny_flux_pipe):
    out = ze.translate(tiny_flux_pipe, make_image(0), ["a dog", "a cat"], preset="reference", output_type="latent")
    assert out.stats.params["steps"] == 25 and out.stats.unet_calls == 50 + 50 and out.stats.unet_evals == 50 + 2 * 50


def test_flowedit_budget_is_one_call_per_step_without_inversion(pipe):
    flux = FlowBackbone(pipe).is_flux
    out = ze.translate(pipe, make_image(0), ["a dog", "a cat"], method="flowedit", seed=1, output_type="latent",
                       steps=None if flux else 10)
    n_max = 24 if flux else round(10 * 33 / 50)
    assert out.stats.unet_calls == n_max and out.stats.unet_evals == n_max * (3 if flux else 6)
    again = ze.translate(pipe, make_image(0), ["a dog", "a cat"], method="flowedit", seed=1, output_type="latent",
                         steps=None if flux else 10)
    assert torch.equal(out.images, again.images)


@pytest.mark.parametrize("solver", ["euler", "rf-solver", "fireflow"])
def test_memory_equals_recompute(pipe, solver):
    kwargs = dict(steps=3, attention_steps=1.0, solver=solver, output_type="latent")
    memory = ze.translate(pipe, make_image(2), ["a dog", "a cat"], **kwargs)
    recompute = ze.translate(pipe, make_image(2), ["a dog", "a cat"], source_cache="recompute", **kwargs)
    assert memory.stats.store_bytes["attention"] > 0 and recompute.stats.store_bytes == {"features": 0, "attention": 0}
    assert memory.stats.unet_calls == recompute.stats.unet_calls
    assert torch.allclose(memory.images, recompute.images, atol=1e-4)


def test_injection_matters_and_no_injection_is_plain_inversion_and_sampling(tiny_flux_pipe):
    image = make_image(3)
    kwargs = dict(steps=4, solver="euler", output_type="latent")
    injected = ze.translate(tiny_flux_pipe, image, "a dog", attention_steps=1.0, **kwargs)
    again = ze.translate(tiny_flux_pipe, image, "a dog", attention_steps=1.0, **kwargs)
    plain = ze.translate(tiny_flux_pipe, image, "a dog", attention_steps=0, **kwargs)
    assert torch.equal(injected.images, again.images) and (injected.images - plain.images).abs().max() > 1e-3
    top = ze.invert(tiny_flux_pipe, image, method="euler", steps=4, guidance=1.0).latents[-1]
    expected = _backbone_euler(FlowBackbone(tiny_flux_pipe), top, "a dog", 4, 2.0)
    assert torch.allclose(plain.images, expected, atol=1e-4)


def test_layer_presets(tiny_flux_pipe, tiny_sd3_pipe):
    flux, sd3 = FlowBackbone(tiny_flux_pipe), FlowBackbone(tiny_sd3_pipe)
    assert injection_layers(flux, "single") == ([single_block(0), single_block(1)], ("v",), "joint")
    assert injection_layers(flux, "last-single")[0] == [single_block(1)]
    names, what, stream = injection_layers(flux, "vital")
    assert names == [double_block(0), double_block(1), single_block(0), single_block(1)] and what == ("k", "v")
    assert injection_layers(sd3, "single")[0] == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    out = ze.translate(tiny_flux_pipe, make_image(0), "a dog", steps=2, layers="vital", output_type="latent")
    assert out.stats.params["stream"] == "image"


def test_schnell_layout_runs(tmp_path):
    from zeroedit.tiny_flow import build_tiny_flux
    schnell = build_tiny_flux(guidance_embeds=False)
    out = ze.translate(schnell, make_image(0), "a dog", steps=2)
    assert out.image.size == (128, 128) and out.stats.unet_calls == 6


def test_pipeline_restored_also_after_an_error(pipe):
    before = processors_snapshot(pipe)

    def boom(p, step, t, kwargs):
        if step == 1:
            raise RuntimeError("stop")
        return kwargs

    with pytest.raises(RuntimeError):
        ze.translate(pipe, make_image(0), "a dog", steps=3, attention_steps=1.0, callback_on_step_end=boom)
    assert processors_snapshot(pipe) == before
    ze.translate(pipe, make_image(0), "a dog", steps=2, output_type="np")
    assert processors_snapshot(pipe) == before


def test_callback_can_replace_latents(tiny_flux_pipe):
    seen = []

    def zero_last(p, step, t, kwargs):
        seen.append(step)
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == 1 else kwargs

    out = ze.translate(tiny_flux_pipe, make_image(0), "a dog", steps=2, callback_on_step_end=zero_last,
                       output_type="latent")
    assert seen == [0, 1] and torch.equal(out.images, torch.zeros_like(out.images))


@pytest.mark.parametrize("method", ["euler", "rf-solver", "fireflow"])
def test_invert_callback_observes_and_its_dict_is_ignored(tiny_flux_pipe, method):
    """invert's callback(step, σ, latents) sees every step; a diffusers kwargs dict it returns (the app's and the
    CLI's wrapper) changes nothing, as on the UNet inversions."""
    seen = []
    plain = ze.invert(tiny_flux_pipe, make_image(0), method=method, steps=2)
    observed = ze.invert(tiny_flux_pipe, make_image(0), method=method, steps=2,
                         callback=lambda i, t, x: seen.append(i) or {"latents": torch.zeros_like(x)})
    assert seen == [0, 1] and torch.equal(observed.latents, plain.latents)


@pytest.mark.parametrize("kwargs", [dict(feature_steps=1.5), dict(inversion_steps=3), dict(layers=["nope.attn"]),
                                    dict(layers="a list of layer names"), dict(solver="ddim"), dict(preset="fast"), dict(strength=0.5),
                                    dict(method="flowedit", preset="reference"), dict(method="pix2pix"),
                                    dict(guidance_scale="high"), dict(seed="x"), dict(attention_steps=2.0)])
def test_translate_refuses_bad_input_before_model_work(tiny_flux_pipe, kwargs):
    calls = []
    handle = tiny_flux_pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ParameterError):
            ze.translate(tiny_flux_pipe, make_image(0), "a dog", **kwargs)
    finally:
        handle.remove()
    assert not calls


def test_flow_only_arguments_on_a_unet_pipeline(tiny_pipe, tiny_sd3_pipe):
    for kwargs in (dict(solver="euler"), dict(layers="single"), dict(method="flowedit")):
        with pytest.raises(ParameterError):
            ze.translate(tiny_pipe, make_image(0), "a dog", **kwargs)
    with pytest.raises(ParameterError, match="FLUX"):
        ze.translate(tiny_sd3_pipe, make_image(0), "a dog", layers="vital")


def test_output_types(tiny_sd3_pipe):
    out = ze.translate(tiny_sd3_pipe, make_image(0, (192, 128)), "a dog", steps=2, output_type="np")
    assert out.images.shape == (1, 128, 192, 3) and out.images.dtype == np.float32


def test_feature_injection_of_block_image_tokens(tiny_flux_pipe):
    """feature_steps injects the image tokens the chosen blocks output (recorded during inversion): it changes
    the result, and memory equals recompute."""
    kwargs = dict(steps=3, attention_steps=0, solver="euler", output_type="latent")
    plain = ze.translate(tiny_flux_pipe, make_image(4), "a dog", **kwargs)
    memory = ze.translate(tiny_flux_pipe, make_image(4), "a dog", feature_steps=1.0, **kwargs)
    recompute = ze.translate(tiny_flux_pipe, make_image(4), "a dog", feature_steps=1.0, source_cache="recompute",
                             **kwargs)
    assert memory.stats.params["feature_steps"] == 3 and memory.stats.store_bytes["features"] > 0
    assert (memory.images - plain.images).abs().max() > 1e-3
    assert torch.allclose(memory.images, recompute.images, atol=1e-4)


def test_sd35_layout_dual_attention_and_qk_norm():
    """SD3.5's blocks: qk RMS norms and an image-only `attn2` (JointAttnProcessor2_0 without text); every layer
    controlled with the explicit matrix gives the original output."""
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                  attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                  caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=32,
                                  dual_attention_layers=(0,), qk_norm="rms_norm")
    layers = [key[: -len(".processor")] for key in model.attn_processors]
    assert "transformer_blocks.0.attn2" in layers
    x, text, pooled = _latents(8), torch.randn(1, 20, 64), torch.randn(1, 64)
    with torch.no_grad():
        reference = model(x, text, pooled, torch.tensor([500.0]), return_dict=False)[0]
        controller = Controller()
        controller.add(Record(layers, ("q", "probs"), stream="joint"))
        controller.set_call(0, 0.5, [("a", 1)], (8, 8))
        with controller.installed(model):
            out = model(x, text, pooled, torch.tensor([500.0]), return_dict=False)[0]
    assert torch.allclose(out, reference, atol=1e-5)


def test_long_prompt_on_t5_warns(tiny_flux_pipe, caplog):
    """T5's part (32 tokens on the tiny model) truncates with the same warning as CLIP; a short prompt does not."""
    import logging
    backbone = FlowBackbone(tiny_flux_pipe)
    with caplog.at_level(logging.WARNING, logger="zeroedit"):
        backbone.encode_prompt("a cat " * 10)  # 41 T5 tokens, 42 CLIP tokens: only T5 truncates
    assert [r.getMessage().split(";")[0] for r in caplog.records if "truncated" in r.getMessage()] == [
        "prompt truncated to the text encoder's 32 tokens"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zeroedit"):
        backbone.encode_prompt("a cat")
    assert not any("truncated" in record.getMessage() for record in caplog.records)
