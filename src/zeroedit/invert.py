"""`invert`: the inversions on their own (DDIM, DPM-Solver++), with the empty, a text or the exceptional
prompt; and `reconstruct`, the matching sampler, to check what an inversion keeps."""
from __future__ import annotations

import torch

from .backbone import Backbone, Cond, compile_options
from .images import ImageInput, to_tensor
from .inversion import ddim_invert, ddim_sample, ddim_timesteps, dpmpp_trajectory
from .inversion.dpm_solver import VPSchedule
from .errors import ImageError, ParameterError
from .methods.common import (check_callback, check_choice, check_output_type, check_steps, finish, load_input,
                             serialised, step_limit)
from .result import Result, Stats, Timer

METHODS = ("ddim", "dpmpp")


def _conditioning(backbone: Backbone, prompt: str, batch: int) -> Cond:
    if prompt == "exceptional":
        return backbone.exceptional_cond(batch)
    return backbone.encode_prompt(prompt).repeat(batch)


def _model_fn(backbone: Backbone, cond: Cond):
    return lambda x, t, i: backbone.unet_call(x, t, cond)


@serialised
def invert(pipe, image: ImageInput | list[ImageInput], method: str = "ddim", prompt: str = "", steps: int = 50,
           order: int = 2, size: int | tuple[int, int] | None = None, callback=None, compile=False,
           allow_large: bool = False) -> Result:
    """Invert one image or a list of images (one batched trajectory) to noise.

    method: "ddim" (grid t = 1…981 for 50 steps; see inversion/ddim.py) or "dpmpp" (DPM-Solver++ order
    `order`, continuous time, as TF-ICON). prompt: a text, "" (default) or "exceptional" (TF-ICON's
    exceptional prompt). size: the working size, long side in px or (width, height) (default: the model's
    native long side, the image's aspect kept; images.py); allow_large: allow one above 2048 px.
    Returns a Result whose `latents` is the trajectory (steps + 1, B, C, h, w), clean first, and whose
    `extra["times"]` gives the time of each entry; `stats.params` records `size` (working) and `input_size`,
    and `reconstruct` returns images at `input_size`. All images of a list must have the same size.
    callback(step, t, latents) after every inversion step.
    compile: run the UNet under torch.compile (True, or a dict of its arguments).
    """
    compile_options(compile)
    check_choice(method, "method", METHODS)
    if not isinstance(prompt, str):
        raise ParameterError(f"prompt must be a string, got {prompt!r}.")
    if order not in (1, 2):
        raise ParameterError(f"order must be 1 or 2, got {order!r}.")
    check_callback(callback, "callback")
    stats = Stats()
    backbone = Backbone(pipe, stats, compile)
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
                        input_size=list(loaded[0][0].size), compile=compile)
    with Timer(stats, backbone.device), torch.no_grad():
        x0 = backbone.encode_image(to_tensor(images))
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
    backbone = Backbone(pipe, stats, compile)
    x_top = inversion.latents[-1]
    with Timer(stats, backbone.device), torch.no_grad():
        model_fn = _model_fn(backbone, _conditioning(backbone, params["prompt"], x_top.shape[0]))
        if params["method"] == "ddim":
            latents = ddim_sample(backbone, model_fn, x_top, ddim_timesteps(backbone, params["steps"]))
        else:
            times = VPSchedule(backbone.alphas_cumprod).times(params["steps"])
            latents = dpmpp_trajectory(backbone, model_fn, x_top, times, params["order"])[-1]
        images = finish(backbone, latents, output_type, params.get("input_size"))
    return Result(images=images, latents=latents, stats=stats)
