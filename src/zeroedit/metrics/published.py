"""The summary columns of each benchmark (metric key, header, scale from the raw value, higher is better) and
the published rows to stand beside ours, in the header's units."""
from __future__ import annotations

COLUMNS = {
    "piebench": [("structure_distance", "Structure ×10³ ↓", 1e3), ("psnr", "PSNR ↑", 1.0), ("lpips", "LPIPS ×10³ ↓", 1e3),
                 ("mse", "MSE ×10⁴ ↓", 1e4), ("ssim", "SSIM ×10² ↑", 1e2), ("clip_whole", "CLIP whole ↑", 1.0),
                 ("clip_edited", "CLIP edited ↑", 1.0)],
    "tficon": [("lpips_bg", "LPIPS(BG) ↓", 1.0), ("lpips_fg", "LPIPS(FG) ↓", 1.0), ("clip_image", "CLIP(Image) ↑", 1.0),
               ("clip_text", "CLIP(Text) ↑", 1.0)],
    "mip": [("clip_t", "CLIP-T ↑", 1.0), ("clip_i", "CLIP-I ↑", 1.0), ("dino", "DINO ↑", 1.0)],
    "toy": [("target", "edit detected % ↑", 100.0), ("iou", "object IoU ×10² ↑", 1e2), ("psnr", "PSNR unedited ↑", 1.0),
            ("mse", "MSE unedited ×10⁴ ↓", 1e4), ("ssim", "SSIM unedited ×10² ↑", 1e2)],
}

# PIE-Bench: Ju et al. 2023 (Direct Inversion), Table 1, structure / unedited-part background / CLIP columns.
# MIP-Adapter: Huang et al. 2024, the sdxl_plus adapter and IP-Adapter rows of its multi-concept benchmark.
# TF-ICON: no row is listed here: the paper's Table 1 could not be checked while this was written.
PUBLISHED = {
    "piebench": {"DDIM + PnP (published)": [28.22, 22.28, 113.46, 83.64, 79.05, 25.41, 22.55],
                 "DDIM + P2P-Zero (published)": [61.68, 20.44, 172.22, 144.12, 74.67, 22.80, 20.54]},
    "tficon": {},
    "mip": {"MIP-Adapter sdxl_plus (published)": [0.7765, 0.6950, 0.4397],
            "IP-Adapter (published)": [0.6343, 0.6409, 0.3481]},
    "toy": {},
}
