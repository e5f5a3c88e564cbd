"""MIP-Adapter's protocol (Huang et al. 2024; hqhQAQ/MIP-Adapter `evaluation/evaluate_func.py`): each generated
image of a concept combination ("comb") against the prompt and every image of its two concepts.

- CLIP-T: 2.5 · max(cos, 0) of CLIP ViT-B/32 image and text embeddings (`get_clip_score`, w = 2.5), the text
  being the saved file's name: "<prompt>_gen.png" split at its first "." plus "." (`inference_func.py` writes
  prompts.json so), i.e. "<prompt>_gen.";
- CLIP-I: cos of CLIP ViT-B/32 image embeddings, averaged over all (generated, reference) pairs of a concept,
  then over the two concepts (`clipeval_image`);
- DINO: the same with DINO ViT-S/16 CLS embeddings, Resize(256) + CenterCrop(224) (`dinoeval_image`).
Each comb's scores are means over its images; the published figure is the mean over combs. The reference runs
CLIP in fp16 on CUDA (`clip.load` on "cuda"); fp32 here unless the models are loaded in fp16.
"""
from __future__ import annotations

from PIL import Image

from .models import Clip, Dino

CLIP_MODEL = "openai/clip-vit-base-patch32"
DINO_MODEL = "facebook/dino-vits16"


def caption(prompt: str) -> str:
    """The text the reference scores: prompts.json's value for the image "<prompt>_gen.png"."""
    return f"{prompt}_gen.png".split(".")[0] + "."


def clip_t(clip: Clip, image: Image.Image, prompt: str) -> float:
    """2.5 · max(cos(image, caption(prompt)), 0)."""
    cos = float(clip.image_embeds([image])[0] @ clip.text_embeds([caption(prompt)])[0])
    return 2.5 * max(cos, 0.0)


def mean_similarity(embed, image: Image.Image, concepts: list[list[Image.Image]]) -> float:
    """Mean over concepts of the mean cosine between the image and each of the concept's images."""
    e = embed([image])[0]
    return sum(float((embed(refs) @ e).mean()) for refs in concepts) / len(concepts)


def clip_i(clip: Clip, image: Image.Image, concepts: list[list[Image.Image]]) -> float:
    return mean_similarity(clip.image_embeds, image, concepts)


def dino(model: Dino, image: Image.Image, concepts: list[list[Image.Image]]) -> float:
    return mean_similarity(model.cls_embeds, image, concepts)
