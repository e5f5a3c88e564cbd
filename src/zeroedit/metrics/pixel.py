"""Pixel metrics as PnPInversion's `evaluation/matrics_calculator.py` computes them with torchmetrics
(`PeakSignalNoiseRatio(data_range=1.0)`, `MeanSquaredError()`, `StructuralSimilarityIndexMeasure(data_range=1.0)`),
and PIE-Bench's mask (`evaluation/evaluate.py: mask_decode`). Images are float tensors in [0, 1], (B, C, H, W) or
(C, H, W); the reference works on one image at a time (B = 1), so a batch here gives one value per image.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _batched(x: torch.Tensor) -> torch.Tensor:
    return x if x.dim() == 4 else x.unsqueeze(0)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every pixel and channel, per image (torchmetrics `MeanSquaredError`)."""
    a, b = _batched(a).float(), _batched(b).float()
    return ((a - b) ** 2).flatten(1).sum(1) / a[0].numel()


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR = 10 log10(data_range² / MSE) per image, +inf for identical images (torchmetrics
    `PeakSignalNoiseRatio(data_range=1.0)`, base 10, MSE over all elements)."""
    return 10 * torch.log10(data_range ** 2 / mse(a, b))


def gaussian_window(kernel_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """2-D Gaussian window, the outer product of the normalised 1-D kernel exp(−d²/2σ²) at
    d = −(k−1)/2 … (k−1)/2 (torchmetrics `_gaussian`)."""
    d = torch.arange((1 - kernel_size) / 2, (1 + kernel_size) / 2, 1.0, dtype=torch.float32)
    g = torch.exp(-((d / sigma) ** 2) / 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, kernel_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, crop: bool = True) -> torch.Tensor:
    """Gaussian-window SSIM (Wang et al. 2004, eq. 13) per image, as torchmetrics'
    `StructuralSimilarityIndexMeasure(data_range=1.0)` (window 11, σ 1.5, K1 0.01, K2 0.03, local statistics
    by a depthwise convolution over reflect-padded images, variances clamped at 0). `crop=True`: the map is
    averaged over the windows that lie inside the image (the padded border cropped), as torchmetrics' releases of
    2023 (PIE-Bench's) did; `crop=False`: over the whole padded map, as its current source does. Which release
    produced the published figures is not recorded (PnPInversion pins no torchmetrics version)."""
    a, b = _batched(a).float(), _batched(b).float()
    channels = a.shape[1]
    pad = (kernel_size - 1) // 2
    window = gaussian_window(kernel_size, sigma).to(a.device).expand(channels, 1, kernel_size, kernel_size)
    a_p, b_p = (F.pad(x, (pad, pad, pad, pad), mode="reflect") for x in (a, b))
    stats = F.conv2d(torch.cat([a_p, b_p, a_p * a_p, b_p * b_p, a_p * b_p]), window, groups=channels)
    mu_a, mu_b, e_aa, e_bb, e_ab = stats.split(a.shape[0])
    var_a = (e_aa - mu_a ** 2).clamp(min=0)
    var_b = (e_bb - mu_b ** 2).clamp(min=0)
    cov = e_ab - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    if crop:
        index = index[..., pad:-pad, pad:-pad]
    return index.flatten(1).mean(1)


def decode_rle(encoded, shape=(512, 512), border: bool = True) -> np.ndarray:
    """PIE-Bench's run-length mask -> float array (H, W), 1 = edited region. `encoded` is a flat list of
    (start, length) pairs over the row-major flattened image; runs are cut at the image's end. `border`: the
    outermost rows and columns are set to 1, as the reference does "to avoid annotation errors in boundary"."""
    total = shape[0] * shape[1]
    flat = np.zeros(total, dtype=np.float64)
    pairs = np.asarray(encoded, dtype=np.int64).reshape(-1, 2)
    for start, length in pairs:
        flat[start:start + max(min(length, total - start), 0)] = 1
    mask = flat.reshape(shape)
    if border:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 1
    return mask


def encode_rle(mask: np.ndarray) -> list[int]:
    """The inverse of `decode_rle` (without the border): (start, length) pairs of the runs of 1 in the row-major
    flattened mask. Used to write PIE-Bench-layout data sets (the toy world's)."""
    flat = np.concatenate([[0], np.asarray(mask, dtype=bool).ravel().astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]
