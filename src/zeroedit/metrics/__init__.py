"""The papers' evaluation protocols, each a short function naming its source: PIE-Bench (`piebench`), TF-ICON
(`tficon`), MIP-Adapter (`mip`); pixel metrics and PIE-Bench's RLE masks (`pixel`), LPIPS in plain torch
(`lpips`), CLIP / DINO extractors from the user's cache (`models`), the toy world as a data set (`toy`).
`zeroedit eval` (zeroedit/eval.py) scores a finished batch with them."""
from .pixel import decode_rle, encode_rle, mse, psnr, ssim

__all__ = ["decode_rle", "encode_rle", "mse", "psnr", "ssim"]
