"""The toy text-to-image model's architecture: a word-level CLIP tokenizer for the world's captions and the
configs of its AutoencoderKL, CLIP text encoder and SD-layout UNet (trained by scripts/train_toy.py).

Images are 64 px; the VAE has three blocks (×4), so latents are 16×16×4 — the same latent grid as the tiny
test models, and the UNet has SD's layer layout (4 levels, attentions in up_blocks[1..3]) so PnP and TF-ICON
address the same layer names as on SD 1.x/2.x.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

from ..tiny import _byte_symbols
from .world import BACKGROUNDS, COLORS, SHAPES, STYLES

TOY_SIZE = 64
EXTRA_WORDS = ("a", "and", "on", "plain", "background", "gradient", "texture", "style", "photo", "of", "the",
               "small", "large", "left", "right", "top", "bottom", "cat", "dog", "in", "with", "an", "image")


def vocabulary_words() -> list[str]:
    words = set(EXTRA_WORDS) | set(COLORS) | set(SHAPES) | set(BACKGROUNDS) | set(STYLES)
    return sorted(words)


def write_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges turn every world word into one token (other text falls back to
    characters). Written to `folder` (vocab.json, merges.txt) and loaded from there."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    merges: list[tuple[str, str]] = []
    for word in vocabulary_words():
        while len(pieces := _bpe(word, merges)) > 1:  # join the first two pieces until the word is one token
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                         pad_token="<|endoftext|>", unk_token="<|endoftext|>")


def _bpe(word: str, merges: list[tuple[str, str]]) -> list[str]:
    """Byte-pair encoding of one word as CLIP does it: repeatedly merge the adjacent pair of lowest rank.
    A merge appended last only applies when no other does, so adding merges never changes earlier words."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    rank = {m: i for i, m in enumerate(merges)}
    while len(pieces) > 1:
        pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        best, i = min(pairs)
        if best == len(rank):
            break
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def vae_config() -> dict:
    return dict(block_out_channels=(32, 64, 64), in_channels=3, out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                latent_channels=4, layers_per_block=1, norm_num_groups=16, sample_size=TOY_SIZE)


def text_config(vocab_size: int) -> dict:
    return dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
                vocab_size=vocab_size, max_position_embeddings=77, projection_dim=64, hidden_act="gelu",
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


def unet_config() -> dict:
    return dict(sample_size=TOY_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(64, 128, 128, 128),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=64, attention_head_dim=(4, 8, 8, 8), norm_num_groups=32)
