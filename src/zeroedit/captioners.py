"""Image captioners for pix2pix-zero's source caption (Parmar et al. 2023, Sec. 3.2 uses BLIP).

    cap = ze.captioners.blip("path/to/blip-image-captioning-base")   # a local folder or a loaded model
    out = ze.edit(pipe, image, "cat", "dog", captioner=cap)

A captioner is any callable PIL.Image -> str. Nothing is downloaded unless the caller passes a hub id with
network access; the tests build a tiny random BLIP offline from a config.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .errors import ModelError


class BlipCaptioner:
    """Greedy BLIP captioning (transformers' BlipForConditionalGeneration) with a fixed token budget."""

    def __init__(self, model, processor, max_new_tokens: int = 30, prompt: str | None = None):
        self.model, self.processor = model.eval(), processor
        self.max_new_tokens, self.prompt = max_new_tokens, prompt

    @torch.no_grad()
    def __call__(self, image) -> str:
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        inputs = self.processor(images=image.convert("RGB"), text=self.prompt, return_tensors="pt")
        inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        caption = self.processor.decode(ids[0], skip_special_tokens=True).strip()
        return caption or "a photo"


def blip(model_or_path, processor=None, device=None, dtype=None, max_new_tokens: int = 30) -> BlipCaptioner:
    """A BLIP captioner from a local folder / hub id (`from_pretrained`) or an already loaded model + processor."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    if isinstance(model_or_path, BlipForConditionalGeneration):
        model = model_or_path
        if processor is None:
            raise ModelError("blip(model) needs processor= (a BlipProcessor) when given a loaded model.")
    else:
        try:
            model = BlipForConditionalGeneration.from_pretrained(model_or_path)
            processor = processor or BlipProcessor.from_pretrained(model_or_path)
        except (OSError, ValueError) as error:
            raise ModelError(f"could not load a BLIP captioner from {model_or_path!r}: {error}. Pass a local folder "
                             "with a BlipForConditionalGeneration checkpoint and its processor.") from error
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return BlipCaptioner(model, processor, max_new_tokens=max_new_tokens)
