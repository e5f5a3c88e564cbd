"""Image and mask inputs: PIL, numpy, torch or a path, in any common mode.

Conversions: RGBA/LA are composited onto white, palette and greyscale become RGB, 16-bit
images are scaled to 8 bits. Sizes: an image is resized so both sides are multiples of
`multiple` pixels (64 by default: the ×8 VAE and the UNet's three downsamplings), keeping the
aspect ratio as closely as that allows; `size` gives the long side first (e.g. 512).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import ImageError, MaskError

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


def _open(image: ImageInput, what: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            raise ImageError(f"{what}: file not found: {os.fspath(image)!r}.")
        try:
            with Image.open(image) as opened:
                opened.load()
                return opened.copy()
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
    uses the alpha; otherwise luminance > 127. `size` = (width, height) resizes (nearest)."""
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
    return np.asarray(pil) > 127


def round_size(width: int, height: int, size: int | tuple[int, int] | None = None, multiple: int = 64) -> tuple[int, int]:
    """Target (width, height): `size` as an int sets the long side, a tuple sets both; each side is
    rounded to the nearest multiple of `multiple` (at least one multiple)."""
    if isinstance(size, (tuple, list)):
        width, height = size
    elif size is not None:
        scale = size / max(width, height)
        width, height = width * scale, height * scale
    return (max(multiple, int(round(width / multiple)) * multiple), max(multiple, int(round(height / multiple)) * multiple))


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


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """Float tensor (B, 3, H, W) in [-1, 1] -> list of PIL images."""
    array = ((tensor.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(item.permute(1, 2, 0).numpy()) for item in array]
