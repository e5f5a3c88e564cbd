"""Generic rules: record and inject. Method-specific rules (TF-ICON's composite logits, MIP's
relevance merge) live with their method and subclass `Rule` the same way."""
from __future__ import annotations

from typing import Callable

import torch

from .core import AttnContext, FeatureContext, Rule


def _key(ctx: FeatureContext, kind: str):
    return (ctx.name, kind, ctx.controller.step)


class Record(Rule):
    """Store what a layer computes for one branch (or the whole batch, `branch=None`).

    what: "q", "k", "v", "probs", "logits" (attention) or "feature" (module output, set target="feature").
    stream: on joint-attention layers, which tokens ("image", "text", "joint"; see Rule).
    The store maps (layer, what, step) -> tensor; `dtype` casts (e.g. the model's dtype), `detach=False`
    keeps the graph (pix2pix-zero's cross-attention loss)."""

    def __init__(self, layers, what=("q", "k"), branch: str | None = None, steps=None, store: dict | None = None,
                 dtype: torch.dtype | None = None, detach: bool = True, target: str = "attention",
                 stream: str = "image"):
        super().__init__(layers, steps)
        self.stream = stream
        self.what = (what,) if isinstance(what, str) else tuple(what)
        self.branch, self.dtype, self.detach, self.target = branch, dtype, detach, target
        self.store = {} if store is None else store
        self.needs_logits = bool({"probs", "logits"} & set(self.what))

    def _keep(self, ctx, kind, tensor):
        part = tensor if self.branch is None else tensor[ctx.branch(self.branch)]
        part = part.detach() if self.detach else part
        self.store[_key(ctx, kind)] = part if self.dtype is None else part.to(self.dtype)

    def qkv(self, ctx, q, k, v):
        for kind, tensor in (("q", q), ("k", k), ("v", v)):
            if kind in self.what:
                self._keep(ctx, kind, tensor)
        return q, k, v

    def logits(self, ctx, logits):
        if "logits" in self.what:
            self._keep(ctx, "logits", logits)
        return logits

    def probs(self, ctx, probs):
        if "probs" in self.what:
            self._keep(ctx, "probs", probs)
        return probs

    def feature(self, ctx, output):
        self._keep(ctx, "feature", output)
        return output


Source = Callable[[FeatureContext, str], torch.Tensor]


def from_branch(name: str) -> Source:
    """Injection source: the same layer's tensor of another branch in the same batch."""
    def source(ctx, kind, tensor):
        return tensor[ctx.branch(name)]
    return source


def from_store(store: dict, step_of: Callable[[int], int] | None = None) -> Source:
    """Injection source: a tensor recorded earlier by `Record` (e.g. during inversion). `step_of` maps the
    current step to the recorded step (identity by default)."""
    def source(ctx, kind, tensor):
        step = ctx.controller.step if step_of is None else step_of(ctx.controller.step)
        return store[(ctx.name, kind, step)]
    return source


class Inject(Rule):
    """Replace the `what` tensors ("q", "k", "v" or "feature") of the `targets` branches by the source's.
    A source of batch 1 is broadcast over every item of each target branch; a source that returns None leaves
    the call unchanged. stream: as Record."""

    def __init__(self, layers, what=("q", "k"), source: Source | None = None, targets=("cond",), steps=None,
                 target: str = "attention", stream: str = "image"):
        super().__init__(layers, steps)
        self.stream = stream
        self.what = (what,) if isinstance(what, str) else tuple(what)
        self.source, self.targets, self.target = source, tuple(targets), target

    def _replace(self, ctx, kind, tensor):
        if kind not in self.what:
            return tensor
        value = self.source(ctx, kind, tensor)
        if value is None:  # the source has nothing for this call
            return tensor
        out = tensor.clone()
        for name in self.targets:
            if ctx.controller.has_branch(name):
                part = out[ctx.branch(name)]
                out[ctx.branch(name)] = value.to(tensor.dtype).expand_as(part) if value.shape[0] == 1 else value.to(tensor.dtype)
        return out

    def qkv(self, ctx: AttnContext, q, k, v):
        return self._replace(ctx, "q", q), self._replace(ctx, "k", k), self._replace(ctx, "v", v)

    def feature(self, ctx, output):
        return self._replace(ctx, "feature", output)
