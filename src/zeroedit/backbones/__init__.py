"""backbones/: one adapter per model family, behind one interface (see docs/backbones.md).

- `unet.Backbone`: SD 1.x / 2.x / SDXL (UNet, ε or v prediction, DDPM schedule).
- `flow.FlowBackbone`: SD3 / SD3.5 and FLUX.1 (MM-DiT transformers, rectified flow), and the base of the other
  flow families' adapters, registered by transformer class in `flow.FAMILIES`: `flux2.Flux2Backbone` (FLUX.2),
  `qwenimage.QwenImageBackbone` (Qwen-Image, Qwen-Image-Edit-Plus), `zimage.ZImageBackbone` (Z-Image),
  `chroma.ChromaBackbone` (Chroma: FLUX.1's layout, T5 with its mask, true CFG). FluxKontextPipeline runs as
  FLUX.1 (same transformer).
`backbone_for(pipe, stats, compile)` picks the adapter from the pipeline's denoiser.
"""
from __future__ import annotations

import os

import torch

from ..errors import ModelError
from . import flux2  # noqa: F401 — registers the FLUX.2 adapter in FAMILIES
from . import qwenimage  # noqa: F401 — registers its family in FAMILIES
from .chroma import ChromaBackbone
from .flow import FAMILIES, FlowBackbone
from .unet import Backbone, Cond, compile_options
from .zimage import ZImageBackbone

__all__ = ["Backbone", "FlowBackbone", "Cond", "backbone_for", "check_pipe", "is_flow", "compile_options"]


def check_pipe(pipe):
    """Refuse what is not a diffusers pipeline (None, a model name or path, a bare model) with a ModelError that
    says what to pass; return its denoiser (the UNet, or a flow `transformer`). Whether the pipeline is a
    supported one (SD 1.x/2.x/XL components) is checked by `Backbone`."""
    if pipe is None:
        raise ModelError("pipe is None: pass a diffusers pipeline, e.g. pipe = ze.load('stabilityai/stable-diffusion-"
                         "2-1-base') or ze.load('tiny').")
    if isinstance(pipe, (str, bytes, os.PathLike)):
        raise ModelError(f"pipe is the name {os.fsdecode(pipe) if not isinstance(pipe, str) else pipe!r}, not a "
                         f"pipeline: load it first, pipe = ze.load({str(pipe)!r}), and pass pipe.")
    if isinstance(pipe, torch.nn.Module):
        raise ModelError(f"pipe is a bare {type(pipe).__name__}; pass the whole diffusers pipeline (the object "
                         "that holds unet, vae, text_encoder, tokenizer and scheduler), e.g. from ze.load(...).")
    denoiser = getattr(pipe, "unet", None)
    denoiser = getattr(pipe, "transformer", None) if denoiser is None else denoiser
    if not isinstance(denoiser, torch.nn.Module):
        raise ModelError(f"pipe ({type(pipe).__name__}) is not a diffusion pipeline with a UNet; zeroedit needs a "
                         "Stable Diffusion (1.x, 2.x or XL) text-to-image pipeline, e.g. from ze.load(...).")
    return denoiser


FAMILIES.update(SD3Transformer2DModel=FlowBackbone, FluxTransformer2DModel=FlowBackbone,
                ChromaTransformer2DModel=ChromaBackbone, ZImageTransformer2DModel=ZImageBackbone)


def is_flow(pipe) -> bool:
    """True for pipelines whose denoiser is a flow transformer zeroedit has an adapter for (flow.FAMILIES)."""
    model = getattr(pipe, "transformer", None)
    return model is not None and type(model).__name__ in FAMILIES


def backbone_for(pipe, stats=None, compile=False):
    """The backbone adapter for `pipe`: UNet pipelines -> Backbone, SD3/FLUX -> FlowBackbone; ModelError else."""
    check_pipe(pipe)
    if getattr(pipe, "unet", None) is not None:
        return Backbone(pipe, stats, compile)
    if is_flow(pipe):
        return FAMILIES[type(pipe.transformer).__name__](pipe, stats, compile)
    raise ModelError(f"{type(pipe).__name__} is not supported: zeroedit runs Stable Diffusion 1.x/2.x/XL (UNet) and "
                     "SD3/SD3.5/FLUX.1 (flow transformer) pipelines.")
