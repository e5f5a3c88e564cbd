"""`invert`: the inversions on their own (DDIM, DPM-Solver++ on UNet pipelines; Euler, RF-Solver, FireFlow on
SD3/FLUX flow pipelines), with the empty, a text or (UNet) the exceptional prompt; and `reconstruct`, the
matching sampler, to check what an inversion keeps."""
from __future__ import annotations

import torch

from .backbones import Backbone, Cond, backbone_for, compile_options, is_flow
from .images import ImageInput, to_tensor
from .inversion import FLOW_SOLVERS, ddim_invert, ddim_sample, ddim_timesteps, dpmpp_trajectory
from .inversion.dpm_solver import VPSchedule
from .errors import ImageError, ParameterError
from .methods.common import (check_callback, check_choice, check_number, check_output_type, check_steps, finish,
                             load_input, serialised, step_limit)
from .result import Result, Stats, Timer

UNET_METHODS = ("ddim", "dpmpp")
FLOW_METHODS = tuple(FLOW_SOLVERS)  # euler, rf-solver, fireflow
METHODS = UNET_METHODS + FLOW_METHODS


def _conditioning(backbone: Backbone, prompt: str, batch: int) -> Cond:
    if prompt == "exceptional":
        return backbone.exceptional_cond(batch)
    return backbone.encode_prompt(prompt).repeat(batch)


def _model_fn(backbone: Backbone, cond: Cond):
    return lambda x, t, i: backbone.unet_call(x, t, cond)


def _check_method(method, flow: bool) -> str:
    """The inversion method for this pipeline: default ddim (UNet) or fireflow (flow); ParameterError for a
    method of the other family."""
    if method is None:
        return FLOW_METHODS[-1] if flow else UNET_METHODS[0]
    check_choice(method, "method", METHODS)
    if flow != (method in FLOW_METHODS):
        kind, allowed = ("SD3/FLUX flow", FLOW_METHODS) if flow else ("UNet (SD 1.x/2.x/XL)", UNET_METHODS)
        raise ParameterError(f"method {method!r} does not apply to this {kind} pipeline; use one of "
                             f"{', '.join(map(repr, allowed))}.")
    return method


def _flow_fn(backbone, cond: Cond, guidance: float):
    return lambda x, sigma, i, stage: backbone.transformer_call(x, sigma, cond, guidance)


@serialised
def invert(pipe, image: ImageInput | list[ImageInput], method: str | None = None, prompt: str = "", steps: int = 50,
           order: int = 2, size: int | tuple[int, int] | None = None, callback=None, compile=False,
           guidance: float = 1.0, allow_large: bool = False) -> Result:
    """Invert one image or a list of images (one batched trajectory) to noise.

    method: UNet pipelines: "ddim" (default; grid t = 1…981 for 50 steps; see inversion/ddim.py) or "dpmpp"
    (DPM-Solver++ order `order`, continuous time, as TF-ICON). SD3/FLUX pipelines: "euler", "rf-solver" or
    "fireflow" (default; inversion/flow.py) on the pipeline's own σ grid. prompt: a text, "" (default) or (UNet)
    "exceptional" (TF-ICON's exceptional prompt). size: the working size, long side in px or (width, height)
    (default: the model's native long side, the image's aspect kept; images.py); allow_large: allow one above
    2048 px. guidance: FLUX-dev's distilled guidance during the inversion (1.0, as RF-Solver-Edit
    inverts; ignored by other models). Returns a Result whose `latents` is the trajectory (steps + 1, B, C, h, w),
    clean first, and whose `extra["times"]` gives the time (UNet) or σ (flow) of each entry. All images of a list
    must have the same size; `stats.params` records `size` (working) and `input_size`, and `reconstruct` returns
    images at `input_size`. callback(step, t, latents) after every inversion step. Calls: ddim/dpmpp/euler = steps, rf-solver = 2·steps, fireflow = steps + 1.
    compile: run the UNet/transformer under torch.compile (True, or a dict of its arguments).
    """
    compile_options(compile)
    flow = is_flow(pipe)
    method = _check_method(method, flow)
    if not isinstance(prompt, str):
        raise ParameterError(f"prompt must be a string, got {prompt!r}.")
    if flow and prompt == "exceptional":
        raise ParameterError("prompt='exceptional' (TF-ICON's exceptional prompt) exists for UNet pipelines only; "
                             "use a text or '' on SD3/FLUX.")
    if order not in (1, 2):
        raise ParameterError(f"order must be 1 or 2, got {order!r}.")
    check_number(guidance, "guidance")
    check_callback(callback, "callback")
    stats = Stats()
    backbone = backbone_for(pipe, stats, compile)
    steps = check_steps(steps, maximum=step_limit(backbone))
    items = image if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ImageError("image: the list of images is empty.")
    loaded = [load_input(img, backbone, size, allow_large) for img in items]
    if len({original.size for original, _ in loaded}) > 1:
        raise ImageError(f"images of one inversion must share a size, got "
                         f"{sorted({original.size for original, _ in loaded})}; resize them to one size first.")
    images = [picture for _, picture in loaded]
    stats.params.update(method=method, prompt=prompt, steps=steps, order=order, size=list(images[0].size),
                        input_size=list(loaded[0][0].size), compile=compile,
                        **({"guidance": float(guidance)} if flow else {}))
    with Timer(stats, backbone.device), torch.no_grad():
        x0 = backbone.encode_image(to_tensor(images))
        if flow:
            times = backbone.sigmas(steps, x0.shape[-2:])[::-1]
            model_fn = _flow_fn(backbone, backbone.encode_prompt(prompt).repeat(len(images)), float(guidance))
            trajectory = FLOW_SOLVERS[method](model_fn, x0, times, callback)
        else:
            model_fn = _model_fn(backbone, _conditioning(backbone, prompt, len(images)))
            if method == "ddim":
                grid = ddim_timesteps(backbone, steps)
                trajectory, times = ddim_invert(backbone, model_fn, x0, grid, callback), [None] + grid
            else:
                times = VPSchedule(backbone.alphas_cumprod).times(steps, invert=True)
                trajectory = dpmpp_trajectory(backbone, model_fn, x0, times, order, callback)
    return Result(images=None, latents=torch.stack(trajectory), stats=stats, extra={"times": times})


@serialised
def reconstruct(pipe, inversion: Result, output_type: str = "pil", compile=None) -> Result:
    """Sample back from the noisy end of an `invert` result with the same method, prompt, steps and order;
    images come back at the inverted images' own size (`input_size`).
    compile: as `invert`; None (default) compiles as the inversion did."""
    if not isinstance(inversion, Result) or inversion.latents is None or "method" not in inversion.stats.params:
        raise ParameterError("inversion must be the Result of ze.invert(...).")
    check_output_type(output_type)
    params = inversion.stats.params
    compile = params.get("compile", False) if compile is None else compile
    compile_options(compile)
    stats = Stats(params=dict(params, compile=compile))
    _check_method(params["method"], is_flow(pipe))
    backbone = backbone_for(pipe, stats, compile)
    x_top = inversion.latents[-1]
    with Timer(stats, backbone.device), torch.no_grad():
        if params["method"] in FLOW_METHODS:
            sigmas = backbone.sigmas(params["steps"], x_top.shape[-2:])
            model_fn = _flow_fn(backbone, backbone.encode_prompt(params["prompt"]).repeat(x_top.shape[0]),
                                params["guidance"])
            latents = FLOW_SOLVERS[params["method"]](model_fn, x_top, sigmas)[-1]
            return Result(images=finish(backbone, latents, output_type, params.get("input_size")), latents=latents,
                          stats=stats)
        model_fn = _model_fn(backbone, _conditioning(backbone, params["prompt"], x_top.shape[0]))
        if params["method"] == "ddim":
            latents = ddim_sample(backbone, model_fn, x_top, ddim_timesteps(backbone, params["steps"]))
        else:
            times = VPSchedule(backbone.alphas_cumprod).times(params["steps"])
            latents = dpmpp_trajectory(backbone, model_fn, x_top, times, params["order"])[-1]
        images = finish(backbone, latents, output_type, params.get("input_size"))
    return Result(images=images, latents=latents, stats=stats)
