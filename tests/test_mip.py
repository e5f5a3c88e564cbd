"""personalize (MIP-Adapter): relevance maps, budgets, equivalences, checkpoints, restoration, errors."""
import pytest
import torch
from safetensors.torch import save_file

import zeroedit as ze
from zeroedit.control import attention_layers
from zeroedit.errors import CheckpointError, ModelError, ParameterError

from conftest import make_image, processors_snapshot


@pytest.fixture(scope="module")
def ip_pipe():
    return ze.load("tiny", ip_adapter=True)


REFS = {"cat": make_image(0), "dog": make_image(1)}


def test_relevance_maps_are_a_partition_and_calls_equal_plain_generation(ip_pipe):
    out = ze.personalize(ip_pipe, "a cat and a dog", REFS, steps=30, seed=0, output_type="latent")
    assert out.stats.unet_calls == 30 and out.stats.unet_evals == 60  # plain CFG generation: 30 calls, 60 evals
    maps = out.relevance_maps
    assert maps.shape == (2, 16, 16) and (maps >= 0).all()
    assert torch.allclose(maps.sum(0), torch.ones(16, 16), atol=1e-5)
    assert out.objects == ["cat", "dog"]


def test_one_object_relevance_equals_uniform(ip_pipe):
    kwargs = dict(steps=5, seed=1, output_type="latent")
    relevance = ze.personalize(ip_pipe, "a photo of a cat", {"cat": make_image(3)}, **kwargs)
    uniform = ze.personalize(ip_pipe, "a photo of a cat", {"cat": make_image(3)}, weighting="uniform", **kwargs)
    assert torch.equal(relevance.images, uniform.images)


def test_uniform_one_object_equals_diffusers_ip_adapter_pipeline(ip_pipe):
    """The baseline is exactly diffusers' own IP-Adapter generation (same scheduler, noise, CFG, scale)."""
    from zeroedit.methods.mip import REFERENCE_NEGATIVE
    ours = ze.personalize(ip_pipe, "a cat", {"cat": make_image(0)}, weighting="uniform", scale=1.0, steps=4, seed=0,
                          output_type="latent")
    theirs = ip_pipe(prompt="a cat", negative_prompt=REFERENCE_NEGATIVE, ip_adapter_image=make_image(0),
                     num_inference_steps=4, guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                     output_type="latent").images
    assert torch.allclose(ours.images, theirs, atol=1e-5)


def test_deterministic(ip_pipe):
    kwargs = dict(steps=3, seed=7, output_type="latent")
    first = ze.personalize(ip_pipe, "a cat and a dog", REFS, **kwargs)
    assert torch.equal(first.images, ze.personalize(ip_pipe, "a cat and a dog", REFS, **kwargs).images)


def test_two_objects_differ_from_uniform_and_three_run(ip_pipe):
    kwargs = dict(steps=5, seed=1, output_type="latent")
    relevance = ze.personalize(ip_pipe, "a cat and a dog", REFS, **kwargs)
    uniform = ze.personalize(ip_pipe, "a cat and a dog", REFS, weighting="uniform", **kwargs)
    assert (relevance.images - uniform.images).abs().max() > 1e-3
    three = ze.personalize(ip_pipe, "a cat, a dog and a hat", REFS | {"hat": make_image(4)}, **kwargs)
    assert three.relevance_maps.shape[0] == 3 and torch.allclose(three.relevance_maps.sum(0), torch.ones(16, 16), atol=1e-5)


def test_several_images_of_one_object_are_averaged(ip_pipe):
    kwargs = dict(steps=3, seed=2, output_type="latent")
    twice = ze.personalize(ip_pipe, "a cat", {"cat": [make_image(5), make_image(5)]}, **kwargs)
    once = ze.personalize(ip_pipe, "a cat", {"cat": make_image(5)}, **kwargs)
    assert torch.allclose(twice.images, once.images, atol=1e-5)
    mixed = ze.personalize(ip_pipe, "a cat", {"cat": [make_image(5), make_image(6)]}, **kwargs)
    assert not torch.allclose(mixed.images, once.images, atol=1e-3)


def test_non_square_and_sdxl():
    out = ze.personalize(ze.load("tiny", ip_adapter=True), "a cat", {"cat": make_image(0)}, steps=3, height=64, width=96)
    assert out.image.size == (96, 64) and out.relevance_maps.shape == (1, 8, 12)
    xl = ze.load("tiny-xl", ip_adapter=True)
    out = ze.personalize(xl, "a cat and a dog", REFS, steps=3, seed=0)
    assert out.image.size == (128, 128) and out.stats.unet_calls == 3
    inside = ze.personalize(xl, "a cat and a dog", REFS, steps=3, seed=0, phrase_encoding="prompt")
    assert torch.allclose(inside.relevance_maps.sum(0), torch.ones(16, 16), atol=1e-5)
    assert not torch.allclose(inside.relevance_maps, out.relevance_maps, atol=1e-4)


@pytest.mark.parametrize("model", ["tiny", "tiny-xl"])
def test_plus_adapters(model):
    pipe = ze.load(model, ip_adapter={"plus": True})
    assert type(pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__ == "IPAdapterPlusImageProjection"
    before = processors_snapshot(pipe)
    out = ze.personalize(pipe, "a cat and a dog", REFS, steps=2, seed=0, output_type="latent")
    assert torch.allclose(out.relevance_maps.sum(0), torch.ones(16, 16), atol=1e-5) and out.stats.unet_evals == 4
    assert processors_snapshot(pipe) == before


def test_mip_checkpoint_gates(ip_pipe, tmp_path):
    layers = attention_layers(ip_pipe.unet, "attn2")
    modules = dict(ip_pipe.unet.named_modules())
    gen = torch.Generator().manual_seed(0)
    state = {}
    for index, name in enumerate(layers):
        hidden, cross = modules[name].to_k.out_features, ip_pipe.unet.config.cross_attention_dim
        key = 2 * index + 1
        state[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross, generator=gen) * 0.1
        state[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross, generator=gen) * 0.1
        state[f"ip_adapter.{key}.text_to_weight.weight"] = torch.randn(1, hidden, generator=gen)
    path = tmp_path / "mip.safetensors"
    save_file(state, str(path))
    before = {k: v.clone() for k, v in ip_pipe.unet.state_dict().items() if "to_k_ip" in k}
    kwargs = dict(steps=3, seed=0, output_type="latent")
    gated = ze.personalize(ip_pipe, "a cat and a dog", REFS, mip_weights=str(path), **kwargs)
    plain = ze.personalize(ip_pipe, "a cat and a dog", REFS, **kwargs)
    assert (gated.images - plain.images).abs().max() > 1e-3
    assert all(torch.equal(v, ip_pipe.unet.state_dict()[k]) for k, v in before.items())  # adapter untouched
    pickled = tmp_path / "mip.bin"
    torch.save({"ip_adapter": {k[len("ip_adapter."):]: v for k, v in state.items()}}, str(pickled))
    again = ze.personalize(ip_pipe, "a cat and a dog", REFS, mip_weights=str(pickled), **kwargs)
    assert torch.allclose(again.images, gated.images, atol=1e-6)
    evil = tmp_path / "evil.bin"
    torch.save({"ip_adapter": {"1.to_k_ip.weight": torch.zeros(1)}, "payload": Exception("not a tensor")}, str(evil))
    with pytest.raises(CheckpointError):
        ze.personalize(ip_pipe, "a cat and a dog", REFS, mip_weights=str(evil), **kwargs)
    state.pop(next(iter(state)))
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError):
        ze.personalize(ip_pipe, "a cat and a dog", REFS, mip_weights=str(tmp_path / "broken.safetensors"), **kwargs)


def test_pipeline_restored_also_after_an_error(ip_pipe):
    before = processors_snapshot(ip_pipe)
    scheduler_state = dict(ip_pipe.scheduler.config)

    def boom(pipe, step, t, kwargs):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        ze.personalize(ip_pipe, "a cat", {"cat": make_image(0)}, steps=3, callback_on_step_end=boom)
    assert processors_snapshot(ip_pipe) == before and dict(ip_pipe.scheduler.config) == scheduler_state


def test_phrase_encoding_prompt_reads_the_phrase_tokens_inside_the_prompt(ip_pipe):
    """phrase_encoding="prompt" keys the relevance with the phrase's own positions in the prompt's encoding."""
    from zeroedit.methods.mip import _phrase_in_prompt
    prompt = "a photo of a cat and a big dog"
    ids = ip_pipe.tokenizer(prompt).input_ids
    words = ip_pipe.tokenizer("big dog", add_special_tokens=False).input_ids  # the tiny vocabulary splits words
    start, count = _phrase_in_prompt(ip_pipe.tokenizer, prompt, "big dog")
    assert count == len(words) and start > 1 and ids[start:start + count] == words
    kwargs = dict(steps=3, seed=0, output_type="latent")
    alone = ze.personalize(ip_pipe, prompt, {"cat": make_image(0), "big dog": make_image(1)}, **kwargs)
    inside = ze.personalize(ip_pipe, prompt, {"cat": make_image(0), "big dog": make_image(1)},
                            phrase_encoding="prompt", **kwargs)
    assert inside.stats.unet_calls == alone.stats.unet_calls == 3
    assert torch.allclose(inside.relevance_maps.sum(0), torch.ones(16, 16), atol=1e-5)
    assert not torch.allclose(inside.relevance_maps, alone.relevance_maps, atol=1e-4)
    assert not torch.equal(inside.images, alone.images)


def test_phrase_beyond_the_token_limit_is_refused_with_phrase_encoding_prompt(ip_pipe):
    calls = []
    handle = ip_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ParameterError, match="first 77 tokens"):
            ze.personalize(ip_pipe, "a sofa " * 40 + "and a cat", {"cat": make_image(0)}, phrase_encoding="prompt")
    finally:
        handle.remove()
    assert not calls


def test_heatmaps(ip_pipe, tmp_path):
    out = ze.personalize(ip_pipe, "a cat and a dog", REFS, steps=2, seed=0)
    sheet = ze.visualize.relevance_heatmaps(out, out=str(tmp_path / "maps.png"))
    assert sheet.size == (256, 128) and (tmp_path / "maps.png").exists()


@pytest.mark.parametrize("kwargs, error", [
    (dict(references={"horse": make_image(0)}), ParameterError), (dict(references={}), ParameterError),
    (dict(references={"ca": make_image(0)}), ParameterError), (dict(weighting="max"), ParameterError),
    (dict(phrase_encoding="context"), ParameterError),
    (dict(height=100), ParameterError), (dict(steps=0), ParameterError), (dict(mip_weights="/none.bin"), CheckpointError),
    (dict(scale="big"), ParameterError)])
def test_bad_input_is_refused_before_model_work(ip_pipe, kwargs, error):
    calls = []
    handle = ip_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        args = dict(references={"cat": make_image(0)}) | kwargs
        with pytest.raises(error):
            ze.personalize(ip_pipe, "a cat on a sofa", args.pop("references"), **args)
    finally:
        handle.remove()
    assert not calls


def test_pipeline_without_adapter_is_refused(tiny_pipe):
    with pytest.raises(ModelError, match="load_ip_adapter"):
        ze.personalize(tiny_pipe, "a cat", {"cat": make_image(0)})


def test_default_ip_adapter_follows_the_model_family():
    """ip_adapter=True on a real model loads the reference h94/IP-Adapter of its family (chosen by the UNet's
    text width); SD 2.x has none, and the error says how to pass one."""
    from types import SimpleNamespace

    from zeroedit.loading import default_ip_adapter

    def pipe(width):
        return SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(cross_attention_dim=width)))
    assert default_ip_adapter(pipe(768))["weight_name"] == "ip-adapter_sd15.safetensors"
    assert default_ip_adapter(pipe(2048))["subfolder"] == "sdxl_models"
    with pytest.raises(ParameterError, match="load_ip_adapter"):
        default_ip_adapter(pipe(1024))


def test_default_ip_adapter_on_flow_models(tiny_flux_pipe, tiny_sd3_pipe):
    """FLUX.1's default is XLabs' adapter with its CLIP-L image encoder; SD3 has none personalize can use."""
    from zeroedit.loading import default_ip_adapter
    assert default_ip_adapter(tiny_flux_pipe)["pretrained_model_name_or_path_or_dict"] == "XLabs-AI/flux-ip-adapter"
    with pytest.raises(ParameterError, match="SD3|StableDiffusion3Pipeline"):
        default_ip_adapter(tiny_sd3_pipe)
