"""User-facing errors: one type per kind of user error, all subclasses of ValueError.

Every check that can raise one of these runs before any model work, so a failed call leaves
nothing half-written and the user's pipeline untouched.
"""


class ZeroEditError(ValueError):
    """Base class of every user error raised by zeroedit."""


class ImageError(ZeroEditError):
    """An input image is missing, unreadable, empty or of an unusable shape."""


class MaskError(ZeroEditError):
    """A mask or region is empty, of the wrong size, or lies outside the image."""


class ParameterError(ZeroEditError):
    """A parameter has a value outside its allowed range or of the wrong type."""


class ModelError(ZeroEditError):
    """The pipeline or model is unsupported, cannot be found, or lacks a needed component."""


class CheckpointError(ZeroEditError):
    """A weights file is unsafe to load or does not match the model it is used with."""


class UnsupportedModel(ModelError):
    """The method does not run on this kind of model (e.g. a UNet-only method on an SD3/FLUX pipeline); the
    message says which methods do."""


class ModelNotFound(ModelError):
    """A model that is neither a local folder nor reachable on the Hugging Face Hub (offline, unknown or gated
    repository). `model` names it and `reason` says why, so an entry point can word how its own users pass a
    downloaded folder instead (zeroedit.loading.not_found_message: `load('DIR')`, or `--model DIR` on the
    command line)."""

    def __init__(self, message: str, model: str = "", reason: str = ""):
        super().__init__(message, model, reason)
        self.model, self.reason = model, reason

    def __str__(self):
        return self.args[0]
