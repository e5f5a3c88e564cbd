"""Qwen-Image (QwenImagePipeline, QwenImageEditPlusPipeline) on the tiny random-weight models: the adapter samples
as diffusers' pipeline does (batched CFG included), the dispatcher seam leaves the attention unchanged and splits
[text, image, references], every method at its defaults (calls, sizes, restoration), personalize with reference
images, and typed errors before any model work."""
import pytest
import torch
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus
from PIL import Image

import zeroedit as ze
from zeroedit.backbones import Cond, backbone_for
from zeroedit.backbones.flow import pack, unpack
from zeroedit.backbones.qwenimage import QwenImageBackbone
from zeroedit.control import Controller, Record, Rule, joint_attention_layers
from zeroedit.errors import ParameterError, UnsupportedModel
from zeroedit.inversion import euler
from zeroedit.tiny_qwenimage import build_tiny_qwen_image, qwen_image_transformer_config

from conftest import make_image, no_model_work, processors_snapshot

SIZE = (160, 96)  # a non-square input; its working size is 128×80 (latent 10×16)


@pytest.fixture(scope="module")
def pipe():
    return ze.load("tiny-qwen-image")


@pytest.fixture(scope="module")
def edit_pipe():
    return build_tiny_qwen_image(0, edit_plus=True)


def _noise(seed, h=16, w=12, batch=1):
    return torch.randn(batch, 16, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the tiny model
def test_tiny_model_layout_tokenizer_and_determinism(pipe, edit_pipe):
    """Real layout at tiny widths; the tokenizer makes the templates' system prefixes exactly the tokens the
    pipelines drop (34, 64); the same seed builds the same weights."""
    assert type(pipe).__name__ == "QwenImagePipeline" and type(edit_pipe).__name__ == "QwenImageEditPlusPipeline"
    for p in (pipe, edit_pipe):
        prefix = p.prompt_template_encode.split("{}")[0]
        assert len(p.tokenizer(prefix).input_ids) == p.prompt_template_encode_start_idx
    blocks = ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    assert joint_attention_layers(pipe.transformer, "double") == blocks
    assert joint_attention_layers(pipe.transformer, "single") == []
    again = ze.load("tiny-qwen-image")
    assert torch.equal(again.transformer.img_in.weight, pipe.transformer.img_in.weight)
    assert torch.equal(again.text_encoder.lm_head.weight, pipe.text_encoder.lm_head.weight)
    real = qwen_image_transformer_config(real=True)
    assert real["num_layers"] == 60 and real["num_attention_heads"] * real["attention_head_dim"] == 3072


# ------------------------------------------------------------------ backbone
def test_backbone_samples_exactly_as_the_pipeline_with_cfg_in_one_call(pipe):
    """Text (template, drop, masks), σ grid (mu, exponential shift, shift_terminal), time, packing and the
    renormalised true CFG: [uncond "", cond] padded and masked in ONE call per step equal the pipeline's two."""
    backbone = backbone_for(pipe)
    assert isinstance(backbone, QwenImageBackbone) and backbone.family == "qwen-image" and backbone.has_cfg
    x = _noise(1)
    cond = Cond.cat([backbone.encode_negative(""), backbone.encode_prompt("a red cat on a mat")])
    assert cond.mask is not None and cond.mask.sum(1).tolist()[0] < cond.mask.shape[1]  # "" is the shorter text

    def velocity(z, sigma, i, stage):
        return backbone.guided(backbone.transformer_call(torch.cat([z, z]), sigma, cond), 4.0)

    ours = euler(velocity, x, backbone.sigmas(3, x.shape[-2:]))[-1]
    theirs = pipe("a red cat on a mat", negative_prompt="", true_cfg_scale=4.0, num_inference_steps=3, height=128,
                  width=96, latents=pack(x), output_type="latent").images
    assert torch.allclose(ours, unpack(theirs, 16, 12), atol=1e-5)
    assert backbone.stats.unet_calls == 3 and backbone.stats.unet_evals == 6
    images = pipe("a cat", negative_prompt="", num_inference_steps=2, height=128, width=96, latents=pack(x),
                  output_type="pt").images
    latents = pipe("a cat", negative_prompt="", num_inference_steps=2, height=128, width=96, latents=pack(x),
                   output_type="latent").images
    assert torch.allclose((backbone.decode(unpack(latents, 16, 12)).clamp(-1, 1) + 1) / 2, images, atol=1e-5)
    assert backbone.sigmas(1, (16, 12)) == [1.0, 0.0]  # the scheduler's shift_terminal gives NaN for one step


def test_vae_latents_are_the_pipelines(edit_pipe):
    """encode_image = QwenImageEditPlusPipeline._encode_vae_image (mode, per-channel mean/std), one frame."""
    backbone = backbone_for(edit_pipe)
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    ours = backbone.encode_image(image)
    theirs = edit_pipe._encode_vae_image(image[:, :, None], None)[:, :, 0]
    assert ours.shape == (1, 16, 8, 12) and torch.allclose(ours, theirs, atol=1e-6)


# ------------------------------------------------------------------ control
@pytest.mark.parametrize("stream", ["image", "text", "joint"])
def test_controlled_attention_equals_the_original_with_masks(pipe, stream):
    """Every layer controlled with the explicit matrix (Record of probs), texts of two lengths (masked): the same
    output as diffusers' processors; the recorded parts have the stream's token counts ([text, image])."""
    backbone, x = backbone_for(pipe), _noise(4, batch=2)
    cond = backbone.encode_prompt(["a cat", "a big red dog on the grass"])
    assert cond.mask is not None
    layers = joint_attention_layers(pipe.transformer, "double")
    reference = backbone.transformer_call(x, 0.6, cond)
    controller = Controller()
    record = controller.add(Record(layers, ("q", "probs"), stream=stream))
    controller.set_call(0, 0.6, [("a", 1), ("b", 1)], backbone.token_grid(x.shape[-2:]))
    with controller.installed(pipe.transformer):
        out = backbone.transformer_call(x, 0.6, cond)
    assert torch.allclose(out, reference, atol=1e-5)
    text = cond.embeds.shape[1]
    tokens = {"image": 8 * 6, "text": text, "joint": text + 8 * 6}[stream]
    assert record.store[(layers[0], "probs", 0)].shape == (2, 4, tokens, tokens)
    assert record.store[(layers[-1], "q", 0)].shape[2] == tokens
    if stream == "joint":  # the padded text keys get no attention
        probs = record.store[(layers[0], "probs", 0)]
        assert probs[0, :, :, int(cond.mask[0].sum()):text].abs().max() == 0


def test_reference_tokens_follow_the_image_tokens(edit_pipe):
    """Edit-Plus: references appended after the image tokens; the velocity is the image's; the seam's split puts
    them in `Split.references`, and a controlled call equals the plain one."""
    backbone = backbone_for(edit_pipe)
    x, ref = _noise(5), _noise(6, 8, 8)
    cond = backbone.encode_prompt("a cat")
    plain = backbone.transformer_call(x, 0.5, cond, references=[ref])
    assert plain.shape == x.shape
    assert (plain - backbone.transformer_call(x, 0.5, cond)).abs().max() > 1e-4  # the reference acts
    splits = []

    class SeeSplit(Rule):
        stream = "joint"

        def qkv(self, ctx, q, k, v):
            splits.append(ctx.split)
            return q, k, v

    controller = Controller()
    controller.add(SeeSplit(joint_attention_layers(edit_pipe.transformer, "double")))
    controller.set_call(0, 0.5, [("a", 1)], backbone.token_grid(x.shape[-2:]), reference_tokens=16)
    with controller.installed(edit_pipe.transformer):
        assert torch.allclose(backbone.transformer_call(x, 0.5, cond, references=[ref]), plain, atol=1e-5)
    text = cond.embeds.shape[1]
    assert len(splits) == 2 and splits[0].text == slice(0, text)
    assert splits[0].image == slice(text, text + 48) and splits[0].references == slice(text + 48, text + 64)


# ------------------------------------------------------------------ methods at their defaults
def test_translate_and_flowedit_at_defaults(pipe):
    """Default translate (FireFlow, 8 steps): 9 + 9 calls as on FLUX.1, every prompt and CFG branch in one call;
    texts of different lengths inject on the image tokens. FlowEdit: 24 calls (no inversion)."""
    image, before = make_image(0, SIZE), processors_snapshot(pipe)
    one = ze.translate(pipe, image, "a dog", source_prompt="a small cat")
    three = ze.translate(pipe, image, ["a dog", "a red fox in the snow", "x"], source_prompt="a small cat",
                         output_type="latent")
    assert one.stats.unet_calls == three.stats.unet_calls == 18 and three.stats.unet_evals == 9 + 9 * 3 * 2
    assert one.images[0].size == SIZE and one.stats.params["stream"] == "image"
    assert one.stats.params["guidance_scale"] == 4.0
    assert torch.allclose(three.images[:1], ze.translate(pipe, image, "a dog", source_prompt="a small cat",
                                                        output_type="latent").images, atol=1e-4)
    recompute = ze.translate(pipe, image, ["a dog", "a red fox in the snow", "x"], source_prompt="a small cat",
                             source_cache="recompute", output_type="latent")
    assert torch.allclose(recompute.images, three.images, atol=1e-4)  # the source riding in the batch: the same
    plain = ze.translate(pipe, image, ["a dog", "a red fox in the snow", "x"], source_prompt="a small cat",
                         attention_steps=0, output_type="latent")
    assert (plain.images - three.images).abs().max() > 1e-4  # the injection acts
    flowedit = ze.translate(pipe, image, "a dog", source_prompt="a small cat", method="flowedit", seed=0)
    assert flowedit.stats.unet_calls == 24 and flowedit.stats.unet_evals == 24 * 4 and flowedit.images[0].size == SIZE
    assert processors_snapshot(pipe) == before


def test_compose_at_defaults_keeps_the_background(pipe):
    """42 calls; outside the region the preserved latents are the background's whatever the prompt; inside they
    differ; output at the input's size; processors and hooks restored."""
    ref, before = make_image(1, (64, 64)), processors_snapshot(pipe)
    out = ze.compose(pipe, make_image(0, SIZE), ref, (40, 16, 104, 80), prompt="a cat", seed=0)
    assert out.stats.unet_calls == 42 and out.stats.params["inversion_prompt"] == "zeros"
    assert out.images[0].size == SIZE and processors_snapshot(pipe) == before
    seen = {}

    def keep(name):
        def callback(p, step, timestep, kwargs):
            seen.setdefault(name, {})[step] = kwargs["latents"].clone()
        return callback

    common = dict(steps=4, tau_b=1.0, seed=0, output_type="latent")
    for name, prompt in (("a", "a cat"), ("b", "a red dog on the grass")):  # texts of different lengths
        ze.compose(pipe, make_image(0), ref, (64, 64, 128, 128), prompt=prompt, callback_on_step_end=keep(name),
                   **common)
    a, b = seen["a"][2], seen["b"][2]
    assert torch.equal(a[..., :8, :], b[..., :8, :])  # the latent rows above the region
    assert (a[..., 8:, 8:] - b[..., 8:, 8:]).abs().max() > 1e-4


def test_edit_at_defaults(pipe):
    """pix2pix-zero: 50 inversion + 2 × 50 sampling calls, 50 backward passes; output at the input's size."""
    before = processors_snapshot(pipe)
    out = ze.edit(pipe, make_image(0, SIZE), "cat", "dog", caption="a cat on a mat")
    assert (out.stats.unet_calls, out.stats.unet_backward) == (150, 50) and out.images[0].size == SIZE
    assert processors_snapshot(pipe) == before


@pytest.mark.parametrize("method, calls", [("euler", 5), ("rf-solver", 10), ("fireflow", 6)])
def test_invert_and_reconstruct_with_every_solver(pipe, method, calls):
    inversion = ze.invert(pipe, make_image(0, SIZE), method=method, steps=5)
    assert inversion.latents.shape == (6, 1, 16, 10, 16) and inversion.stats.unet_calls == calls
    back = ze.reconstruct(pipe, inversion)
    assert back.stats.unet_calls == calls and back.images[0].size == SIZE


def test_invert_default(pipe):
    assert ze.invert(pipe, make_image(0, SIZE)).stats.unet_calls == 51  # fireflow, 50 steps


# ------------------------------------------------------------------ personalize
def test_personalize_on_plain_qwen_image_is_refused_before_any_model_work(pipe):
    with no_model_work(pipe):
        with pytest.raises(UnsupportedModel, match="QwenImageEditPlusPipeline"):
            ze.personalize(pipe, "a cat", {"cat": make_image(0)})
        with pytest.raises(ParameterError, match="inversion_prompt"):
            ze.compose(pipe, make_image(0), make_image(1, (64, 64)), (0, 0, 64, 64), prompt="a cat",
                       inversion_prompt="exceptional")
        with pytest.raises(ParameterError, match="vital"):
            ze.translate(pipe, make_image(0), "a dog", layers="vital")
        with pytest.raises(UnsupportedModel, match="reference"):
            backbone_for(pipe).transformer_call(_noise(0), 0.5, Cond(torch.zeros(1, 3, 64)), references=[_noise(1)])
    with pytest.raises(ParameterError, match="zeros"):
        backbone_for(pipe).exceptional_cond(1, "exceptional")


@pytest.mark.parametrize("zero_cond_t", [False, True], ids=["edit-2509", "edit-2511"])
def test_personalize_uniform_single_reference_equals_the_edit_plus_pipeline(zero_cond_t, monkeypatch):
    """weighting="uniform" is the pipeline's own multi-image generation (references resized as it does, shown to
    the text encoder, appended to the tokens, CFG renormalised; Edit-2511's zero_cond_t layout too); one object
    with relevance: Ã ≡ 1, the same."""
    from zeroedit.methods.common import generator, randn
    edit_pipe = build_tiny_qwen_image(0, edit_plus=True, zero_cond_t=zero_cond_t)
    cat = Image.fromarray(make_image(1, (96, 64)))
    out = ze.personalize(edit_pipe, "a cat on a mat", {"cat": cat}, weighting="uniform", steps=3, seed=0,
                         output_type="latent")
    assert out.stats.unet_calls == 3 and out.stats.unet_evals == 6 and out.relevance_maps is None
    relevance = ze.personalize(edit_pipe, "a cat on a mat", {"cat": cat}, steps=3, seed=0, output_type="latent")
    assert torch.allclose(relevance.latents, out.latents, atol=1e-5) and relevance.relevance_maps.shape == (1, 8, 8)
    scale = 128 ** 2 / 1024 ** 2  # the tiny model's native area (reference_inputs)
    monkeypatch.setattr(pipeline_qwenimage_edit_plus, "VAE_IMAGE_SIZE", int(1024 ** 2 * scale))
    monkeypatch.setattr(pipeline_qwenimage_edit_plus, "CONDITION_IMAGE_SIZE", int(384 ** 2 * scale))
    noise = randn((1, 16, 16, 16), generator(0), "cpu", torch.float32)
    theirs = edit_pipe(image=[cat], prompt="a cat on a mat", negative_prompt="", num_inference_steps=3, height=128,
                       width=128, latents=pack(noise), output_type="latent").images
    assert torch.allclose(out.latents, unpack(theirs, 16, 16), atol=1e-5)


def test_prompt_position_with_images(edit_pipe):
    """prompt_start: where the prompt's tokens lie in the encoded sequence after the images (the phrase positions
    of the relevance), checked against the processor's own token ids."""
    backbone, prompt = backbone_for(edit_pipe), "a cat on a mat"
    shown, latents = backbone.reference_inputs([Image.fromarray(make_image(1, (96, 64)))])
    assert latents[0].shape == (1, 16, 12, 20)  # 128² area at 3:2, sides rounded to 32 px: 160×96
    start = backbone.prompt_start(backbone.encode_prompt(prompt, images=shown), prompt)
    label = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
    ids = edit_pipe.processor(text=[edit_pipe.prompt_template_encode.format(label + prompt)], images=shown,
                              return_tensors="pt").input_ids[0, edit_pipe.prompt_template_encode_start_idx:]
    words = edit_pipe.tokenizer(prompt).input_ids
    assert ids[start:start + len(words)].tolist() == words


def test_personalize_relevance_weights_each_reference(edit_pipe):
    """Two objects (one with two images): maps (2, h, w) summing to 1, a different result from "uniform", one call
    per step for both CFG branches, deterministic, processors restored; typed errors first."""
    cat, dog = Image.fromarray(make_image(1, (64, 64))), Image.fromarray(make_image(2, (64, 96)))
    references = {"cat": cat, "dog": [dog, dog]}
    before = processors_snapshot(edit_pipe)
    out = ze.personalize(edit_pipe, "a cat and a dog", references, steps=3, seed=0, output_type="latent")
    again = ze.personalize(edit_pipe, "a cat and a dog", references, steps=3, seed=0, output_type="latent")
    uniform = ze.personalize(edit_pipe, "a cat and a dog", references, steps=3, seed=0, weighting="uniform",
                             output_type="latent")
    assert out.stats.unet_calls == 3 and out.relevance_maps.shape == (2, 8, 8)
    assert torch.allclose(out.relevance_maps.sum(0), torch.ones(8, 8), atol=1e-5)
    assert torch.equal(out.latents, again.latents) and (out.latents - uniform.latents).abs().max() > 1e-4
    assert processors_snapshot(edit_pipe) == before
    default = ze.personalize(edit_pipe, "a cat", {"cat": cat}, seed=0)
    assert default.stats.unet_calls == 30 and default.images[0].size == (128, 128)
    for kwargs in (dict(scale=0.0), dict(mip_weights="x.bin"), dict(phrase_encoding="alone"), dict(height=100),
                   dict(negative_prompt=3)):
        with no_model_work(edit_pipe), pytest.raises(ParameterError):
            ze.personalize(edit_pipe, "a cat", {"cat": cat}, **kwargs)
