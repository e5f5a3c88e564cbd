"""TF-ICON's protocol (Lu et al. 2023, Table 1). The authors did not release their script; what is known comes
from their answers in Shilin-LU/TF-ICON issues #20, #25, #27 and #31, and the rest is marked "unverified":

- LPIPS(BG), VGG: the composition and the original background, the user region (mask_bg_fg) set to 0 in both,
  LPIPS on the masked images (#20, #25). Unverified: the background is resized to the composition's size when
  they differ (TF-ICON works at 512²); "0" is taken as black pixels.
- LPIPS(FG), VGG: the region's bounding box cropped from the composition, resized to the reference (foreground)
  image's size, against the reference image (#20, #31). Unverified: bicubic resize, the whole reference image.
- CLIP(Image): 100 · cos of the CLIP image embeddings of that crop and the reference (#27: values of 70–80).
- CLIP(Text): 100 · cos of the composition's and the prompt's CLIP embeddings.
Unverified: the CLIP model (#31: "the medium and small versions"): ViT-B/32 by default, --clip-model to change;
OpenAI `clip` preprocessing (#20 points to the `clip` package).
Only the same-domain results are quantitative in the paper (#25: cross-domain was a user study).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..images import to_unit_tensor
from .lpips import lpips_distance
from .models import Clip

CLIP_MODEL = "openai/clip-vit-base-patch32"
LPIPS_NET = "vgg"


def _unit(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] of the image as RGB."""
    return to_unit_tensor(image.convert("RGB"))


def region_mask(region, size: tuple[int, int]) -> np.ndarray:
    """The user region as a bool (H, W) mask at `size` (W, H): a mask image (white = region, nearest resize) or an
    (x0, y0, x1, y1) box in pixels."""
    if isinstance(region, Image.Image):
        return np.asarray(region.convert("L").resize(size, Image.NEAREST)) >= 128
    x0, y0, x1, y1 = (int(round(v)) for v in region)
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[max(y0, 0):y1, max(x0, 0):x1] = True
    return mask


def lpips_bg(lpips, background: Image.Image, composite: Image.Image, region: np.ndarray) -> float:
    """LPIPS of background and composition with the region's pixels set to 0 in both."""
    background = background.convert("RGB").resize(composite.size, Image.BICUBIC) \
        if background.size != composite.size else background
    keep = torch.from_numpy(~region).float()
    return float(lpips_distance(lpips, _unit(background) * keep, _unit(composite) * keep))


def foreground(composite: Image.Image, region: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The region's bounding box cropped from the composition and resized to `size` (the reference's)."""
    ys, xs = np.nonzero(region)
    crop = composite.convert("RGB").crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return crop.resize(size, Image.BICUBIC)


def lpips_fg(lpips, crop: Image.Image, reference: Image.Image) -> float:
    """LPIPS of the composed foreground (see `foreground`) and the reference image."""
    return float(lpips_distance(lpips, _unit(crop), _unit(reference)))


def clip_image(clip: Clip, crop: Image.Image, reference: Image.Image) -> float:
    """100 · cos of the CLIP image embeddings of the composed foreground and the reference."""
    a, b = clip.image_embeds([crop, reference])
    return float(100 * a @ b)


def clip_text(clip: Clip, composite: Image.Image, prompt: str) -> float:
    """100 · cos of the composition's CLIP image embedding and the prompt's text embedding."""
    return float(100 * clip.image_embeds([composite])[0] @ clip.text_embeds([prompt])[0])
