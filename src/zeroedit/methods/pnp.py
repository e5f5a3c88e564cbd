"""translate: Plug-and-Play diffusion features (Tumanyan et al., CVPR 2023).

Algorithm (pnp-diffusers behaviour, spec `methods/pnp.md`):
1. VAE-encode the image (posterior mean × scaling factor) at the working size: the model's native long side
   (512 on SD 1.x/2.x-base), the aspect kept as the reference's `T.Resize(512)`, sides multiples of 64
   (`size=` overrides; images.py). The output comes back at the input's own size.
2. DDIM inversion with the source prompt (default ""), no CFG.
3. 50 DDIM steps (η = 0) from the inverted latent at the top of the sampling grid, CFG on
   [negative, prompt]; the source branch (inverted latent at this t, source prompt) provides
   - the **features** of `up_blocks[1].resnets[1]`'s residual branch after `conv2` (before the skip add) for
     the first `feature_steps` of the steps, and
   - the **self-attention q and k** of the decoder layers 4–11 (ldm numbering: `up_blocks[1].attentions[1,2]`,
     `up_blocks[2].attentions[*]`, `up_blocks[3].attentions[*]`) for the first `attention_steps`,
   injected into both CFG branches of every target prompt.

Source cache. DDIM inversion (inversion/ddim.py) evaluates the UNet on exactly the (latent, t, source
prompt) inputs the source branch needs at every sampling step but the first. `source_cache="memory"`
records the features and q/k during inversion and reuses them: one prompt costs steps + 1 + 2·P·steps
sample-evaluations (151 at defaults) in `steps` + `steps` sequential calls (the first step's source
evaluation rides in that step's call). `"recompute"` runs the source branch in-batch at every step (as the
reference, also outside the injection windows):
steps + (2·P + 1)·steps evaluations (200 at defaults, P = 1; the issue's "201" counts the first-step source evaluation twice),
same calls, and no cache. Both give the same image to float tolerance.

Choices and deviations (documented here, as the spec asks):
- Windows: k = floor(steps · fraction + 1e-6) (so 0.29 · 100 gives 29, not 28); an int is a step count. The
  first k sampling steps inject (features 40 of 50 at t = 981…201, q/k 25 of 50 at t = 981…501).
- The source branch is conditioned on `source_prompt`, the same prompt as the inversion (the reference
  always uses "" there even with another inversion prompt; with the default "" both agree).
- DDIM inversion evaluates ε at the latent being moved (inversion/ddim.py, convention "zeroedit"); the
  reference's preprocessing evaluates it at the *target* timestep from the previous latent ("pnp"). The
  default keeps zeroedit's because only it makes the source cache exact (151 instead of 200 evaluations, the
  same 100 calls). "pnp" reconstructs a little better on the toy model (benchmarks/reference_inversion.py,
  20 scenes, 50 steps: 33.8 vs 33.2 dB vs the input; at 999 steps equal to 0.01 dB on 4 scenes).
- `preset="reference"`: 999 inversion steps (as the reference preprocessing; only the latents on the
  sampling grid are kept, nothing is written to disk) with the reference's convention ("pnp"), its
  thresholds, guidance and negative prompt. That inversion does not evaluate the (latent, t) pairs the
  source branch needs, so no cache can be exact: the preset always recomputes the source branch in-batch
  (`source_cache` resolves to "recompute", as the reference does; stats.params records it): 999 + 3·50 =
  1149 evaluations in 999 + 50 sequential calls at defaults.
- With the default convention and `inversion_steps` a multiple of `steps` (e.g. 999), the inversion also
  evaluates the first sampling step's source input, so memory mode then needs no extra source evaluation.
- `mask=` (zeroedit's addition, as compose's background preservation): after every sampling step the latent
  outside the mask is replaced by the source's DDIM-inversion latent at the next time, and after the last step
  by the source's own latent — the window is the whole trajectory, so the output latent outside the mask IS
  the source's, and its pixels are the VAE reconstruction of the source up to the decoder's reach across the
  mask border. The mask is taken at latent resolution as every 8×8 cell it touches (the edit may spill by up
  to 7 px). A phrase or "auto" is segmented by zeroedit.masks. No UNet call is added.
- SDXL: features at `up_blocks[0].resnets[1]` and q/k in the self-attention of `up_blocks[0].attentions[1,2]`
  and `up_blocks[1].attentions[*]` (SDXL's decoder has two attention levels instead of three; these are the
  decoder's attention layers after the first block, as 4–11 are on SD).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbones import Backbone, Cond, compile_options, is_flow
from ..control import Controller, Inject, Record, Store, check_store, decoder_self_attention_layers
from ..errors import MaskError, ParameterError
from ..images import to_tensor
from ..inversion import ddim_invert, ddim_timesteps
from ..inversion.ddim import ddim_step
from ..masks import resolve_mask
from ..result import Result, Stats, Timer
from .common import (FLOW_VARIANTS, check_callback, check_choice, check_number, check_output_type, check_prompts,
                     check_seed, check_steps, check_window, finish, load_input, serialised, step_end, step_limit)

REFERENCE_NEGATIVE = "ugly, blurry, black, low res, unrealistic"
PRESETS = (None, "reference")
STEPS = 50  # DDIM sampling steps when steps=None (the paper's)
CACHES = ("memory", "recompute")


def injection_layers(unet) -> tuple[str, list[str]]:
    """(feature module, q/k attention layers) for SD 1.x/2.x or SDXL (see module docstring)."""
    names = dict(unet.named_modules())
    if len(unet.config.block_out_channels) == 4:  # SD 1.x / 2.x: ldm output blocks 4–11
        # ldm output block i = up_blocks[i // n].resnets[i % n] with n resnets per decoder level (3 on SD; the
        # first level has no attention, so decoder attention i is output block i + n). On SD this is
        # up_blocks[1].resnets[1] and attentions [1:9]; it also holds for other `layers_per_block`.
        n = len(unet.up_blocks[0].resnets)
        return f"up_blocks.{4 // n}.resnets.{4 % n}.conv2", decoder_self_attention_layers(unet)[4 - n:12 - n]
    layers = [n for n in decoder_self_attention_layers(unet) if not n.startswith("up_blocks.0.attentions.0.")]
    feature = "up_blocks.0.resnets.1.conv2"
    if feature not in names:
        raise ParameterError("this UNet has no up_blocks[0].resnets[1]; translate supports SD 1.x/2.x and SDXL.")
    return feature, layers


def _cached_or_branch(store: dict):
    """Injection source: the inversion's record for this layer and timestep, else the in-batch source branch."""
    def source(ctx, kind, tensor):
        key = (ctx.name, kind, ctx.controller.timestep)
        return store[key] if key in store else tensor[ctx.branch("src")]
    return source


def _convention(preset, source_cache) -> tuple[str, str]:
    """(inversion convention, source cache): the reference's "pnp" inversion under preset="reference", and
    then the source branch recomputed in-batch (its inversion calls are not the source branch's inputs)."""
    if preset == "reference":
        return "pnp", "recompute"
    return "zeroedit", source_cache


def _resolve(backbone, preset, steps, inversion_steps, feature_steps, attention_steps, negative_prompt, guidance_scale):
    check_choice(preset, "preset", PRESETS)
    limit = step_limit(backbone)
    steps = check_steps(steps, maximum=limit)
    if inversion_steps is None:
        inversion_steps = limit if preset == "reference" else steps
    else:
        inversion_steps = check_steps(inversion_steps, "inversion_steps", maximum=limit)
        if not set(ddim_timesteps(backbone, steps)) <= set(ddim_timesteps(backbone, inversion_steps)):
            raise ParameterError(f"inversion_steps={inversion_steps}: its DDIM grid does not hold every timestep of the "
                                 f"{steps}-step sampling grid; use inversion_steps=None (the same {steps} steps), "
                                 f"{limit} (every timestep), or a multiple of {steps} whose grid holds it.")
    check_number(guidance_scale, "guidance_scale")
    if not isinstance(negative_prompt, str):
        raise ParameterError(f"negative_prompt must be a string, got {negative_prompt!r}.")
    return (steps, inversion_steps, check_window(feature_steps, steps, "feature_steps"),
            check_window(attention_steps, steps, "attention_steps"))


@serialised
def translate(pipe, image, prompt, source_prompt: str = "", negative_prompt: str | None = None, steps: int | None = None,
              inversion_steps: int | None = None, feature_steps=None, attention_steps=None,
              guidance_scale: float | None = None, seed: int | None = None, preset: str | None = None,
              source_cache: str = "memory", mask=None, store: str | None = None,
              output_type: str = "pil", callback_on_step_end=None, compile=False,
              method: str | None = None, solver: str | None = None, layers=None, strength: float | None = None,
              source_guidance_scale: float | None = None, size=None,
              allow_large: bool = False) -> Result:
    """Re-render `image` to the target `prompt` (or a list of prompts: one image each, one inversion) keeping
    its structure, by injecting the source's decoder features and self-attention q/k (see module docstring).
    `seed` is accepted for a uniform API; with DDIM η = 0 the result does not depend on it. On SD3/FLUX
    pipelines: inversion + attention-value injection or FlowEdit, see methods/pnp_flow.py (defaults there).

    Args:
        image: the source image (path, PIL, numpy or torch); the output comes back at its size.
        prompt: the target prompt, or several (one image each, one inversion, the same UNet calls).
        source_prompt: the prompt of the inversion and of the source branch ("" as the reference).
        negative_prompt: the negative prompt of the target branches (None: the reference's default; "" on SD3).
        steps: DDIM sampling steps (None: 50; flow: the preset's).
        inversion_steps: DDIM inversion steps (None: = steps; 999 under preset="reference"); its grid must hold the
            sampling grid.
        feature_steps: decoder-feature injection window: a fraction of the steps or a number of steps (None: 0.8;
            flow: the image tokens output by the injected blocks, None: 0).
        attention_steps: self-attention q/k injection window: a fraction of the steps or a number of steps (None:
            0.5; flow: the attention-value window, the preset's).
        guidance_scale: classifier-free guidance (None: 7.5; flow: FLUX-dev's guidance embedding or SD3's CFG).
        seed: accepted for a uniform API; DDIM with eta 0 does not draw noise.
        preset: None or "reference" (999-step inversion with the reference's convention, source recomputed).
        source_cache: "memory" (record the source during inversion, 151 evaluations) or "recompute" (200);
            preset="reference" always recomputes (see the module docstring).
        mask: where to translate (white = change); outside it the source is kept: a mask image, a box
            x0,y0,x1,y1 in the image's pixels, "auto" (the salient object) or a phrase naming an object
            (zeroedit.masks); None: everywhere.
        store: where the recorded source features and attention wait for their injection: None keeps them on the device the model runs on, and "cpu" keeps them in pinned CPU memory and copies each step's back when it is needed (less GPU memory, the same image); their size is in stats.store_bytes.
        output_type: "pil" (default), "np", "pt" or "latent", as diffusers.
        callback_on_step_end: diffusers' callback(pipe, step, timestep, {"latents": ...}); may return new latents.
        compile: run the UNet under torch.compile (True, or a dict of torch.compile arguments); see the README.
        method, solver, layers, strength, source_guidance_scale: SD3/FLUX only (methods/pnp_flow.py): method
            None or "flowedit"; solver "euler" | "rf-solver" | "fireflow"; layers "single" | "last-single" |
            "vital" | layer names; strength (FlowEdit's n_max / steps); source_guidance_scale (inversion /
            FlowEdit source guidance).
        size: working size: the long side in px or (width, height) (None: the model's native long side).
        allow_large: allow a working size above 2048 px on the long side.
    """
    compile_options(compile)
    prompts = check_prompts(prompt)
    if not isinstance(source_prompt, str):
        raise ParameterError(f"source_prompt must be a string, got {source_prompt!r}.")
    check_choice(source_cache, "source_cache", CACHES)
    check_store(store)
    check_output_type(output_type)
    seed = check_seed(seed)
    check_callback(callback_on_step_end)
    if is_flow(pipe):
        if mask is not None:
            raise ParameterError("mask= runs on UNet pipelines only for now; on SD3/FLUX translate the whole image.")
        return FLOW_VARIANTS["translate"](pipe, image, prompts, source_prompt, negative_prompt, steps, inversion_steps,
                              feature_steps, attention_steps, guidance_scale, seed, preset, source_cache, output_type,
                              callback_on_step_end, compile, method, solver, layers, strength, source_guidance_scale,
                              size, allow_large, store)
    flow_only = dict(solver=solver, layers=layers, strength=strength, source_guidance_scale=source_guidance_scale)
    for name, value in flow_only.items():
        if value is not None:
            raise ParameterError(f"{name} applies to SD3/FLUX pipelines only; leave it None on UNet pipelines.")
    if method not in (None, "pnp"):
        raise ParameterError(f"method must be None or 'pnp' on UNet pipelines ('flowedit' runs on SD3/FLUX), got {method!r}.")
    negative_prompt = REFERENCE_NEGATIVE if negative_prompt is None else negative_prompt
    steps = STEPS if steps is None else steps
    feature_steps = 0.8 if feature_steps is None else feature_steps
    attention_steps = 0.5 if attention_steps is None else attention_steps
    guidance_scale = 7.5 if guidance_scale is None else guidance_scale
    stats = Stats()
    backbone = Backbone(pipe, stats, compile)
    steps, inversion_steps, k_feature, k_attention = _resolve(
        backbone, preset, steps, inversion_steps, feature_steps, attention_steps, negative_prompt, guidance_scale)
    convention, source_cache = _convention(preset, source_cache)
    original, picture = load_input(image, backbone, size, allow_large)
    edited = None if mask is None else resolve_mask(original, mask, "mask", like=pipe)  # in the image's own pixels
    if edited is not None and not edited.any():
        raise MaskError("mask is empty: mark the part of the image to translate in white.")
    stats.params.update(prompt=prompts, source_prompt=source_prompt, negative_prompt=negative_prompt, steps=steps,
                        inversion_steps=inversion_steps, feature_steps=k_feature, attention_steps=k_attention,
                        guidance_scale=float(guidance_scale), seed=seed, preset=preset, source_cache=source_cache,
                        inversion_convention=convention, size=list(picture.size), input_size=list(original.size),
                        compile=compile, masked=edited is not None, store=store)
    feature_layer, attention_layers = injection_layers(pipe.unet)
    grid = ddim_timesteps(backbone, steps)
    descending = list(reversed(grid))
    feature_ts, attention_ts = set(descending[:k_feature]), set(descending[:k_attention])
    with Timer(stats, backbone.device), torch.no_grad():
        x0 = backbone.encode_image(to_tensor(picture)).float()  # DDIM arithmetic in float32
        source_cond = backbone.encode_prompt(source_prompt)
        recorded = Store(store, backbone.device)
        trajectory = _invert(backbone, x0, source_cond, inversion_steps, grid, feature_layer, attention_layers,
                             feature_ts, attention_ts, recorded if source_cache == "memory" else None, convention)
        stats.store_bytes.update(features=recorded.nbytes(("feature",)), attention=recorded.nbytes(("q", "k")))
        keep = None if edited is None else (_latent_mask(edited, x0.shape[-2:]).to(x0.device), x0)
        latents = _sample(pipe, backbone, trajectory, source_cond, prompts, negative_prompt, float(guidance_scale),
                          descending, feature_layer, attention_layers, feature_ts, attention_ts, recorded,
                          callback_on_step_end, always_source=source_cache == "recompute", keep=keep)
        images = finish(backbone, latents, output_type, original.size)
    return Result(images=images, stats=stats, latents=latents)


def _invert(backbone, x0, cond, inversion_steps, grid, feature_layer, attention_layers, feature_ts, attention_ts, store,
            convention="zeroedit"):
    """DDIM inversion (`convention` as inversion/ddim.py); returns {t: latent} on the sampling grid, and (memory
    mode, "zeroedit" only) records the features and q/k of the calls whose (latent, t) the source branch needs."""
    controller = Controller()
    if store is not None:
        controller.add(Record([feature_layer], "feature", steps=lambda c: c.timestep in feature_ts, store=store,
                              target="feature"))
        controller.add(Record(attention_layers, ("q", "k"), steps=lambda c: c.timestep in attention_ts, store=store))
    fine_grid = ddim_timesteps(backbone, inversion_steps)

    def model_fn(x, t, j):
        controller.set_call(t, t, [("src", 1)], x.shape[-2:])  # step = t: Record keys (layer, kind, t)
        return backbone.unet_call(x, t, cond)

    with controller.installed(backbone.unet):
        path = ddim_invert(backbone, model_fn, x0, fine_grid, convention=convention)
    levels = dict(zip(fine_grid, path[1:]))
    return {t: levels[t] for t in grid}


def _latent_mask(edited, latent_hw) -> torch.Tensor:
    """(1, 1, h, w) float: 1 on every latent cell that the pixel mask (at the image's own size) touches."""
    return F.adaptive_max_pool2d(torch.from_numpy(edited).float()[None, None], tuple(latent_hw))


def _sample(pipe, backbone, trajectory, source_cond, prompts, negative_prompt, guidance_scale, descending,
            feature_layer, attention_layers, feature_ts, attention_ts, store, callback, always_source=False, keep=None):
    """DDIM sampling with CFG and PnP injection; every branch of a step in one UNet call. The source branch
    rides in the batch at every step (`always_source`, recompute mode, as the reference) or only where an
    injected tensor is not in the inversion's cache (memory mode: the first step). `keep` = (latent mask, source
    latent): outside the mask the source's inversion latent replaces the sample after every step."""
    count = len(prompts)
    negative = backbone.encode_negative([negative_prompt] * count)
    conditional = backbone.encode_prompt(prompts)
    source = _cached_or_branch(store)
    controller = Controller()
    controller.add(Inject([feature_layer], "feature", source, ("uncond", "cond"), target="feature",
                          steps=lambda c: c.timestep in feature_ts))
    controller.add(Inject(attention_layers, ("q", "k"), source, ("uncond", "cond"),
                          steps=lambda c: c.timestep in attention_ts))
    x = trajectory[descending[0]].float().expand(count, -1, -1, -1).clone()
    with controller.installed(backbone.unet), pipe.progress_bar(total=len(descending)) as bar:
        for i, t in enumerate(descending):
            needs_source = always_source or (t in feature_ts and (feature_layer, "feature", t) not in store) or \
                           (t in attention_ts and (attention_layers[0], "q", t) not in store)
            branches = ([("src", 1)] if needs_source else []) + [("uncond", count), ("cond", count)]
            latents = torch.cat(([trajectory[t]] if needs_source else []) + [x, x])
            cond = Cond.cat(([source_cond] if needs_source else []) + [negative, conditional])
            controller.set_call(i, t, branches, x.shape[-2:])
            out = backbone.unet_call(latents, t, cond)[-2 * count:]
            uncond, cond_out = out.chunk(2)
            guided = uncond + guidance_scale * (cond_out - uncond)
            t_to = descending[i + 1] if i + 1 < len(descending) else None
            x = ddim_step(backbone, guided, x, t, t_to)
            if keep is not None:  # the source outside the mask: its inversion latent at t_to (its own latent at the end)
                inside, x0 = keep
                x = x * inside + (trajectory[t_to] if t_to is not None else x0) * (1 - inside)
            x = step_end(pipe, callback, i, t, x)
            bar.update()
    return x
