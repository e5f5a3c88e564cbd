"""`invert`: the inversions on their own (DDIM, DPM-Solver++), with the empty, a text or the exceptional
prompt; and `reconstruct`, the matching sampler, to check what an inversion keeps."""
from __future__ import annotations

import torch

from .backbones import Backbone, Cond, compile_options
from .images import ImageInput, prepare_image, to_tensor
from .inversion import ddim_invert, ddim_sample, ddim_timesteps, dpmpp_trajectory
from .inversion.dpm_solver import VPSchedule
from .errors import ImageError, ParameterError
from .methods.common import check_choice, check_steps, finish
from .result import Result, Stats, Timer

METHODS = ("ddim", "dpmpp")


def _conditioning(backbone: Backbone, prompt: str, batch: int) -> Cond:
    if prompt == "exceptional":
        return backbone.exceptional_cond(batch)
    return backbone.encode_prompt(prompt).repeat(batch)


def _model_fn(backbone: Backbone, cond: Cond):
    return lambda x, t, i: backbone.unet_call(x, t, cond)


def invert(pipe, image: ImageInput | list[ImageInput], method: str = "ddim", prompt: str = "", steps: int = 50,
           order: int = 2, size: int | tuple[int, int] | None = None, callback=None, compile=False) -> Result:
    """Invert one image or a list of images (one batched trajectory) to noise.

    method: "ddim" (grid t = 1…981 for 50 steps; see inversion/ddim.py) or "dpmpp" (DPM-Solver++ order
    `order`, continuous time, as TF-ICON). prompt: a text, "" (default) or "exceptional" (TF-ICON's
    exceptional prompt). size: long side in px (default: the image's own size, rounded to multiples of 64).
    Returns a Result whose `latents` is the trajectory (steps + 1, B, C, h, w), clean first, and whose
    `extra["times"]` gives the time of each entry. All images of a list must have the same size.
    compile: run the UNet under torch.compile (True, or a dict of its arguments).
    """
    compile_options(compile)
    check_choice(method, "method", METHODS)
    steps = check_steps(steps)
    if not isinstance(prompt, str):
        raise ParameterError(f"prompt must be a string, got {prompt!r}.")
    if order not in (1, 2):
        raise ParameterError(f"order must be 1 or 2, got {order!r}.")
    images = [prepare_image(img, size) for img in (image if isinstance(image, (list, tuple)) else [image])]
    if not images:
        raise ImageError("image: the list of images is empty.")
    if len({img.size for img in images}) > 1:
        raise ImageError(f"images of one inversion must share a size, got {sorted({img.size for img in images})}; pass size=.")
    stats = Stats(params=dict(method=method, prompt=prompt, steps=steps, order=order, size=list(images[0].size),
                              compile=compile))
    backbone = Backbone(pipe, stats, compile)
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


def reconstruct(pipe, inversion: Result, output_type: str = "pil", compile=None) -> Result:
    """Sample back from the noisy end of an `invert` result with the same method, prompt, steps and order.
    compile: as `invert`; None (default) compiles as the inversion did."""
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
        images = finish(backbone, latents, output_type)
    return Result(images=images, latents=latents, stats=stats)
