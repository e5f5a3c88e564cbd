"""zeroedit: training-free diffusion editing on current diffusers.

    import zeroedit as ze
    pipe = ze.load("tiny")                     # or a hub id / local folder of SD 1.x, 2.x or SDXL
    inv = ze.invert(pipe, "image.png", method="dpmpp", prompt="exceptional", steps=20)
    out = ze.compose(pipe, background, reference, region=(x0, y0, x1, y1), prompt="...")
"""
import importlib
import logging

from . import errors
from .backbones import Backbone, Cond
from .invert import invert, reconstruct
from .loading import load
from .result import Result, Stats

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

# Methods and tools are imported on first use (keeps `import zeroedit` light).
_LAZY = {
    "compose": ("zeroedit.methods.tficon", "compose"),
    "translate": ("zeroedit.methods.pnp", "translate"),
    "edit": ("zeroedit.methods.pix2pix_zero", "edit"),
    "personalize": ("zeroedit.methods.mip", "personalize"),
    "directions": ("zeroedit.directions", None),
    "captioners": ("zeroedit.captioners", None),
    "visualize": ("zeroedit.visualize", None),
    "masks": ("zeroedit.masks", None),
}


def __getattr__(name):
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attribute is None else getattr(module, attribute)
    raise AttributeError(f"module 'zeroedit' has no attribute {name!r}")


__all__ = ["load", "invert", "reconstruct", "errors", "Backbone", "Cond", "Result", "Stats", *_LAZY]
