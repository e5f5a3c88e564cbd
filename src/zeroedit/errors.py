"""User-facing errors: one type per kind of user error, all subclasses of ValueError.

Every check that can raise one of these runs before any model work, so a failed call leaves
nothing half-written and the user's pipeline untouched.

A message that echoes a user value shows it through `shorten` (a bounded repr: a few items per level, a few
levels, at most `SHOWN` characters), and every message is cut in its middle beyond `MESSAGE_LIMIT` characters,
so a huge value (a 10 MB prompt, a deeply nested list) never makes an error message huge or slow to build.
"""
import re
import reprlib

SHOWN = 120  # characters of a user value shown in a message
MESSAGE_LIMIT = 2000  # characters of a whole message; the middle of a longer one is cut

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlong = 3, SHOWN, SHOWN, 40
_repr.maxtuple = _repr.maxlist = _repr.maxarray = _repr.maxdict = _repr.maxset = _repr.maxfrozenset = \
    _repr.maxdeque = 4


def shorten(value, limit: int = SHOWN) -> str:
    """A bounded one-line repr of a user value for an error message: at most 4 items per container and 3
    levels (reprlib), and at most `limit` characters ("..." marks what is left out)."""
    try:
        text = re.sub(r"\s*\n\s*", " ", _repr.repr(value))
    except Exception:  # noqa: BLE001 — a value whose repr fails (e.g. an int past Python's digit limit)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded(message: str) -> str:
    """`message`, its middle cut when it is longer than MESSAGE_LIMIT (the start names the value, the end says
    how to fix it)."""
    if len(message) <= MESSAGE_LIMIT:
        return message
    head, tail = MESSAGE_LIMIT * 2 // 3, MESSAGE_LIMIT // 3
    return f"{message[:head]} [... {len(message) - head - tail} characters cut ...] {message[-tail:]}"


class ZeroEditError(ValueError):
    """Base class of every user error raised by zeroedit (its message bounded, see the module docstring)."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_bounded(args[0]),)
        super().__init__(*args)


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


class UnsupportedFeature(ModelError):
    """The pipeline uses a diffusers feature the method cannot run under (e.g. a cache that skips blocks); the
    message names it and how to switch it off."""


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
