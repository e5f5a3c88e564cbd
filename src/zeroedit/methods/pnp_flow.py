"""translate on SD3/FLUX flow transformers (`ze.translate` dispatches here for flow pipelines).

Two algorithms, the same call shape as the UNet translate (image, prompt or prompts, source_prompt, steps,
attention_steps / feature_steps windows, guidance, seed, preset, source_cache, output_type, callback_on_step_end):

method=None ("inject"): inversion + attention injection, as RF-Solver-Edit (Wang et al. 2024) and FireFlow
(Deng et al. 2024) edit FLUX:
1. VAE-encode the image; invert it with the source prompt along the pipeline's σ grid (0 → 1) with the
   solver (inversion/flow.py), FLUX-dev's guidance embedding at `source_guidance_scale` (1, as both
   references invert), SD3 with the source prompt only (no CFG). During the inversion, in the first
   `attention_steps` intervals *of the sampling order* (the last ones of the inversion), record the attention
   values of the chosen layers.
2. Sample (1 → 0) with the same solver from the inverted latent, every target prompt in ONE transformer call
   per evaluation (SD3: [uncond × P, cond × P] with CFG; FLUX-dev: P with the guidance embedding); at each
   evaluation of the first `attention_steps` intervals, the recorded values replace the targets'.
   Record/inject keys, as both references: the inversion's evaluation of interval j (at its low-σ end for the
   first-order "start" evaluation, at the interval's midpoint for "mid") feeds the sampling's evaluation of
   the same interval and stage (RF-Solver-Edit `info['t'] = t_prev if inverse else t_curr`).
   source_cache="recompute" instead runs the source branch in the batch (on the inversion's input of that
   key, at its own σ and guidance): no store, one more sample-evaluation per injected call, same result.
Layers (`layers=`), each from its source:
- "single": V of every FLUX single-stream block, all tokens — FireFlow's editing scripts (`--start_layer_index 0
  --end_layer_index 37`, `reuse_v`); on SD3 (no single blocks): every joint block.
- "last-single": V of the single-stream blocks with index > 19 of 38 — RF-Solver-Edit (`info['id'] > 19`),
  i.e. the last 18/38 of them (at least one) on other depths; on SD3 the last 18/38 of the joint blocks.
- "vital": K and V of the image tokens in Stable Flow's vital layers (Avrahami et al. 2024, run_stable_flow.py:
  MULTIMODAL_VITAL_LAYERS 0, 1, 17, 18 = double blocks; [28, 53, 54, 56, 25] − 19 = single blocks 6, 9, 34,
  35, 37), mapped proportionally onto other depths; FLUX only. Stable Flow injects at every step from
  an in-batch reconstruction; here from the inversion (keyed as above).
- or a list of layer names (control.layers: double_block(i), single_block(i), joint_block(i)): V, all tokens.
"All tokens" is the text and image tokens where every text has one length (SD3, FLUX.1, FLUX.2: padded); on families
whose texts have a length of their own (Qwen-Image, Z-Image: `cond_shapes` tokens None) the source's and the
targets' text tokens cannot be paired, and V is injected on the image tokens only (`_every_token`).
- Z-Image (no published setting): "single" and "last-single" name its main single-stream layers `layers.i` (its
  refiner layers see the image or the text alone). Chosen by analogy with FLUX's single-stream blocks; the tiny
  model's random weights measure no quality.
Features (`feature_steps`, default 0 = off, as in both references): the image tokens that the blocks of these
layers output (PnP's feature injection carried over to MM-DiT blocks; no published flow default).
Presets: None = FireFlow's fast editing (solver "fireflow", 8 steps, inject 1 step, layers "single", FLUX
guidance 2: `run_*.sh` "Fast Editing"); "reference" = RF-Solver-Edit (solver "rf-solver", 25 steps, inject 3,
layers "last-single", guidance 2: its `run_*.sh`). SD3 has no published setting: the same windows, CFG 7.0
(StableDiffusion3Pipeline's default) with negative prompt "". Qwen-Image has none either: the same windows and
solvers, "single" / "last-single" on its double-stream blocks (it has no others), its renormalised true CFG 4.0
(QwenImagePipeline's default) with negative prompt "". FLUX.2 neither: FLUX.1's windows and layer presets by block
kind ("vital" stays FLUX.1's) and the pipelines' default guidance 4.0 ([dev]: the embedding; [klein] base: true CFG,
negative ""). Both chosen by analogy, so that a default translate costs FLUX.1's calls, not by quality (only
random-weight tiny models were run).
Calls: inversion (euler N, fireflow N + 1, rf-solver 2N) + the same again for sampling, whatever the number
of prompts.

method="flowedit": FlowEdit (Kulikov et al. 2024, Alg. 1), inversion-free: z ← x_src; for the last n_max of
`steps` steps: ẑ_src = (1 − σ)·x_src + σ·ε (fresh noise), ẑ_tar = z + ẑ_src − x_src,
z ← z + (σ' − σ)·(v(ẑ_tar, c_tar) − v(ẑ_src, c_src)); source and every target in ONE call per step (SD3: each
with CFG, negative ""). Defaults from FlowEdit's FLUX_exp.yaml / SD3_exp.yaml: FLUX 28 steps, n_max 24,
guidance source 1.5 / target 5.5; SD3 50 steps, n_max 33, source 3.5 / target 13.5; n_avg = 1, n_min = 0
(only n_min = 0 is implemented). `strength` = n_max / steps. Calls: n_max (no inversion).

negative_prompt: SD3/3.5 use it in their CFG branch (both methods). FLUX.1 is guidance-distilled (no CFG
branch, nothing a negative prompt could enter), so a non-empty negative_prompt on FLUX is a ParameterError
rather than silently ignored.
"""
from __future__ import annotations

import torch

from ..backbones import Cond, FlowBackbone, backbone_for
from ..backbones.flow import FLUX_GUIDANCE, SD3_GUIDANCE
from ..control import Controller, Inject, Record, Store, attn_processors, joint_attention_layers
from ..errors import ParameterError, shorten
from ..images import to_tensor
from ..inversion import FLOW_SOLVERS
from ..result import Result, Stats, Timer
from .common import (FLOW_VARIANTS, check_choice, check_number, check_steps, check_window, finish, generator,
                     load_input, step_end, step_limit)

METHODS = (None, "inject", "flowedit")  # None = "inject"
LAYER_PRESETS = ("single", "last-single", "vital")
PRESETS = {  # see module docstring for the source of each value
    None: dict(solver="fireflow", steps=8, window=1, layers="single", guidance=2.0),
    "reference": dict(solver="rf-solver", steps=25, window=3, layers="last-single", guidance=2.0),
}
FLOWEDIT = {"flux": dict(steps=28, n_max=24, source=1.5, target=5.5),  # FlowEdit FLUX_exp.yaml
            "sd3": dict(steps=50, n_max=33, source=3.5, target=13.5)}  # FlowEdit SD3_exp.yaml
VITAL_DOUBLE, VITAL_SINGLE = (0, 1, 17, 18), (6, 9, 34, 35, 37)  # Stable Flow, of 19 double / 38 single


def _spread(indices, reference: int, count: int) -> list[int]:
    """Block indices given for a model with `reference` blocks, mapped proportionally onto `count` blocks."""
    if count == reference:
        return list(indices)
    return sorted({round(i * (count - 1) / (reference - 1)) for i in indices})


def _every_token(backbone: FlowBackbone) -> str:
    """The stream of the injections of every token's V (FireFlow, RF-Solver-Edit): "joint" where every text has the
    same number of tokens; "image" where texts have lengths of their own (Z-Image), whose source-text values do not
    fit a target text of another length."""
    return "joint" if backbone.cond_shapes()[0][0] else "image"


def injection_layers(backbone: FlowBackbone, layers) -> tuple[list[str], tuple[str, ...], str]:
    """(layer names, what to inject, stream) for a `layers` preset or list (see module docstring)."""
    model = backbone.transformer
    if isinstance(layers, (list, tuple)) and layers and all(isinstance(n, str) for n in layers):
        known = {key[: -len(".processor")] for key in attn_processors(model)}
        missing = [n for n in layers if n not in known]
        if missing:
            raise ParameterError(f"layers: {missing[:3]} are not attention layers of this transformer; use "
                                 "zeroedit.control.joint_attention_layers(pipe.transformer, 'double'|'single').")
        return list(layers), ("v",), _every_token(backbone)
    if not any(isinstance(layers, str) and layers == preset for preset in LAYER_PRESETS):
        raise ParameterError(f"layers must be one of {', '.join(map(repr, LAYER_PRESETS))} or a list of attention "
                             f"layer names; got {layers!r}.")
    blocks = joint_attention_layers(model, "single") or joint_attention_layers(model, "double")
    if layers == "single":
        return blocks, ("v",), _every_token(backbone)
    if layers == "last-single":
        keep = max(1, round(len(blocks) * 18 / 38))
        return blocks[-keep:], ("v",), _every_token(backbone)
    if backbone.family != "flux":
        raise ParameterError("layers='vital' (Stable Flow) is defined for FLUX.1 only; pass 'single', 'last-single' "
                             "or a list of layer names on this model.")
    double = joint_attention_layers(model, "double")
    names = [double[i] for i in _spread(VITAL_DOUBLE, 19, len(double))]
    names += [blocks[i] for i in _spread(VITAL_SINGLE, 38, len(blocks))]
    return names, ("k", "v"), "image"


def translate_flow(pipe, picture_input, prompts, source_prompt, negative_prompt, steps, inversion_steps, feature_steps,
                   attention_steps, guidance_scale, seed, preset, source_cache, output_type, callback, compile, method,
                   solver, layers, strength, source_guidance_scale, size=None, allow_large=False, store=None) -> Result:
    """`ze.translate` on an SD3/FLUX pipeline (the common arguments are checked by methods/pnp.py)."""
    check_choice(method, "method", METHODS)
    backbone = backbone_for(pipe, None, compile)
    if method == "flowedit":
        unused = dict(preset=preset, solver=solver, layers=layers, attention_steps=attention_steps,
                      feature_steps=feature_steps, inversion_steps=inversion_steps)
        if any(value is not None for value in unused.values()) or source_cache != "memory":
            raise ParameterError("method='flowedit' takes steps, strength, guidance_scale, source_guidance_scale and "
                                 "seed; preset, solver, layers, attention/feature/inversion steps and source_cache "
                                 "belong to the injection method.")
        params = _flowedit_params(backbone, steps, strength, guidance_scale, source_guidance_scale)
    else:
        if strength is not None:
            raise ParameterError("strength belongs to method='flowedit'.")
        params = _inject_params(backbone, preset, steps, inversion_steps, feature_steps, attention_steps, solver,
                                layers, guidance_scale, source_guidance_scale)
    negative = "" if negative_prompt is None else negative_prompt
    if not isinstance(negative, str):
        raise ParameterError(f"negative_prompt must be a string, got {shorten(negative_prompt)}.")
    if negative.strip() and not backbone.has_cfg:
        raise ParameterError(f"negative_prompt {shorten(negative)}: {type(pipe).__name__} is guidance-distilled (no "
                             "classifier-free guidance branch), so it takes no negative prompt; leave negative_prompt "
                             "empty, or use a model with CFG (SD3/SD3.5, Qwen-Image, Z-Image), which honours it.")
    noise = generator(seed)  # checks seed; FlowEdit's noise
    original, picture = load_input(picture_input, backbone, size, allow_large)
    stats = Stats(params=dict(params, prompt=prompts, source_prompt=source_prompt, negative_prompt=negative, seed=seed,
                              preset=preset, source_cache=source_cache, size=list(picture.size),
                              input_size=list(original.size), compile=compile, store=store))
    backbone.stats = stats
    with Timer(stats, backbone.device), torch.no_grad():
        x0 = backbone.encode_image(to_tensor(picture)).float()
        run = _flowedit if method == "flowedit" else _inject
        recorded = Store(store, backbone.device)
        latents = run(pipe, backbone, x0, prompts, source_prompt, negative, stats.params, noise, source_cache, callback,
                      recorded)
        stats.store_bytes.update(features=recorded.nbytes(("feature",)), attention=recorded.nbytes(("q", "k", "v")))
        images = finish(backbone, latents, output_type, original.size)
    return Result(images=images, stats=stats, latents=latents)


def _guidance(value, default: float, name: str) -> float:
    return default if value is None else check_number(value, name)


def _inject_params(backbone, preset, steps, inversion_steps, feature_steps, attention_steps, solver, layers,
                   guidance_scale, source_guidance_scale) -> dict:
    """Resolved parameters of the injection method (preset defaults, see module docstring)."""
    if preset not in PRESETS:
        raise ParameterError(f"preset must be None or 'reference' on flow models, got {preset!r}.")
    chosen = PRESETS[preset]
    steps = chosen["steps"] if steps is None else check_steps(steps, maximum=step_limit(backbone))
    if inversion_steps not in (None, steps):
        raise ParameterError("inversion_steps: flow translate inverts on the sampling grid; leave it None.")
    solver = check_choice(chosen["solver"] if solver is None else solver, "solver", tuple(FLOW_SOLVERS))
    names, what, stream = injection_layers(backbone, chosen["layers"] if layers is None else layers)
    k = min(chosen["window"], steps) if attention_steps is None else check_window(attention_steps, steps, "attention_steps")
    k_feature = 0 if feature_steps is None else check_window(feature_steps, steps, "feature_steps")
    if k_feature and not backbone.image_block_outputs:
        raise ParameterError(f"feature_steps: the blocks of {backbone.family} return the image and text tokens as one "
                             "sequence, so there are no block image features to inject; leave feature_steps None.")
    return dict(method="inject", steps=steps, solver=solver, layers=names, inject=list(what), stream=stream,
                attention_steps=k, feature_steps=k_feature,
                guidance_scale=_guidance(guidance_scale, chosen["guidance"] if backbone.family == "flux"
                                         else backbone.default_guidance, "guidance_scale"),
                source_guidance_scale=_guidance(source_guidance_scale, 1.0, "source_guidance_scale"))


def _flowedit_params(backbone, steps, strength, guidance_scale, source_guidance_scale) -> dict:
    """Resolved parameters of FlowEdit (defaults of its FLUX/SD3 configs; strength = n_max / steps)."""
    family = flowedit_defaults(backbone)
    steps = family["steps"] if steps is None else check_steps(steps, maximum=step_limit(backbone))
    if strength is None:
        n_max = round(steps * family["n_max"] / family["steps"])
    else:
        n_max = max(1, round(steps * _strength(strength)))
    return dict(method="flowedit", steps=steps, n_max=n_max,
                guidance_scale=_guidance(guidance_scale, family["target"], "guidance_scale"),
                source_guidance_scale=_guidance(source_guidance_scale, family["source"], "source_guidance_scale"))


def flowedit_defaults(backbone) -> dict:
    """FlowEdit's published settings on FLUX.1 and SD3; no published setting on the other families: FLUX's
    steps and n_max, and the guidance of FlowEdit's own family of the same kind (CFG: SD3's; distilled: FLUX's) in
    proportion to the pipeline's default (source ½, target 27/14 of it with CFG; 3/7 and 11/7 distilled)."""
    if backbone.family in FLOWEDIT:
        return FLOWEDIT[backbone.family]
    published = FLOWEDIT["sd3" if backbone.has_cfg else "flux"]
    reference = SD3_GUIDANCE if backbone.has_cfg else FLUX_GUIDANCE
    ratio = backbone.default_guidance / reference
    return dict(steps=FLOWEDIT["flux"]["steps"], n_max=FLOWEDIT["flux"]["n_max"], source=published["source"] * ratio,
                target=published["target"] * ratio)


def _strength(value) -> float:
    value = check_number(value, "strength")
    if not 0.0 < value <= 1.0:
        raise ParameterError(f"strength must be in (0, 1], got {value!r}.")
    return value


def _targets(backbone, prompts, negative) -> tuple[list[tuple[str, int]], Cond]:
    """Branch layout and conditioning of the target prompts (CFG pairs on SD3)."""
    count, conditional = len(prompts), backbone.encode_prompt(prompts)
    if not backbone.has_cfg:
        return [("cond", count)], conditional
    return [("uncond", count), ("cond", count)], Cond.cat([backbone.encode_negative([negative] * count), conditional])


def _recorded(store: dict):
    """Injection source: the inversion's record for this layer and key, else the in-batch source branch,
    else nothing (that evaluation is not injected, as the references when a key was never recorded)."""
    def source(ctx, kind, tensor):
        key = (ctx.name, kind, ctx.controller.step)
        if key in store:
            return store[key]
        return tensor[ctx.branch("src")] if ctx.controller.has_branch("src") else None
    return source


def _inject(pipe, backbone, x0, prompts, source_prompt, negative, params, noise, source_cache, callback, store):
    """Inversion with recording, then sampling with injection (module docstring, method None)."""
    steps, solve = params["steps"], FLOW_SOLVERS[params["solver"]]
    sigmas = backbone.sigmas(steps, x0.shape[-2:])
    grid = backbone.token_grid(x0.shape[-2:])
    keys, feature_keys = ({(j, stage) for j in range(params[window]) for stage in ("start", "mid")}
                          for window in ("attention_steps", "feature_steps"))
    layers, what, stream = params["layers"], tuple(params["inject"]), params["stream"]
    blocks = [name.rsplit(".", 1)[0] for name in layers]  # feature rules: the image tokens these blocks output
    source_cond, source_guidance = backbone.encode_prompt(source_prompt), params["source_guidance_scale"]
    inputs = {}
    recorder = Controller()
    if source_cache == "memory":
        recorder.add(Record(layers, what, steps=lambda c: c.step in keys, store=store, stream=stream))
        recorder.add(Record(blocks, "feature", steps=lambda c: c.step in feature_keys, store=store, target="feature"))

    def invert_fn(x, sigma, i, stage):
        key = (steps - 1 - i, stage)  # interval in sampling order (see module docstring)
        if key in keys or key in feature_keys:
            inputs[key] = (x, sigma)
        recorder.set_call(key, sigma, [("src", 1)], grid)
        return backbone.transformer_call(x, sigma, source_cond, source_guidance)

    with recorder.installed(backbone.transformer):
        top = solve(invert_fn, x0, sigmas[::-1])[-1]

    branches, cond = _targets(backbone, prompts, negative)
    count, guidance = len(prompts), params["guidance_scale"]
    injector = Controller()
    injector.add(Inject(layers, what, _recorded(store), ("uncond", "cond"), steps=lambda c: c.step in keys, stream=stream))
    injector.add(Inject(blocks, "feature", _recorded(store), ("uncond", "cond"), steps=lambda c: c.step in feature_keys,
                        target="feature"))

    def sample_fn(x, sigma, j, stage):
        key = (j, stage)
        batch = [x] * (2 if backbone.has_cfg else 1)
        layout, conds, times, scales = list(branches), [cond], [sigma] * len(cond), [guidance] * len(cond)
        if source_cache == "recompute" and key in inputs:  # the source rides in this call
            x_src, sigma_src = inputs[key]
            batch, layout = [x_src] + batch, [("src", 1)] + layout
            conds, times, scales = [source_cond] + conds, [sigma_src] + times, [source_guidance] + scales
        injector.set_call(key, sigma, layout, grid)
        out = backbone.transformer_call(torch.cat(batch), torch.tensor(times), Cond.cat(conds), torch.tensor(scales))
        return backbone.guided(out[-len(cond):], guidance)

    x = top.expand(count, -1, -1, -1).clone()
    with injector.installed(backbone.transformer), pipe.progress_bar(total=steps) as bar:
        def on_step(i, sigma_next, latents):
            bar.update()
            return step_end(pipe, callback, i, sigmas[i] * backbone.num_train_timesteps, latents)
        return solve(sample_fn, x, sigmas, on_step)[-1]


def _flowedit(pipe, backbone, x0, prompts, source_prompt, negative, params, noise_source, source_cache, callback,
              store):
    """FlowEdit (module docstring): source and all targets in one call per step; it records nothing (`store` stays
    empty)."""
    steps, n_max = params["steps"], params["n_max"]
    sigmas = backbone.sigmas(steps, x0.shape[-2:])
    count = len(prompts)
    source_cond = _targets(backbone, [source_prompt], negative)[1]
    target_cond = _targets(backbone, prompts, negative)[1]
    scales = [params["source_guidance_scale"]] * len(source_cond) + [params["guidance_scale"]] * len(target_cond)
    z = x0.expand(count, -1, -1, -1).clone()
    with pipe.progress_bar(total=n_max) as bar:
        for i in range(steps - n_max, steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            noise = torch.randn(x0.shape, generator=noise_source).to(x0.device)
            z_src = (1 - sigma) * x0 + sigma * noise
            z_tar = z + z_src - x0
            sources = [z_src] * len(source_cond)
            targets = [z_tar] * (2 if backbone.has_cfg else 1)
            out = backbone.transformer_call(torch.cat(sources + targets), sigma, Cond.cat([source_cond, target_cond]),
                                            torch.tensor(scales))
            v_src = backbone.guided(out[: len(source_cond)], params["source_guidance_scale"])
            v_tar = backbone.guided(out[len(source_cond):], params["guidance_scale"])
            z = z + (sigma_next - sigma) * (v_tar - v_src)
            z = step_end(pipe, callback, i - (steps - n_max), sigma * backbone.num_train_timesteps, z)
            bar.update()
    return z


FLOW_VARIANTS["translate"] = translate_flow  # ze.translate on SD3/FLUX pipelines (methods/pnp.py dispatches here)
