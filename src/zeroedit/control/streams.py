"""Rules on a joint sequence of image and text tokens: which part a rule sees (`Split`, `Rule.stream`) and the
one place where q/k/v, logit, probability and output rules are applied to it (`apply_rules`), shared by the
mirrored joint-attention processor (joint.py: SD3, FLUX's IP-Adapter layers) and the dispatcher seam (seam.py:
FLUX.1, FLUX.2, Qwen-Image, Z-Image)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..errors import ParameterError

# Logits a rule that builds its own (e.g. edit's guidance on flow models) computes at once: batch × heads × queries ×
# keys of one piece of its queries (2^26: 256 MB in float32).
PIECE_ELEMENTS = 2 ** 26


@dataclasses.dataclass
class Split:
    """Where the image, text and reference-image tokens lie in a joint sequence."""

    image: slice
    text: slice
    references: slice = dataclasses.field(default_factory=lambda: slice(0, 0))

    def of(self, stream: str) -> slice:
        if stream == "image":
            return self.image
        if stream == "text":
            return self.text
        if stream == "joint":
            return slice(None)
        raise ParameterError(f"stream must be 'image', 'text' or 'joint', got {stream!r}.")


def _put(full: torch.Tensor, where: slice, part: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """`full` (B, heads, tokens, ·) with its `where` tokens replaced by `part` (no copy when the rule returned
    its view unchanged)."""
    if part is view:
        return full
    if where == slice(None):
        return part
    out = full.clone()
    out[:, :, where] = part.to(out.dtype)
    return out


def _put2(full: torch.Tensor, where: slice, part: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """`full` (B, heads, Nq, Nk) with its [where, where] block replaced by `part`."""
    if part is view:
        return full
    if where == slice(None):
        return part
    out = full.clone()
    out[:, :, where, where] = part.to(out.dtype)
    return out


def apply_rules(rules, ctx, split: Split, q, k, v, attention: Callable, mask=None) -> torch.Tensor:
    """Attention over a joint sequence under `rules`: each rule's `qkv`, then — only when a rule needs the matrix —
    explicit logits (× ctx.scale, + the additive `mask`) through its `logits` and `probs`, else
    `attention(q, k, v)` (the layer's own kernel); then each rule's `merge` on the output. Every rule sees the
    tokens of its `stream`. q, k, v and the result: (B, heads, tokens, head_dim). `ctx.mask` holds `mask` for rules
    that build logits of their own."""
    ctx.mask = mask
    for rule in rules:
        where = split.of(rule.stream)
        views = (q[:, :, where], k[:, :, where], v[:, :, where])
        new = rule.qkv(ctx, *views)
        q, k, v = (_put(full, where, part, view) for full, part, view in zip((q, k, v), new, views))
    if any(rule.needs_logits for rule in rules):
        logits = (q @ k.transpose(-1, -2)) * ctx.scale
        if mask is not None:
            logits = logits + mask
        for rule in rules:
            where = split.of(rule.stream)
            block = logits[:, :, where, where]
            logits = _put2(logits, where, rule.logits(ctx, block), block)
        probs = logits.float().softmax(dim=-1).to(v.dtype)
        for rule in rules:
            where = split.of(rule.stream)
            block = probs[:, :, where, where]
            probs = _put2(probs, where, rule.probs(ctx, block), block)
        out = probs @ v
    else:
        out = attention(q, k, v)
    for rule in rules:
        where = split.of(rule.stream)
        view = out[:, :, where]
        out = _put(out, where, rule.merge(ctx, view), view)
    return out
