"""translate (Plug-and-Play): budgets, memory == recompute, injection, restoration, errors, visualisation."""
import numpy as np
import pytest
import torch

import zeroedit as ze
from zeroedit.errors import ImageError, ParameterError
from zeroedit.methods.pnp import injection_layers, window

from conftest import make_image, processors_snapshot


@pytest.fixture(scope="module")
def runs(tiny_pipe):
    image = make_image(0)
    memory = ze.translate(tiny_pipe, image, "a dog", output_type="latent")
    recompute = ze.translate(tiny_pipe, image, "a dog", output_type="latent", source_cache="recompute")
    return image, memory, recompute


def test_budget_at_defaults(runs):
    _, memory, recompute = runs
    assert memory.stats.unet_evals == 151 and memory.stats.unet_calls == 100  # 50 + 1 + 2·50
    assert recompute.stats.unet_evals == 190 and recompute.stats.unet_calls == 100  # source in-batch while injecting
    assert memory.stats.extra["cache_bytes"] > 0 and recompute.stats.extra["cache_bytes"] == 0


def test_memory_and_recompute_give_the_same_image(runs):
    _, memory, recompute = runs
    assert memory.images.shape == (1, 4, 16, 16)
    assert torch.allclose(memory.images, recompute.images, atol=2e-3)


def test_several_prompts_share_one_inversion(tiny_pipe, runs):
    image, memory, _ = runs
    both = ze.translate(tiny_pipe, image, ["a dog", "a cat"], output_type="latent")
    assert both.stats.unet_evals == 50 + 1 + 2 * 2 * 50 and both.stats.unet_calls == 100
    assert torch.allclose(both.images[:1], memory.images, atol=2e-3)  # prompt 1 is unchanged by prompt 2


def test_injection_changes_the_result_and_is_deterministic(tiny_pipe):
    image = make_image(1)
    a = ze.translate(tiny_pipe, image, "a dog", steps=10, output_type="latent")
    b = ze.translate(tiny_pipe, image, "a dog", steps=10, output_type="latent")
    plain = ze.translate(tiny_pipe, image, "a dog", steps=10, feature_steps=0, attention_steps=0, output_type="latent")
    assert torch.equal(a.images, b.images)
    assert (a.images - plain.images).abs().max() > 0.1
    assert plain.stats.unet_evals == 10 + 2 * 10  # nothing injected: no source evaluation, empty cache


def test_injecting_the_source_into_an_identical_branch_changes_nothing(tiny_pipe):
    """One step, target = source prompt, no guidance: every branch equals the source branch, so injecting
    the source's features and q/k must be the identity (a swapped q/k or a wrong layer would not be)."""
    image = make_image(2)
    kwargs = dict(source_prompt="a cat", negative_prompt="a cat", guidance_scale=1.0, steps=1, output_type="latent")
    injected = ze.translate(tiny_pipe, image, "a cat", feature_steps=1.0, attention_steps=1.0, **kwargs)
    plain = ze.translate(tiny_pipe, image, "a cat", feature_steps=0, attention_steps=0, **kwargs)
    assert injected.stats.unet_evals == plain.stats.unet_evals + 1  # the source rode in the batch
    assert torch.allclose(injected.images, plain.images, atol=1e-4)


def test_pipeline_restored_also_after_an_error(tiny_pipe):
    before = processors_snapshot(tiny_pipe)

    def boom(pipe, step, t, kwargs):
        if step == 2:
            raise RuntimeError("stop")
        return kwargs

    with pytest.raises(RuntimeError):
        ze.translate(tiny_pipe, make_image(0), "a dog", steps=5, callback_on_step_end=boom)
    assert processors_snapshot(tiny_pipe) == before
    ze.translate(tiny_pipe, make_image(0), "a dog", steps=3)
    assert processors_snapshot(tiny_pipe) == before


def test_sdxl_runs(tiny_xl_pipe):
    feature, layers = injection_layers(tiny_xl_pipe.unet)
    assert feature == "up_blocks.0.resnets.1.conv2" and all(n.startswith("up_blocks.") for n in layers)
    out = ze.translate(tiny_xl_pipe, make_image(0), "a dog", steps=4)
    assert out.image.size == (128, 128) and out.stats.unet_calls == 8


def test_windows():
    assert window(0.8, 50, "f") == 40 and window(0.5, 50, "a") == 25 and window(0.29, 100, "x") == 29
    assert window(7, 50, "f") == 7


@pytest.mark.parametrize("kwargs, error", [
    (dict(prompt=[]), ParameterError), (dict(prompt=3), ParameterError), (dict(source_cache="disk"), ParameterError),
    (dict(feature_steps=1.5), ParameterError), (dict(attention_steps=80), ParameterError),
    (dict(steps=0), ParameterError), (dict(preset="fast"), ParameterError), (dict(inversion_steps=30), ParameterError),
    (dict(image="/no/such/file.png"), ImageError), (dict(output_type="jpg"), ParameterError)])
def test_bad_input_is_refused_before_model_work(tiny_pipe, kwargs, error):
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        args = dict(image=make_image(0), prompt="a dog") | kwargs
        with pytest.raises(error):
            ze.translate(tiny_pipe, args.pop("image"), args.pop("prompt"), **args)
    finally:
        handle.remove()
    assert not calls


def test_features_pca_picture(tiny_pipe, tmp_path):
    out = tmp_path / "pca.png"
    picture = ze.visualize.features_pca(tiny_pipe, make_image(0), step=0, steps=5, out=str(out))
    assert out.exists() and picture.size == (128, 128) and len(np.unique(np.asarray(picture).reshape(-1, 3), axis=0)) > 4
    attention = ze.visualize.features_pca(tiny_pipe, make_image(0), step=2, steps=5, what="q")
    assert attention.size == (128, 128)
    with pytest.raises(ParameterError):
        ze.visualize.features_pca(tiny_pipe, make_image(0), step=5, steps=5)
