"""LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
eq. 1) in plain torch, with the trunks of the reference package `lpips` (richzhang/PerceptualSimilarity
`lpips/lpips.py`, `pretrained_networks.py`; torchmetrics carries the same code): VGG16 (relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3) or SqueezeNet 1.1 (the seven Fire stages).

d(x, y) = Σ_l mean_hw ‖ w_l ⊙ (f̂_l(x) − f̂_l(y)) ‖², f̂ = f / (‖f‖_channels + 1e-10), inputs in [−1, 1] shifted and
scaled by the ScalingLayer (shift −.030 −.088 −.188, scale .458 .448 .450).

Weights (never downloaded here): torchvision's ImageNet trunk (`vgg16-397923af.pth`, `squeezenet1_1-b8a52dec.pth`)
and lpips' linear heads (`vgg.pth`, `squeeze.pth` of v0.1), from a folder the user gives, the torch hub cache
(`~/.cache/torch/hub/checkpoints`), or an installed `lpips` / `torchmetrics` package; read with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError

TRUNK_FILES = {"vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dec.pth"}
HEAD_FILES = {"vgg": "vgg.pth", "squeeze": "squeeze.pth"}
VGG_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
             (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512))
VGG_SLICES = (4, 9, 16, 23, 30)  # torchvision vgg16.features indices ending relu1_2 … relu5_3
FIRES = ((3, 64, 16, 64), (4, 128, 16, 64), (6, 128, 32, 128), (7, 256, 32, 128), (9, 256, 48, 192),
         (10, 384, 48, 192), (11, 384, 64, 256), (12, 512, 64, 256))  # (index, in, squeeze, expand) of squeezenet1_1
SQUEEZE_SLICES = (2, 5, 8, 10, 11, 12, 13)


class Fire(nn.Module):
    """SqueezeNet's Fire module: 1×1 squeeze, then 1×1 and 3×3 expands concatenated (ReLU after each)."""

    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)


def vgg16_features(div: int = 1) -> nn.Sequential:
    """torchvision's `vgg16().features` layer for layer (indices match its state dict); `div` narrows every
    layer (tests)."""
    layers: list[nn.Module] = [nn.Identity() for _ in range(30)]
    for index, cin, cout in VGG_CONVS:
        layers[index] = nn.Conv2d(3 if index == 0 else cin // div, cout // div, 3, padding=1)
        layers[index + 1] = nn.ReLU()
    for index in (4, 9, 16, 23):
        layers[index] = nn.MaxPool2d(2, 2)
    return nn.Sequential(*layers)


def squeezenet_features(div: int = 1) -> nn.Sequential:
    """torchvision's `squeezenet1_1().features` (indices match its state dict)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64 // div, 3, stride=2), nn.ReLU()] + [nn.Identity() for _ in range(11)]
    for index in (2, 5, 8):
        layers[index] = nn.MaxPool2d(3, 2, ceil_mode=True)
    for index, cin, squeeze, expand in FIRES:
        layers[index] = Fire(cin // div, max(squeeze // div, 1), expand // div)
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance, one value per image pair; inputs (B, 3, H, W) in [−1, 1]."""

    def __init__(self, net: str = "vgg", div: int = 1):
        super().__init__()
        if net not in TRUNK_FILES:
            raise ModelError(f"LPIPS net {net!r} is not available; use 'vgg' or 'squeeze'.")
        self.net = net
        self.features = vgg16_features(div) if net == "vgg" else squeezenet_features(div)
        self.slices = VGG_SLICES if net == "vgg" else SQUEEZE_SLICES
        widths = (64, 128, 256, 512, 512) if net == "vgg" else (64, 128, 256, 384, 384, 512, 512)
        self.lins = nn.ModuleList(nn.Conv2d(w // div, 1, 1, bias=False) for w in widths)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's activations at the end of each slice."""
        out, start = [], 0
        for end in self.slices:
            for layer in self.features[start:end]:
                x = layer(x)
            out.append(x)
            start = end
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = (self.stages((v.float() - self.shift) / self.scale) for v in (x, y))
        total = 0
        for fx, fy, lin in zip(x, y, self.lins):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fx - fy) ** 2).mean((2, 3))
        return total.flatten()

    def load_weights(self, trunk: dict, heads: dict) -> "LPIPS":
        """Load torchvision's trunk state dict ("features.N…") and lpips' heads ("linK.model.1.weight")."""
        features = {k[len("features."):]: v for k, v in trunk.items() if k.startswith("features.")}
        self.features.load_state_dict(features)
        lins = {}
        for key, value in heads.items():
            name = key.split(".")[0]
            if name.startswith("lin") and key.endswith("weight"):
                lins[f"{int(name[3:])}.weight"] = value
        self.lins.load_state_dict(lins)
        return self


def _package_dir(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def find_weights(net: str, weights: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(trunk file, heads file) for `net`: from `weights` (a folder holding both files) first, then the torch
    hub cache, then an installed lpips / torchmetrics package for the heads. Raises ModelError naming the files."""
    folders = [Path(weights).expanduser()] if weights else []
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    head_folders = folders + [p for p in (_package_dir("lpips", "weights", "v0.1"),
                                          _package_dir("torchmetrics", "functional", "image", "lpips_models")) if p]
    trunk = next((f / TRUNK_FILES[net] for f in folders if (f / TRUNK_FILES[net]).is_file()), None)
    heads = next((f / HEAD_FILES[net] for f in head_folders if (f / HEAD_FILES[net]).is_file()), None)
    if trunk is None or heads is None:
        missing = [name for name, found in ((TRUNK_FILES[net], trunk), (HEAD_FILES[net], heads)) if found is None]
        raise ModelError(
            f"LPIPS-{net} needs {' and '.join(missing)} (looked in {', '.join(str(f) for f in head_folders)}). "
            f"Put torchvision's {TRUNK_FILES[net]} (download.pytorch.org/models/{TRUNK_FILES[net]}) and lpips' v0.1 "
            f"{HEAD_FILES[net]} (github.com/richzhang/PerceptualSimilarity, lpips/weights/v0.1/) in one folder and "
            f"pass it with --lpips-weights DIR, or `pip install lpips` for the heads.")
    return trunk, heads


@functools.lru_cache(maxsize=4)
def load_lpips(net: str = "vgg", weights: str | None = None, device: str = "cpu") -> LPIPS:
    """LPIPS with its published weights, loaded once per process (see `find_weights`)."""
    trunk, heads = find_weights(net, weights)
    model = LPIPS(net).load_weights(torch.load(trunk, map_location="cpu", weights_only=True),
                                    torch.load(heads, map_location="cpu", weights_only=True))
    return model.to(device)


def lpips_distance(model: LPIPS, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS of images in [0, 1] (B, 3, H, W): the reference passes `2x − 1` (`calculate_lpips`)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(a.to(device) * 2 - 1, b.to(device) * 2 - 1).cpu()
