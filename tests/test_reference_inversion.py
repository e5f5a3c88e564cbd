"""preset="reference" inversions (issue 15 §5): each DDIM inversion convention against its formula written out
by hand, the reference grids (UNet calls), the default preset unchanged, and the edit stage against diffusers'
StableDiffusionPix2PixZeroPipeline."""
import pytest
import torch

import zeroedit as ze
from zeroedit.backbones import Backbone, Cond
from zeroedit.errors import ParameterError
from zeroedit.images import prepare_image, to_tensor
from zeroedit.inversion import ddim_invert, ddim_sample, ddim_timesteps, inverse_steps
from zeroedit.methods.common import generator
from zeroedit.methods.pix2pix_zero import _edit, _regularized_inversion

from conftest import make_image


class FakeModel:
    """A model function with a known ε(x, t) = 0.3·x + (t / 1000)·c that records the model times it is called at."""

    def __init__(self):
        self.c = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        self.times = []

    def __call__(self, x, t, j):
        self.times.append(t)
        return self.eps(x, t)

    def eps(self, x, t):
        return 0.3 * x + (t / 1000) * self.c


def _move(x, eps, abar_from, abar_to):
    """DDIM with η = 0 written out: x̂₀ from ε at ᾱ_from, then x = √ᾱ_to·x̂₀ + √(1 − ᾱ_to)·ε."""
    x0 = (x - (1 - abar_from) ** 0.5 * eps) / abar_from ** 0.5
    return abar_to ** 0.5 * x0 + (1 - abar_to) ** 0.5 * eps


@pytest.fixture(scope="module")
def setup(tiny_pipe):
    backbone = Backbone(tiny_pipe)
    abar = [float(a) for a in backbone.alphas_cumprod]
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return backbone, abar, x0


def test_zeroedit_convention_by_hand(setup):
    """Default: ε at the latent being moved, at its own time (model time 0 for the clean latent)."""
    backbone, abar, x0 = setup
    grid, model = ddim_timesteps(backbone, 4), FakeModel()  # 1, 251, 501, 751
    path = ddim_invert(backbone, model, x0, grid)
    x = _move(x0, model.eps(x0, 0), abar[0], abar[1])  # SD: the clean end is ᾱ[0] (set_alpha_to_one False)
    assert torch.allclose(path[1], x, atol=1e-6)
    x = _move(x, model.eps(x, 1), abar[1], abar[251])
    assert torch.allclose(path[2], x, atol=1e-6)
    assert model.times == [0, 1, 251, 501] and len(path) == 5


def test_pnp_convention_by_hand(setup):
    """pnp-diffusers preprocess.py: ε at the *target* timestep from the previous latent, for x̂₀ (ᾱ of the
    previous level; final_alpha_cumprod = ᾱ[0] first) and for the move."""
    backbone, abar, x0 = setup
    grid, model = ddim_timesteps(backbone, 4), FakeModel()
    path = ddim_invert(backbone, model, x0, grid, convention="pnp")
    x = _move(x0, model.eps(x0, 1), abar[0], abar[1])
    assert torch.allclose(path[1], x, atol=1e-6)
    x = _move(x, model.eps(x, 251), abar[1], abar[251])
    assert torch.allclose(path[2], x, atol=1e-6)
    for t_from, t_to in ((251, 501), (501, 751)):
        x = _move(x, model.eps(x, t_to), abar[t_from], abar[t_to])
    assert torch.allclose(path[-1], x, atol=1e-6)
    assert model.times == [1, 251, 501, 751] and len(path) == 5


def test_pnp_convention_equals_diffusers_inverse_scheduler(tiny_pipe, setup):
    """The "pnp" convention is also diffusers' DDIMInverseScheduler (ε at the target t, from ᾱ[t − ratio], the
    first step from ᾱ[0] when set_alpha_to_one is False): an independent implementation of the same steps."""
    from diffusers import DDIMInverseScheduler
    backbone, _, x0 = setup
    scheduler = DDIMInverseScheduler.from_config(tiny_pipe.scheduler.config)
    scheduler.set_timesteps(10)
    model, x = FakeModel(), x0
    for t in scheduler.timesteps:
        x = scheduler.step(model.eps(x, int(t)), t, x).prev_sample
    assert [int(t) for t in scheduler.timesteps] == ddim_timesteps(backbone, 10)
    ours = ddim_invert(backbone, model, x0, ddim_timesteps(backbone, 10), convention="pnp")[-1]
    assert torch.allclose(ours, x, atol=1e-5)
    assert not torch.allclose(ddim_invert(backbone, model, x0, ddim_timesteps(backbone, 10))[-1], x, atol=1e-3)


def test_pix2pix_zero_convention_by_hand(setup):
    """Official pix2pix-zero: `timesteps.flip(0)[1:-1]` and `alphas_cumprod[t − 1]` → ᾱ[t + ratio − 1]."""
    backbone, abar, x0 = setup
    grid, model = ddim_timesteps(backbone, 4), FakeModel()
    path = ddim_invert(backbone, model, x0, grid, convention="pix2pix-zero")
    x = _move(x0, model.eps(x0, 251), abar[250], abar[500])
    x = _move(x, model.eps(x, 501), abar[500], abar[750])
    assert model.times == [251, 501] and len(path) == 3
    assert torch.allclose(path[-1], x, atol=1e-6)


def test_reference_grids():
    grid_999 = list(range(1, 1000))  # ddim_timesteps(…, 999) on SD's scheduler: leading spacing, offset 1
    pnp = inverse_steps(grid_999, "pnp")
    assert [s.t for s in pnp] == grid_999 and [s.label for s in pnp] == grid_999  # latent saved per t
    assert pnp[0].level_from is None and [s.level_from for s in pnp[1:]] == grid_999[:-1]
    grid_50 = [1 + 20 * i for i in range(50)]
    p2p = inverse_steps(grid_50, "pix2pix-zero")
    assert len(p2p) == 48 and [s.t for s in p2p] == grid_50[1:-1]
    assert all(s.level_from == s.t - 1 and s.level_to == s.t + 19 for s in p2p)
    assert p2p[0].level_from == 20 and p2p[-1].level_to == 980 and p2p[-1].label == 981
    default = inverse_steps(grid_50)
    assert [s.t for s in default] == [0] + grid_50[:-1] and default[0].level_from is None
    with pytest.raises(ParameterError):
        inverse_steps(grid_50, "ldm")


def test_default_inversion_is_unchanged(setup):
    """The default convention is the loop zeroedit had before the conventions existed, bit for bit."""
    from zeroedit.inversion.ddim import ddim_step
    backbone, _, x0 = setup
    grid, model = ddim_timesteps(backbone, 5), FakeModel()
    levels, x, expected = [None] + grid, x0, [x0]
    for j in range(len(grid)):
        x = ddim_step(backbone, model.eps(x, 0 if levels[j] is None else levels[j]), x, levels[j], levels[j + 1])
        expected.append(x)
    assert all(torch.equal(a, b) for a, b in zip(ddim_invert(backbone, model, x0, grid), expected))


# ----------------------------------------------------------------------------------------- translate (PnP)
def test_translate_reference_runs_the_999_step_pnp_inversion(tiny_pipe):
    out = ze.translate(tiny_pipe, make_image(0, (64, 64)), "a dog", preset="reference", steps=1, output_type="latent")
    assert out.stats.unet_calls == 999 + 1 and out.stats.unet_evals == 999 + 3  # source recomputed in-batch
    assert out.stats.params["inversion_convention"] == "pnp" and out.stats.params["source_cache"] == "recompute"


def test_translate_reference_is_the_pnp_inversion_then_sampling(tiny_pipe):
    """No injection: preset="reference" = the "pnp" inversion (source prompt "") then CFG DDIM sampling from
    the latent at the top of the sampling grid (here inversion_steps=4 and steps=2: t = 501 of 1…751)."""
    image = make_image(4)
    out = ze.translate(tiny_pipe, image, "a dog", preset="reference", steps=2, inversion_steps=4, feature_steps=0,
                       attention_steps=0, output_type="latent")
    assert out.stats.unet_calls == 4 + 2 and out.stats.unet_evals == 4 + 3 * 2
    backbone = Backbone(tiny_pipe)
    with torch.no_grad():
        x0 = backbone.encode_image(to_tensor(prepare_image(image))).float()
        source = backbone.encode_prompt("")
        fine = ddim_timesteps(backbone, 4)
        path = ddim_invert(backbone, lambda x, t, j: backbone.unet_call(x, t, source), x0, fine, convention="pnp")
        x_top = dict(zip(fine, path[1:]))[501]
        cond = Cond.cat([backbone.encode_negative(["ugly, blurry, black, low res, unrealistic"]),
                         backbone.encode_prompt(["a dog"])])

        def cfg(x, t, i):
            uncond, text = backbone.unet_call(torch.cat([x, x]), t, cond).chunk(2)
            return uncond + 7.5 * (text - uncond)

        expected = ddim_sample(backbone, cfg, x_top, ddim_timesteps(backbone, 2))
    assert torch.allclose(out.images, expected, atol=1e-4)
    default = ze.translate(tiny_pipe, image, "a dog", steps=2, inversion_steps=4, feature_steps=0, attention_steps=0,
                           output_type="latent")
    assert (default.images - out.images).abs().max() > 1e-5  # the convention does change the result


def test_translate_default_budget_unchanged(tiny_pipe):
    out = ze.translate(tiny_pipe, make_image(0, (64, 64)), "a dog", steps=4, output_type="latent")
    assert out.stats.unet_evals == 4 + 1 + 2 * 4 and out.stats.unet_calls == 8
    assert out.stats.params["inversion_convention"] == "zeroedit" and out.stats.params["source_cache"] == "memory"


# ----------------------------------------------------------------------------------------- edit (pix2pix-zero)
def test_edit_reference_runs_48_inversion_calls_at_50_steps(tiny_pipe):
    out = ze.edit(tiny_pipe, make_image(0, (64, 64)), preset="reference", reg_steps=0, seed=0, output_type="latent")
    assert out.stats.unet_calls == 48 + 2 * 50 and out.stats.unet_backward == 50
    assert out.stats.unet_evals == 48 + 50 * (3 + 2) and out.stats.params["inversion_convention"] == "pix2pix-zero"
    default = ze.edit(tiny_pipe, make_image(0, (64, 64)), steps=4, reg_steps=0, seed=0, output_type="latent")
    assert default.stats.unet_calls == 4 + 2 * 4 and default.stats.params["inversion_convention"] == "diffusers"


def test_edit_default_inverts_with_diffusers_convention(tiny_pipe):
    """Default preset: the posterior mean, then the regularised inversion with ε at the target t (diffusers'
    DDIMInverseScheduler's steps), 50 UNet calls at 50 steps as before."""
    image = make_image(1)
    out = ze.edit(tiny_pipe, image, caption="a cat", steps=6, reg_steps=1, seed=3, output_type="latent")
    backbone = Backbone(tiny_pipe)
    with torch.no_grad():
        x0 = backbone.encode_image(to_tensor(prepare_image(image)))
        grid = ddim_timesteps(backbone, 6)
        top = _regularized_inversion(backbone, backbone.encode_prompt("a cat"), x0, grid, 1, 20.0, 20.0,
                                     generator(3), "pnp")
    assert torch.allclose(out.inverted, top, atol=1e-5)


def test_edit_reference_inverts_with_the_official_convention(tiny_pipe):
    """preset="reference": x0 a seeded posterior sample, then the regularised "pix2pix-zero" inversion."""
    image = make_image(1)
    out = ze.edit(tiny_pipe, image, caption="a cat", preset="reference", steps=6, reg_steps=1, seed=3,
                  output_type="latent")
    backbone, gen = Backbone(tiny_pipe), generator(3)
    with torch.no_grad():
        x0 = backbone.encode_image(to_tensor(prepare_image(image)), generator=gen, sample=True)
        top = _regularized_inversion(backbone, backbone.encode_prompt("a cat"), x0, ddim_timesteps(backbone, 6), 1,
                                     20.0, 20.0, gen, "pix2pix-zero")
    assert torch.allclose(out.inverted, top, atol=1e-5)


def test_edit_stage_equals_diffusers_pix2pix_zero(tiny_pipe):
    """Same inverted latent, caption (also the negative prompt, as for real images) and direction: zeroedit's
    edit stage equals diffusers' StableDiffusionPix2PixZeroPipeline.__call__ to float tolerance. (A large
    guidance step, 20, so that the cross-attention gradient moves the result by ~0.1, far above the tolerance.)"""
    from diffusers import DDIMScheduler, StableDiffusionPix2PixZeroPipeline
    steps, caption, xa_guidance = 4, "a photo of a cat", 20.0
    backbone = Backbone(tiny_pipe)
    x_top = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    direction = 0.5 * torch.randn(1, 77, tiny_pipe.text_encoder.config.hidden_size,
                                  generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        cond = backbone.encode_prompt(caption)
        ours = _edit(tiny_pipe, backbone, x_top, cond, Cond(cond.embeds + direction),
                     list(reversed(ddim_timesteps(backbone, steps))), xa_guidance, 5.0, None)
    theirs_pipe = ze.load("tiny")  # diffusers' pipeline swaps the processors and sets requires_grad for good
    assert torch.equal(next(theirs_pipe.unet.parameters()), next(tiny_pipe.unet.parameters()))
    p2p = StableDiffusionPix2PixZeroPipeline(
        vae=theirs_pipe.vae, text_encoder=theirs_pipe.text_encoder, tokenizer=theirs_pipe.tokenizer,
        unet=theirs_pipe.unet, scheduler=DDIMScheduler.from_config(theirs_pipe.scheduler.config),
        feature_extractor=None, safety_checker=None, inverse_scheduler=None, caption_generator=None,
        caption_processor=None, requires_safety_checker=False)
    p2p.set_progress_bar_config(disable=True)
    theirs = p2p(prompt=caption, negative_prompt=caption, source_embeds=torch.zeros_like(direction),
                 target_embeds=direction, num_inference_steps=steps, guidance_scale=5.0, latents=x_top.clone(),
                 cross_attention_guidance_amount=xa_guidance, output_type="latent").images
    assert (ours - x_top).abs().max() > 0.1
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
