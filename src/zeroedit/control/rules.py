"""Generic rules: record and inject. Method-specific rules (TF-ICON's composite logits, MIP's
relevance merge) live with their method and subclass `Rule` the same way."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ..errors import ParameterError
from .core import AttnContext, FeatureContext, Rule

STORE_PLACEMENTS = (None, "cpu")


def check_store(store) -> str | None:
    """A method's `store` argument: None (the execution device) or "cpu" (pinned CPU memory)."""
    if store is not None and not (isinstance(store, str) and store == "cpu"):
        raise ParameterError(f"store must be None (recorded tensors stay on the device the model runs on) or 'cpu' "
                             f"(pinned CPU memory, copied back per step), got {store!r}.")
    return store


class Store(dict):
    """Where a method's recorded tensors live between their `Record` and their reads (`Inject`, `from_store`,
    method rules), keyed (layer, kind, step); also the activations autograd keeps for a gradient call
    (`saved_tensors`). `placement=None`: on the execution device, as recorded. `placement="cpu"`: in pinned CPU
    memory, copied there without blocking when recorded and back to `device` without blocking when read (on a
    CPU-only run both are the CPU and nothing moves). A slice of a larger tensor is stored as its own copy, so the
    store holds what `nbytes(kinds)` states for the recorded kinds ("feature", "q", "k", "v"). The one place where
    stores are placed: no method copies. `saved_bytes`: the saved activations of the last `saved_tensors` block."""

    def __init__(self, placement: str | None = None, device=None):
        super().__init__()
        self.placement, self.device = check_store(placement), torch.device(device or "cpu")
        self.offload = placement == "cpu" and self.device.type != "cpu"
        self.saved_bytes = 0

    def _host(self, tensor: torch.Tensor) -> torch.Tensor:
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor.detach(), non_blocking=True)

    def __setitem__(self, key, tensor):
        if self.offload:
            tensor = self._host(tensor)
        elif tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
            tensor = tensor.clone()  # a slice (one branch, the image tokens) would keep its whole batch alive
        super().__setitem__(key, tensor)

    def __getitem__(self, key):
        tensor = super().__getitem__(key)
        return tensor.to(self.device, non_blocking=True) if self.offload else tensor

    def nbytes(self, kinds=None) -> int:
        """Bytes held for the recorded kinds (all when None)."""
        return sum(t.numel() * t.element_size() for key, t in self.items() if kinds is None or key[1] in kinds)

    @contextlib.contextmanager
    def saved_tensors(self):
        """Autograd's saved tensors of the forward inside this block (pix2pix-zero's gradient call), until its
        backward: activations placed like the store (pinned CPU memory for "cpu"), and counted in `saved_bytes`
        (each storage once); weights (parameters and their views) kept as a reference to the parameter and
        rebuilt in the dtype and on the device the forward used, since diffusers' group offloading and layerwise
        casting swap a parameter's data after each forward."""
        self.saved_bytes, seen = 0, set()

        def pack(tensor):
            base = tensor if tensor._base is None else tensor._base
            if isinstance(base, torch.nn.Parameter):
                return _Weight(base, tensor)
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                self.saved_bytes += storage.nbytes()
            return (self._host(tensor), tensor.device) if self.offload else (tensor, None)

        def unpack(packed):
            if isinstance(packed, _Weight):
                return packed.tensor()
            tensor, device = packed
            return tensor if device is None else tensor.to(device, non_blocking=True)

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield self


class _Weight:
    """A saved weight (a parameter or a view of one) by reference: its layout, dtype and device at the forward."""

    def __init__(self, parameter: torch.nn.Parameter, tensor: torch.Tensor):
        self.parameter, self.dtype, self.device = parameter, tensor.dtype, tensor.device
        self.shape, self.stride = tensor.shape, tensor.stride()
        self.offset = tensor.storage_offset() - parameter.storage_offset()  # within the parameter

    def tensor(self) -> torch.Tensor:
        data = self.parameter.detach()
        if (data.dtype, data.device) != (self.dtype, self.device):  # offloaded or cast back to storage since
            data = data.to(self.device, self.dtype)
        return data.as_strided(self.shape, self.stride, data.storage_offset() + self.offset)


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
