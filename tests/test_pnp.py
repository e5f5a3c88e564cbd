"""translate (Plug-and-Play): budgets, memory == recompute, injection, restoration, errors, visualisation."""
import pytest
import torch

import zeroedit as ze
from zeroedit.errors import ImageError, ParameterError
from zeroedit.methods.common import check_window as window
from zeroedit.methods.pnp import injection_layers

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
    assert recompute.stats.unet_evals == 200 and recompute.stats.unet_calls == 100  # 50 + 3·50: source in-batch every step
    assert min(memory.stats.store_bytes.values()) > 0 and recompute.stats.store_bytes == {"features": 0, "attention": 0}


def test_memory_and_recompute_give_the_same_image(runs):
    _, memory, recompute = runs
    assert memory.images.shape == (1, 4, 16, 16)
    assert torch.allclose(memory.images, recompute.images, atol=2e-3)


@pytest.mark.parametrize("steps", [1, 4])
def test_memory_equals_recompute_at_few_steps(tiny_pipe, steps):
    image = make_image(3)
    kwargs = dict(steps=steps, feature_steps=1.0, attention_steps=1.0, output_type="latent")
    memory = ze.translate(tiny_pipe, image, ["a dog", "a cat"], **kwargs)
    recompute = ze.translate(tiny_pipe, image, ["a dog", "a cat"], source_cache="recompute", **kwargs)
    assert memory.stats.unet_evals == steps + 1 + 2 * 2 * steps and recompute.stats.unet_evals == steps + 5 * steps
    assert torch.allclose(memory.images, recompute.images, atol=2e-3)


def test_finer_inversion_grid_caches_every_source_step(tiny_pipe):
    """inversion_steps a multiple of steps (preset="reference" uses 999): the inversion also evaluates the
    first sampling step's source input, so memory mode needs no in-batch source at all."""
    image = make_image(5)
    kwargs = dict(steps=2, inversion_steps=4, feature_steps=1.0, attention_steps=1.0, output_type="latent")
    memory = ze.translate(tiny_pipe, image, "a dog", **kwargs)
    recompute = ze.translate(tiny_pipe, image, "a dog", source_cache="recompute", **kwargs)
    assert memory.stats.unet_evals == 4 + 2 * 2 and recompute.stats.unet_evals == 4 + 3 * 2
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


def test_no_injection_equals_plain_inversion_and_regeneration(tiny_pipe):
    """feature_steps = attention_steps = 0: DDIM inversion with "" then CFG DDIM sampling with the prompt,
    written out here with the foundation's pure functions — injection is the only thing PnP adds."""
    from zeroedit.backbones import Backbone, Cond
    from zeroedit.images import prepare_image, to_tensor
    from zeroedit.inversion import ddim_invert, ddim_sample, ddim_timesteps

    image, steps = make_image(4), 4
    out = ze.translate(tiny_pipe, image, "a dog", steps=steps, feature_steps=0, attention_steps=0,
                       output_type="latent")
    backbone = Backbone(tiny_pipe)
    with torch.no_grad():
        x0 = backbone.encode_image(to_tensor(prepare_image(image)))
        source, grid = backbone.encode_prompt(""), ddim_timesteps(backbone, steps)
        x_top = ddim_invert(backbone, lambda x, t, j: backbone.unet_call(x, t, source), x0, grid)[-1]
        cond = Cond.cat([backbone.encode_negative(["ugly, blurry, black, low res, unrealistic"]),
                         backbone.encode_prompt(["a dog"])])

        def cfg(x, t, i):
            uncond, text = backbone.unet_call(torch.cat([x, x]), t, cond).chunk(2)
            return uncond + 7.5 * (text - uncond)

        expected = ddim_sample(backbone, cfg, x_top.float(), grid)
    assert torch.allclose(out.images, expected, atol=1e-4)


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
