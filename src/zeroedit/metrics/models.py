"""CLIP and DINO feature extractors through transformers, with the preprocessing of each reference.

- CLIP (`CLIPModel`): image embedding = visual_projection(post-LN CLS), text embedding = text_projection(final-LN
  EOS token), both L2-normalised: OpenAI's `encode_image` / `encode_text`, which the references call through the
  `clip` package (MIP-Adapter, TF-ICON) or torchmetrics' `CLIPScore` (PIE-Bench). Images: bicubic resize of the
  short side to the model's size (224), centre crop, /255, CLIP mean/std. The crop offset rounds as torchvision's
  `CenterCrop` (`clip` package) or floors as transformers' `CLIPImageProcessor` (torchmetrics).
- DINO (`ViTModel`, the converted facebookresearch/dino checkpoints "facebook/dino-vitb8", "facebook/dino-vits16"):
  the final-LN CLS token (what the hub model's forward returns) and the keys of the last block (PnPInversion's
  structure distance).
Models come from the user's Hugging Face cache (`local_files_only=True` unless asked), once per process.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from ..errors import ModelError

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resize_short(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize of the short side to `size`, the long side to int(size · long / short) (torchvision
    `Resize(size)` on a PIL image and transformers' `shortest_edge`)."""
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return image if new == (w, h) else image.resize(new, Image.BICUBIC)


def center_crop(image: Image.Image, size: int, rounding: str = "round") -> Image.Image:
    """Centre crop; offsets int(round((W − size)/2)) as torchvision, or (W − size)//2 as transformers."""
    w, h = image.size
    if rounding == "round":
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    else:
        left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def normalized(images: list[Image.Image], mean, std) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) float: /255 then (x − mean) / std."""
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    x = torch.from_numpy(array).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def missing_model(name: str, purpose: str) -> ModelError:
    return ModelError(
        f"{purpose} needs the model {name!r}, which is not in your Hugging Face cache. Download it once with "
        f"`hf download {name}` (older huggingface_hub: `huggingface-cli download {name}`), or pass "
        f"--allow-download to let `zeroedit eval` fetch it.")


class Clip:
    """A CLIPModel + tokenizer with a reference's image preprocessing (`rounding` of the centre crop)."""

    def __init__(self, model, tokenizer, rounding: str = "round"):
        self.model, self.tokenizer, self.rounding = model.eval(), tokenizer, rounding
        self.size = model.config.vision_config.image_size

    @property
    def device(self):
        return next(self.model.parameters()).device

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        crops = [center_crop(resize_short(im.convert("RGB"), self.size), self.size, self.rounding) for im in images]
        return normalized(crops, CLIP_MEAN, CLIP_STD)

    @torch.no_grad()
    def image_embeds(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings (B, D)."""
        pooled = self.model.vision_model(pixel_values=self.pixels(images).to(self.device)).pooler_output
        e = self.model.visual_projection(pooled).float()
        return (e / e.norm(dim=-1, keepdim=True)).cpu()

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (B, D); captions longer than 77 tokens are truncated (EOS kept)."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                       attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
        e = self.model.text_projection(pooled).float()
        return (e / e.norm(dim=-1, keepdim=True)).cpu()


def _key_projection(layer):
    """The key Linear of a transformers ViT layer (k_proj in transformers ≥ 5.x, attention.attention.key before)."""
    attention = layer.attention
    return getattr(attention, "k_proj", None) or attention.attention.key


class Dino:
    """A DINO ViTModel: CLS embeddings (MIP-Adapter's DINO score) and last-block keys (PIE-Bench structure)."""

    def __init__(self, model):
        self.model = model.eval()
        self.size = model.config.image_size
        self.layers = getattr(model, "layers", None) or model.encoder.layer

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _interpolate(self, x: torch.Tensor) -> bool:
        return tuple(x.shape[-2:]) != (self.size, self.size)

    @torch.no_grad()
    def cls_embeds(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised final-LN CLS tokens of Resize(256, bicubic) + CenterCrop(224) + ImageNet
        normalisation (MIP-Adapter `DINOImageDataset`; 224 is the model's size, 256 = 224 · 8/7)."""
        crop = self.size  # 224 for the published models; tiny test models are smaller
        resize = int(round(crop * 256 / 224))
        x = normalized([center_crop(resize_short(im.convert("RGB"), resize), crop) for im in images],
                       IMAGENET_MEAN, IMAGENET_STD).to(self.device)
        e = self.model(pixel_values=x, interpolate_pos_encoding=self._interpolate(x)).last_hidden_state[:, 0].float()
        return (e / e.norm(dim=-1, keepdim=True)).cpu()

    @torch.no_grad()
    def keys(self, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Keys (B, tokens, heads · head_dim) of block `layer` (−1: the last, 11 for ViT-B/8) for a
        preprocessed batch, heads concatenated in order (the reference's qkv reshape + transpose)."""
        found = []
        handle = _key_projection(self.layers[layer]).register_forward_hook(lambda m, i, o: found.append(o))
        try:
            self.model(pixel_values=x.to(self.device), interpolate_pos_encoding=self._interpolate(x))
        finally:
            handle.remove()
        return found[0].float().cpu()


@functools.lru_cache(maxsize=8)
def load_clip(name: str, device: str = "cpu", local_files_only: bool = True, rounding: str = "round") -> Clip:
    """CLIP from the user's cache, once per process."""
    from transformers import AutoTokenizer, CLIPModel
    try:
        model = CLIPModel.from_pretrained(name, local_files_only=local_files_only)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    except (OSError, ValueError) as error:
        raise missing_model(name, "the CLIP score") from error
    return Clip(model.to(device), tokenizer, rounding)


@functools.lru_cache(maxsize=4)
def load_dino(name: str, device: str = "cpu", local_files_only: bool = True) -> Dino:
    """DINO ViT from the user's cache, once per process."""
    from transformers import ViTModel
    try:
        model = ViTModel.from_pretrained(name, add_pooling_layer=False, local_files_only=local_files_only)
    except (OSError, ValueError) as error:
        raise missing_model(name, "the DINO metrics") from error
    return Dino(model.to(device))
