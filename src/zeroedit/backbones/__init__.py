"""backbones/: one adapter per model family, behind one interface (see docs/backbones.md).

- `unet.Backbone`: SD 1.x / 2.x / SDXL (UNet, ε or v prediction, DDPM schedule).
- `flow.FlowBackbone`: SD3 / SD3.5 and FLUX.1 (MM-DiT transformers, rectified flow).
`backbone_for(pipe, stats, compile)` picks the adapter from the pipeline's denoiser.
"""
from __future__ import annotations

from ..errors import ModelError, UnsupportedModel
from .flow import FlowBackbone, is_flux, is_sd3
from .unet import FLOW_METHODS, Backbone, Cond, compile_options

__all__ = ["Backbone", "FlowBackbone", "Cond", "backbone_for", "is_flow", "require_unet", "compile_options"]


def is_flow(pipe) -> bool:
    """True for pipelines whose denoiser is an SD3 or FLUX transformer."""
    model = getattr(pipe, "transformer", None)
    return model is not None and (is_sd3(model) or is_flux(model))


def backbone_for(pipe, stats=None, compile=False):
    """The backbone adapter for `pipe`: UNet pipelines -> Backbone, SD3/FLUX -> FlowBackbone; ModelError else."""
    if getattr(pipe, "unet", None) is not None:
        return Backbone(pipe, stats, compile)
    if is_flow(pipe):
        return FlowBackbone(pipe, stats, compile)
    raise ModelError(f"{type(pipe).__name__} is not supported: zeroedit runs Stable Diffusion 1.x/2.x/XL (UNet) and "
                     "SD3/SD3.5/FLUX.1 (flow transformer) pipelines.")


def require_unet(pipe, method: str):
    """Raise UnsupportedModel (before any model work) when a UNet-only method gets an SD3/FLUX pipeline."""
    if is_flow(pipe):
        raise UnsupportedModel(f"{method} runs on UNet pipelines (Stable Diffusion 1.x, 2.x, XL) only; "
                               f"{type(pipe).__name__} is a flow-transformer pipeline. On SD3/SD3.5/FLUX.1 pipelines "
                               f"zeroedit runs {', '.join(FLOW_METHODS)}.")
