"""PIE-Bench's protocol (Ju et al. 2023, "Direct Inversion"; PnPInversion `evaluation/evaluate.py` and
`evaluation/matrics_calculator.py`), one edited image against its source:

- structure distance (whole image): MSE between the cosine self-similarity matrices of the DINO ViT-B/8 keys of
  the last block (layer 11, CLS token included) of source and edit (`LossG.calculate_global_ssim_loss`);
- PSNR, LPIPS (SqueezeNet, torchmetrics `net_type='squeeze'`), MSE, SSIM of the unedited part: both images
  multiplied by (1 − mask) (edited pixels set to 0) and compared whole ("nan" when nothing is unedited);
- CLIP score (ViT-L/14, torchmetrics `CLIPScore`: max(100 · cos, 0)) of the edit with the editing prompt, whole
  and edited part (the edit multiplied by the mask, in uint8).
The published table reports structure ×1e3, PSNR, LPIPS ×1e3, MSE ×1e4, SSIM ×1e2, CLIP whole, CLIP edited.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .models import IMAGENET_MEAN, IMAGENET_STD, Clip, Dino
from .pixel import mse, psnr, ssim

DINO_MODEL = "facebook/dino-vitb8"
CLIP_MODEL = "openai/clip-vit-large-patch14"
LPIPS_NET = "squeeze"


def prompt_of(text: str) -> str:
    """The reference's prompt cleaning: the "[ ]" marking the edited words removed (nothing else)."""
    return text.replace("[", "").replace("]", "")


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def _unit(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0)


def resize_max(x: torch.Tensor, size: int = 224, max_size: int = 480, antialias: bool = False) -> torch.Tensor:
    """torchvision `Resize(224, max_size=480)` on a float tensor: short side 224, long side int(224·long/short)
    capped at 480; bilinear, without antialiasing (torchvision < 0.17's default for tensors)."""
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_short, new_long = size, int(size * long / short)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    shape = (new_short, new_long) if h <= w else (new_long, new_short)
    if shape == (h, w):
        return x
    return F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=antialias)


def self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every pair of tokens, (T, D) -> (T, T); norms' product clamped at eps
    (`VitExtractor.attn_cosine_sim`)."""
    norms = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.T) / (norms @ norms.T).clamp(min=eps)


def structure_distance(dino: Dino, source: Image.Image, edited: Image.Image) -> float:
    """PIE-Bench structure distance of two images. As the reference: pixels stay in 0…255 (no /255) before
    `Resize(224, max_size=480)` and the ImageNet `Normalize` (whose mean/std are meant for [0, 1] inputs)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    sims = []
    for image in (source, edited):
        x = (resize_max(_unit(_array(image)), dino.size, max_size=int(dino.size * 480 / 224)) - mean) / std
        sims.append(self_similarity(dino.keys(x)[0]))
    return float(F.mse_loss(sims[1], sims[0]))


def unedited_part(source: Image.Image, edited: Image.Image, mask: np.ndarray, lpips=None) -> dict:
    """PSNR, MSE, SSIM (and LPIPS when an LPIPS model is given) of the unedited part: images in [0, 1] times
    (1 − mask), compared whole. nan for every metric when the mask covers the whole image."""
    keep = 1.0 - np.asarray(mask, dtype=np.float32)
    names = ("psnr", "mse", "ssim") + (("lpips",) if lpips is not None else ())
    if keep.sum() == 0:
        return dict.fromkeys(names, math.nan)
    a = _unit(_array(source) / 255.0 * keep[..., None])
    b = _unit(_array(edited) / 255.0 * keep[..., None])
    out = {"psnr": float(psnr(a, b)), "mse": float(mse(a, b)), "ssim": float(ssim(a, b))}
    if lpips is not None:
        from .lpips import lpips_distance
        out["lpips"] = float(lpips_distance(lpips, a, b))
    return out


def clip_scores(clip: Clip, edited: Image.Image, prompt: str, mask: np.ndarray) -> tuple[float, float]:
    """(whole, edited part) CLIP scores max(100 · cos, 0) of the edit with the editing prompt; the edited part
    is `uint8(image · mask)`, the rest black (nan when the mask is empty)."""
    image = np.asarray(edited.convert("RGB"))
    text = clip.text_embeds([prompt])
    whole = float((100 * clip.image_embeds([edited]) @ text.T).clamp(min=0))
    if np.asarray(mask).sum() == 0:
        return whole, math.nan
    part = Image.fromarray(np.uint8(image * np.asarray(mask, dtype=np.float64)[..., None]))
    return whole, float((100 * clip.image_embeds([part]) @ text.T).clamp(min=0))
