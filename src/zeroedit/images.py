"""Image and mask inputs: PIL, numpy, torch or a path, in any common mode; working sizes.

Conversions: RGBA/LA are composited onto white, palette and greyscale become RGB. Files and PIL
images are turned upright by their EXIF orientation (a portrait phone photo stays portrait). A file
whose header announces more pixels than PIL's `Image.MAX_IMAGE_PIXELS` (89.5 MP by default; raise it,
or set it to None, to accept bigger files) is an ImageError before any pixel is decoded (decompression
bombs); so is a file PIL cannot decode, or one whose compressed text or colour-profile chunk expands
beyond PIL's limit (`DECODE_ERRORS`).

Pixel values (arrays, tensors and PIL's deep modes; the dtype decides the scale, never the values):
- floats (numpy, torch, PIL mode F): diffusers' convention, [0, 1]. Values at most FLOAT_TOLERANCE (1/255,
  one 8-bit level) outside it are rounding noise and clipped; NaN, ±inf or values further out are an
  ImageError that says how to convert (0–255 values: divide by 255; a [-1, 1] image: (x + 1) / 2). numpy
  and torch inputs follow the same rules (a tensor is read through numpy).
- uint16, PIL's I;16 modes (16-bit PNG/TIFF) and mode I (PIL's decoders put 16-bit PGM/PPM there):
  0–65535, scaled by 255/65535; mode I values outside 0–65535 (a 32-bit TIFF) are an ImageError.
- uint8, bool (False/True -> 0/255) and other integer types: 8-bit values, 0–255; values outside are an
  ImageError (give uint16 for 16-bit data, or floats).
- complex or object arrays, meta or sparse tensors: ImageError.
Layouts: HxW, HxWx{1,3,4}, {1,3,4}xHxW, each with an optional batch of one in front.

Masks: white (luminance > 127) is inside; a mask whose largest value is 1 is read as a 0/1 mask
(1 = inside); a mask with transparency uses its alpha channel.

Working size (`working_size`): every method runs at a size derived from the model and returns its
outputs at the input's own size. Default: the model's native long side (UNet `sample_size` × VAE
factor: 512 for SD 1.x/2.x-base, 768 for SD 2.x-768, 1024 for SDXL, 128 for the tiny models, 64 for
the toy), the input's aspect kept, each side rounded to the model's own multiple (VAE factor ×
2^(UNet levels − 1): 64 on SD 1.x/2.x, 32 on SDXL). `size=` overrides it: an int sets the long side,
(w, h) both sides (rounded to the same multiple). Working sizes above `MAX_WORKING_SIDE` (2048 px
long side, so at most 4.2 MP) are refused unless `allow_large=True`.
`prepare_image` (no model at hand) keeps the image's own size rounded to multiples of `multiple`.
"""
from __future__ import annotations

import contextlib
import math
import os
import struct
import zlib
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import ImageError, MaskError, ParameterError, ZeroEditError, shorten

MAX_WORKING_SIDE = 2048  # px, long side of the working size without allow_large=True
FLOAT_TOLERANCE = 1 / 255  # float pixels this far outside [0, 1] (one 8-bit level) are rounding noise: clipped
# What PIL raises on broken or hostile files (UnidentifiedImageError is an OSError; "Decompressed Data Too Large"
# a ValueError; truncated or malformed chunks SyntaxError, EOFError, struct.error or zlib.error).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)

ImageInput = Any  # PIL.Image | np.ndarray | torch.Tensor | str | os.PathLike


def _unit_floats(array: np.ndarray, what: str) -> np.ndarray:
    """Float pixels in [0, 1] -> uint8 (diffusers' convention). Values within FLOAT_TOLERANCE outside [0, 1]
    are rounding noise and clipped; NaN/inf or values further out are an ImageError saying how to convert."""
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        raise ImageError(f"{what}: {int(array.size - finite.sum())} pixel value(s) are NaN or infinite; pass finite "
                         "floats in [0, 1] (e.g. np.nan_to_num(x) first).")
    low, high = float(array.min()), float(array.max())
    if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
        if low >= -FLOAT_TOLERANCE and high <= 255 * (1 + FLOAT_TOLERANCE):
            hint = "they look like 0–255 values: divide by 255 (or pass a uint8 array)"
        elif low >= -1 - FLOAT_TOLERANCE and high <= 1 + FLOAT_TOLERANCE:
            hint = "they look like a [-1, 1] image: pass (x + 1) / 2"
        elif low >= -FLOAT_TOLERANCE and high <= 65535 * (1 + FLOAT_TOLERANCE):
            hint = "they look like 0–65535 values: divide by 65535 (or pass a uint16 array)"
        else:
            hint = "rescale them to [0, 1]"
        raise ImageError(f"{what}: float pixels must lie in [0, 1] (diffusers' convention), got values in "
                         f"[{low:.4g}, {high:.4g}]; {hint}.")
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _integers(array: np.ndarray, what: str) -> np.ndarray:
    """Integer pixels -> uint8: uint16 scaled by 65535 (16 bits, rounded), any other integer type read as
    8-bit values (0–255; anything outside is an ImageError: the scale would be a guess)."""
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 255:
        raise ImageError(f"{what}: {array.dtype} pixels are read as 8-bit values (0–255), got values in "
                         f"[{low}, {high}]; pass a uint16 array for 16-bit data (0–65535) or floats in [0, 1].")
    return array.astype(np.uint8)


def _from_array(array: np.ndarray, what: str) -> Image.Image:
    """A numpy array (HxW, HxWxC, CxHxW, or any of them with a batch of one in front) -> a PIL image:
    bool, uint8, uint16 (÷ 257), other integers in 0–255, floats in [0, 1] (module docstring)."""
    if array.dtype.kind not in "biuf":
        raise ImageError(f"{what}: pixels of dtype {array.dtype} are not an image; pass uint8 (0–255), uint16 "
                         "(0–65535), bool or floats in [0, 1].")
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ImageError(f"{what}: a 4-D array must hold one image, got batch {array.shape[0]}; pass one "
                             "image at a time.")
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"{what}: array of shape {array.shape} is not an image; pass HxW, HxWx3 or HxWx4.")
    if array.size == 0:
        raise ImageError(f"{what}: the array is empty.")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        array = _unit_floats(array, what)
    elif array.dtype != np.uint8:
        array = _integers(array, what)
    return Image.fromarray(np.ascontiguousarray(array))


def _tensor_array(tensor: torch.Tensor, what: str) -> np.ndarray:
    """A tensor's values as a numpy array, read by the same rules as a numpy input (floats in [0, 1])."""
    if tensor.is_meta:
        raise ImageError(f"{what}: a meta tensor holds no pixel values (it only has a shape); pass a tensor with "
                         "data.")
    if tensor.layout != torch.strided:
        raise ImageError(f"{what}: a {tensor.layout} tensor; pass a dense one (tensor.to_dense()).")
    tensor = tensor.detach().cpu()
    tensor = tensor.float() if tensor.is_floating_point() else tensor  # bfloat16 and float8 have no numpy type
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError) as error:  # e.g. a quantized tensor
        raise ImageError(f"{what}: a tensor of dtype {tensor.dtype} cannot be read as pixels ({error}); pass "
                         "uint8 or float values.") from None


def _check_pixels(image: Image.Image, what: str) -> None:
    """Refuse an image whose (header) size exceeds PIL's decompression-bomb limit, before decoding it."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        raise ImageError(f"{what}: {image.width}×{image.height} is {image.width * image.height / 1e6:.0f} megapixels, "
                         f"above PIL's decompression-bomb limit of {limit / 1e6:.0f} MP; if the file is genuine, raise "
                         "PIL.Image.MAX_IMAGE_PIXELS (None turns the check off), or shrink the image first.")


def _upright(image: Image.Image) -> Image.Image:
    """The image turned by its EXIF orientation tag (a no-op without one)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 — an unreadable EXIF block is no orientation
        return image
    return ImageOps.exif_transpose(image) if orientation not in (None, 1) else image


@contextlib.contextmanager
def _decoding(what: str, name: str):
    """Turn what PIL raises on a broken or hostile file (any of DECODE_ERRORS) into an ImageError naming it."""
    try:
        yield
    except ZeroEditError:
        raise
    except DECODE_ERRORS as error:
        text = (str(error) or type(error).__name__).splitlines()[0][:300]
        if "decompressed data too large" in text.lower():  # PIL's ImageFile.SAFEBLOCK guard of zTXt/iTXt/iCCP
            text += ": a compressed text or colour-profile chunk expands beyond PIL's limit; re-save the image " \
                    "without its metadata"
        raise ImageError(f"{what}: {name} is not a readable image ({text}).") from None


def _read_file(path, what: str) -> Image.Image:
    """Open lazily, check the header's pixel count, then decode (bombs never reach `load`). PIL itself raises
    above twice its limit and warns above it (the warning is left alone: silencing it would change the
    process-wide warning filters under other threads); `_check_pixels` refuses both."""
    try:
        opened = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # the warning: under -W error
        raise ImageError(f"{what}: {os.fspath(path)!r} is refused as a decompression bomb ({error}); if the file "
                         "is genuine, raise PIL.Image.MAX_IMAGE_PIXELS.") from None
    with opened:
        _check_pixels(opened, what)
        opened.load()
        return opened.copy()


def _open(image: ImageInput, what: str) -> Image.Image:
    if isinstance(image, Image.Image):
        _check_pixels(image, what)
        with _decoding(what, "the PIL image"):
            image.load()  # a lazily opened file decodes here
        return _upright(image)
    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            raise ImageError(f"{what}: file not found: {os.fspath(image)!r}.")
        with _decoding(what, repr(os.fspath(image))):
            return _upright(_read_file(image, what))
    if isinstance(image, torch.Tensor):
        return _from_array(_tensor_array(image, what), what)
    if isinstance(image, np.ndarray):
        return _from_array(image, what)
    raise ImageError(f"{what}: expected a PIL image, numpy array, torch tensor or path, got {type(image).__name__}.")


def _named(image: ImageInput, what: str) -> str:
    """`what`, with the file's name when the input is a path (for messages about its pixel values)."""
    return f"{what} {os.fspath(image)!r}" if isinstance(image, (str, os.PathLike)) else what


def _to_8bit(image: Image.Image, what: str) -> Image.Image:
    """PIL's deep modes by the array rules: I;16* and I are 16-bit (0–65535, as PIL's decoders fill mode I,
    e.g. a 16-bit PGM), F (32-bit floats) in [0, 1]."""
    if image.mode.startswith("I;16"):
        return _from_array(np.asarray(image).astype(np.uint16), what)  # byte order: numpy reads it from the mode
    if image.mode == "I":
        array = np.asarray(image, dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ImageError(f"{what}: a 32-bit integer image (PIL mode I) is read as 16-bit (0–65535), got values "
                             f"in [{array.min()}, {array.max()}]; save it as 8- or 16-bit, or pass floats in [0, 1].")
        return _from_array(array.astype(np.uint16), what)
    if image.mode == "F":
        return _from_array(np.asarray(image, dtype=np.float32), what)
    return image


def load_image(image: ImageInput, what: str = "image") -> Image.Image:
    """Any supported input -> an RGB PIL image (alpha composited onto white)."""
    pil = _to_8bit(_open(image, what), _named(image, what))
    if pil.width < 1 or pil.height < 1:
        raise ImageError(f"{what}: the image is empty ({pil.width}x{pil.height}).")
    with _decoding(what, "the image"):  # a mode PIL cannot convert (e.g. "La") is unreadable too
        if pil.mode == "P":
            pil = pil.convert("RGBA")
        if pil.mode in ("RGBA", "LA", "PA"):
            rgba = pil.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return pil.convert("RGB")


def load_mask(mask: ImageInput, what: str = "mask", size: tuple[int, int] | None = None) -> np.ndarray:
    """Any supported input -> a boolean HxW array (True = inside). A mask with an alpha channel
    uses the alpha; otherwise luminance > 127, or > 0 for a 0/1 mask (largest value 1).
    `size` = (width, height) resizes (nearest)."""
    try:
        pil = _to_8bit(_open(mask, what), _named(mask, what))
    except ImageError as error:
        raise MaskError(str(error)) from None
    if pil.mode in ("RGBA", "LA", "PA") and np.asarray(pil.getchannel("A")).min() < 255:
        pil = pil.getchannel("A")
    else:
        pil = pil.convert("L")
    if size is not None and pil.size != tuple(size):
        pil = pil.resize(tuple(size), Image.NEAREST)
    values = np.asarray(pil)
    return values > (0 if values.max() == 1 else 127)


def round_size(width: int, height: int, size: int | tuple[int, int] | None = None, multiple: int = 64) -> tuple[int, int]:
    """Target (width, height): `size` as an int sets the long side, a tuple sets both; each side is
    rounded to the nearest multiple of `multiple` (at least one multiple)."""
    if isinstance(size, (tuple, list)):
        width, height = size
    elif size is not None:
        scale = size / max(width, height)
        width, height = width * scale, height * scale
    return (max(multiple, int(round(width / multiple)) * multiple), max(multiple, int(round(height / multiple)) * multiple))


def working_size(image_size: tuple[int, int], native: int, multiple: int, size=None,
                 allow_large: bool = False) -> tuple[int, int]:
    """The working (width, height) for an input of `image_size` on a model of native long side `native` and
    side multiple `multiple` (module docstring). Raises ParameterError for a bad `size` or one above
    MAX_WORKING_SIDE without `allow_large`."""
    if size is None:
        size = native
    pair = isinstance(size, (tuple, list))
    values = list(size) if pair else [size]
    if (pair and len(values) != 2) or not all(isinstance(v, (int, float, np.integer, np.floating))
                                             and not isinstance(v, bool) and math.isfinite(v) and v >= 1 for v in values):
        raise ParameterError(f"size must be the long side in px (e.g. 512) or (width, height), got {shorten(size)}.")
    width, height = round_size(*image_size, size=tuple(values) if pair else values[0], multiple=multiple)
    if max(width, height) > MAX_WORKING_SIDE and not allow_large:
        raise ParameterError(f"a working size of {width}×{height} px is above {MAX_WORKING_SIDE} px on the long side "
                             f"(this model's native long side is {native} px): pass a smaller size=, or "
                             "allow_large=True if you mean it (memory and time grow with the pixel count).")
    return width, height


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` resized to `size` (Lanczos; large reductions first by integer factors, as PIL's reducing_gap)."""
    return image if image.size == tuple(size) else image.resize(tuple(size), Image.LANCZOS, reducing_gap=3.0)


def prepare_image(image: ImageInput, size: int | tuple[int, int] | None = None, multiple: int = 64,
                  what: str = "image", resample=Image.LANCZOS) -> Image.Image:
    """Load and resize an image to sides that are multiples of `multiple` (see module docstring)."""
    pil = load_image(image, what)
    target = round_size(pil.width, pil.height, size, multiple)
    return pil if pil.size == target else pil.resize(target, resample)


def to_tensor(images: Image.Image | list[Image.Image]) -> torch.Tensor:
    """PIL image(s) -> float tensor (B, 3, H, W) in [-1, 1]."""
    images = [images] if isinstance(images, Image.Image) else images
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> float tensor (1, C, H, W) in [0, 1] (C = 3 for RGB, 1 for L)."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    array = array[..., None] if array.ndim == 2 else array
    return array.permute(2, 0, 1)[None].float().div_(255.0)


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """Float tensor (B, 3, H, W) in [-1, 1] -> list of PIL images."""
    array = ((tensor.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(item.permute(1, 2, 0).numpy()) for item in array]
