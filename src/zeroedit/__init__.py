"""zeroedit: training-free diffusion editing on current diffusers.

    import zeroedit as ze
    pipe = ze.load("tiny")                     # or a hub id / local folder of SD 1.x, 2.x or SDXL
    inv = ze.invert(pipe, "image.png", method="dpmpp", prompt="exceptional", steps=20)
    out = ze.compose(pipe, background, reference, region=(x0, y0, x1, y1), prompt="...")

Every public name is imported on first use, so `import zeroedit` (and `zeroedit --help`) never imports torch.
"""
import importlib
import logging
import sys
import types

from . import errors

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

# name -> (module, attribute; None: the module itself), imported on first use.
_LAZY = {
    "load": ("zeroedit.loading", "load"),
    "invert": ("zeroedit.invert", "invert"),
    "reconstruct": ("zeroedit.invert", "reconstruct"),
    "Backbone": ("zeroedit.backbones", "Backbone"),
    "Cond": ("zeroedit.backbones", "Cond"),
    "Result": ("zeroedit.result", "Result"),
    "Stats": ("zeroedit.result", "Stats"),
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
        value = module if attribute is None else getattr(module, attribute)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'zeroedit' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`zeroedit.invert` names both a submodule and the function `ze.invert`. Python binds a submodule on its
    package when it is first imported (`from .invert import METHODS` anywhere); with lazy imports that would
    replace the function, so the package keeps the function (the module stays in sys.modules)."""

    def __setattr__(self, name, value):
        if name == "invert" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["errors", *_LAZY]
