"""The toy flow model ("toy-flow"): a small SD3-layout rectified-flow transformer on the toy world, loaded as a
standard diffusers `StableDiffusion3Pipeline` (trained by scripts/train_toy_flow.py, model card in
src/zeroedit/assets/toy_flow/README.md).

Components (all in one diffusers folder, src/zeroedit/assets/toy_flow/):
- transformer: `SD3Transformer2DModel` (MM-DiT joint attention, SD3.5's RMS q/k norm) on the toy's 16×16×4 latents;
- vae: the toy model's AutoencoderKL (×4) with `shift_factor` 0.0 (SD3's pipeline decodes `z / scale + shift`);
- text_encoder and text_encoder_2: the SAME toy CLIP text encoder, as `CLIPTextModelWithProjection` with an
  identity `text_projection` (so the pooled vector is the final-layer-normed end-of-text state, as for CLIP);
  SD3's pipeline concatenates the two encoders' penultimate states (64 + 64 = 128 = `joint_attention_dim`) and
  their pooled vectors (128 = `pooled_projection_dim`);
- no T5: `text_encoder_3=None`; SD3's pipeline then appends `max_sequence_length` (default 256) zero tokens;
- scheduler: `FlowMatchEulerDiscreteScheduler`, shift 1 (SD3's resolution-dependent shift (Esser et al. 2024) is 1 at
  256² pixels = 16² tokens; our 8² tokens are fewer still).
"""
from __future__ import annotations

import os

import torch

from .model import TOY_SIZE

TOY_FLOW_MODEL = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "toy_flow")
TEXT_WIDTH = 64  # the toy CLIP text encoder's hidden size


def transformer_config(patch_size: int = 2, width: int = 192, layers: int = 6, head_dim: int = 32) -> dict:
    """SD3Transformer2DModel arguments for the toy latents (16×16×4)."""
    return dict(sample_size=TOY_SIZE // 4, patch_size=patch_size, in_channels=4, out_channels=4, num_layers=layers,
                attention_head_dim=head_dim, num_attention_heads=width // head_dim,
                joint_attention_dim=2 * TEXT_WIDTH, caption_projection_dim=width, pooled_projection_dim=2 * TEXT_WIDTH,
                pos_embed_max_size=2 * (TOY_SIZE // 4) // patch_size, qk_norm="rms_norm")


def with_projection(text_encoder):
    """The toy CLIPTextModel as a CLIPTextModelWithProjection: same weights, identity `text_projection`."""
    from transformers import CLIPTextModelWithProjection
    model = CLIPTextModelWithProjection(text_encoder.config)
    model.text_model.load_state_dict(text_encoder.state_dict())  # strict: every weight
    with torch.no_grad():
        model.text_projection.weight.copy_(torch.eye(model.config.projection_dim, model.config.hidden_size))
    return model.to(text_encoder.dtype).eval()


def flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def load_toy_flow(folder: str = TOY_FLOW_MODEL, dtype=None):
    """The trained toy flow model: diffusers' own `StableDiffusion3Pipeline.from_pretrained` on the local folder
    (fp16 safetensors, loaded as float32 unless `dtype` says otherwise), no T5."""
    from diffusers import StableDiffusion3Pipeline
    from ..errors import ModelError
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise ModelError(f"the toy flow model is missing from {folder!r}: train it with scripts/train_toy_flow.py.")
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None,
                                                    dtype=dtype or torch.float32, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def caption_accuracy(pipe, n: int = 64, seed: int = 10**6, steps: int = 30, guidance: float = 4.0,
                     batch: int = 16) -> dict:
    """Caption-following accuracy per attribute, as in the toy model's card: generate from `n` held-out
    captions (scenes `seed`, `seed + 1`, …) with the pipeline's own sampler and score with the detectors.
    color: an object's colour is detected; shape: and with the caption's shape (per object); style and count:
    per image. Works for the SD (toy) and SD3 (toy-flow) pipelines alike."""
    from .detect import detect_objects, detect_style
    from .world import sample_scene
    scenes = [sample_scene(seed + i) for i in range(n)]
    hits = dict(style=0, color=0, shape=0, count=0)
    objects = 0
    for start in range(0, n, batch):
        chunk = scenes[start:start + batch]
        generator = torch.Generator(pipe.device).manual_seed(start)
        images = pipe([s.caption() for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                      height=TOY_SIZE, width=TOY_SIZE, generator=generator).images
        for scene, image in zip(chunk, images):
            style = detect_style(image)
            found = {d.color: d for d in detect_objects(image, style)}
            hits["style"] += style == scene.style
            hits["count"] += len(found) == len(scene.objects)
            for obj in scene.objects:
                objects += 1
                hits["color"] += obj.color in found
                hits["shape"] += obj.color in found and found[obj.color].shape == obj.shape
    return {k: round(v / (objects if k in ("color", "shape") else n), 3) for k, v in hits.items()}


# ----------------------------------------------------------------------------------------- translate baseline
@torch.no_grad()
def encode_latents(pipe, image) -> torch.Tensor:
    """An image -> SD3 latents: (VAE mean − shift_factor) × scaling_factor, as SD3's img2img pipeline does."""
    pixels = pipe.image_processor.preprocess(image).to(pipe.device, pipe.vae.dtype)
    latents = pipe.vae.encode(pixels).latent_dist.mean
    return (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


@torch.no_grad()
def euler_invert(pipe, latents: torch.Tensor, prompt: str, steps: int) -> torch.Tensor:
    """Plain Euler inversion of the flow ODE dx/dσ = v(x, σ) from σ = 0 (the image) to σ = 1 (noise), on the
    σ grid the pipeline's scheduler samples with, reversed; v is the conditional velocity of `prompt` (no
    classifier-free guidance), evaluated at the latent being moved (as DDIM inversion)."""
    import copy
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps, device=pipe.device)
    sigmas = scheduler.sigmas.flip(0).tolist()  # 0, σ_{N-1}, …, 1
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=False,
                                              device=pipe.device)
    x = latents.to(pipe.transformer.dtype)
    for low, high in zip(sigmas[:-1], sigmas[1:]):
        t = torch.full((x.shape[0],), low * scheduler.config.num_train_timesteps, device=x.device)
        v = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=embeds,
                             pooled_projections=pooled).sample
        x = (x.float() + (high - low) * v.float()).to(x.dtype)
    return x


def prompt_swap(pipe, image, source_prompt: str, prompt: str, steps: int = 20, guidance: float = 5.0):
    """The naive baseline of structure-preserving translation: invert the image with its caption (Euler), then
    sample with diffusers' own StableDiffusion3Pipeline from that noise with the target prompt."""
    noise = euler_invert(pipe, encode_latents(pipe, image), source_prompt, steps)
    height, width = image.size[1], image.size[0]
    return pipe(prompt, latents=noise, num_inference_steps=steps, guidance_scale=guidance, height=height,
                width=width).images[0]


FLOW_TRANSLATE_SETTINGS = {  # {row name: ze.translate arguments}; methods/pnp_flow.py documents each value
    "translate: Euler inversion, V injected in 1/4 of 20 steps": dict(solver="euler", steps=20, attention_steps=0.25,
                                                                    guidance_scale=5.0),
    "translate: preset defaults (FireFlow, 8 steps, V injected 1 step)": dict(guidance_scale=5.0),
    "FlowEdit (SD3 defaults: 50 steps, n_max 33, CFG 3.5 / 13.5)": dict(method="flowedit"),
}


def run_translate_flow(pipe, cases, settings=None, steps: int = 20, guidance: float = 5.0) -> dict:
    """zeroedit's flow translate (`ze.translate` on the SD3 pipeline, one row per `settings` entry: {name:
    kwargs}, FLOW_TRANSLATE_SETTINGS by default) vs inversion + prompt swap (`prompt_swap`, Euler, `steps`,
    CFG `guidance`: the first row's solver, steps and guidance without injection), on toy/quality.py's
    EditCases, scored with `score_edit`. Returns {name: [scores]}."""
    import zeroedit as ze
    from .quality import score_edit
    settings = FLOW_TRANSLATE_SETTINGS if settings is None else settings
    baseline = f"inversion + prompt swap (Euler, {steps} steps, no injection)"
    results = {**{name: [] for name in settings}, baseline: []}
    for case in cases:
        for name, kw in settings.items():
            out = ze.translate(pipe, case.image, prompt=case.target_prompt, source_prompt=case.source_prompt,
                               seed=0, **kw)
            results[name].append(score_edit(case, out.image))
        image = prompt_swap(pipe, case.image, case.source_prompt, case.target_prompt, steps, guidance)
        results[baseline].append(score_edit(case, image))
    return results
