"""Image and mask inputs: PIL, numpy, torch or a path, in any common mode; working sizes.

Conversions: RGBA/LA are composited onto white, palette and greyscale become RGB, 16-bit
images are scaled to 8 bits. Files and PIL images are turned upright by their EXIF orientation
(a portrait phone photo stays portrait). A file whose header announces more pixels than PIL's
`Image.MAX_IMAGE_PIXELS` (89.5 MP by default; raise it, or set it to None, to accept bigger
files) is an ImageError before any pixel is decoded (decompression bombs).

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

import math
import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, MaskError, ParameterError, shorten

MAX_WORKING_SIDE = 2048  # px, long side of the working size without allow_large=True

ImageInput = Any  # PIL.Image | np.ndarray | torch.Tensor | str | os.PathLike


def _from_array(array: np.ndarray, what: str) -> Image.Image:
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
    elif np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.nan_to_num(array), 0.0, 1.0)
        array = (array * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


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
        return _upright(image)
    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            raise ImageError(f"{what}: file not found: {os.fspath(image)!r}.")
        try:
            return _upright(_read_file(image, what))
        except (UnidentifiedImageError, OSError) as error:
            raise ImageError(f"{what}: {os.fspath(image)!r} is not a readable image ({error}).") from None
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 4:
            if tensor.shape[0] != 1:
                raise ImageError(f"{what}: a 4-D tensor must hold one image, got batch {tensor.shape[0]}.")
            tensor = tensor[0]
        if tensor.is_floating_point() and tensor.min() < 0:  # diffusers' [-1, 1] convention
            tensor = (tensor + 1) / 2
        return _from_array(tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy(), what)
    if isinstance(image, np.ndarray):
        return _from_array(image, what)
    raise ImageError(f"{what}: expected a PIL image, numpy array, torch tensor or path, got {type(image).__name__}.")


def _to_8bit(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.int64)
        peak = 65535 if array.max() > 255 else 255
        return Image.fromarray((array * 255 // peak).clip(0, 255).astype(np.uint8))
    if image.mode == "F":
        return _from_array(np.asarray(image, dtype=np.float32), "image")
    return image


def load_image(image: ImageInput, what: str = "image") -> Image.Image:
    """Any supported input -> an RGB PIL image (alpha composited onto white)."""
    pil = _to_8bit(_open(image, what))
    if pil.width < 1 or pil.height < 1:
        raise ImageError(f"{what}: the image is empty ({pil.width}x{pil.height}).")
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
        pil = _to_8bit(_open(mask, what))
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
