"""The dispatcher seam: control of every transformer whose attention processors end in diffusers'
`dispatch_attention_fn` (FLUX.1, FLUX.2, Qwen-Image, Z-Image, and most transformers diffusers 0.42 ships),
with no copy of any processor.

Those processors project, normalise and rotate q, k, v, then call
`dispatch_attention_fn(query, key, value, attn_mask, ..., backend=self._attention_backend,
parallel_config=self._parallel_config)` with tensors laid out (batch, tokens, heads, head_dim). A controlled
layer runs its own processor's code with that one global name bound to the layer's seam: the processor's
`__call__` is re-made from its code object over a copy of its module's globals in which
`dispatch_attention_fn` is `DispatcherSeam.attend` (diffusers' modules, the registry of backends, other layers,
threads and pipelines are untouched). At the seam the active rules see the parts of q, k, v (after the
processor's norms and RoPE), of the logits / probabilities and of the output that their `stream` names, exactly
as on the mirrored processors (core.py, joint.py). Where no rule needs the attention matrix, the call goes on to
`dispatch_attention_fn` with the layer's own backend and parallel config (flash, sage, cuDNN, context parallel
stay in force); only the layers and steps whose rules read logits build the matrix.

The one thing that differs per family is where the image and text tokens lie in the dispatched sequence: a
`TokenLayout` per transformer class (`LAYOUTS`). A processor that calls the dispatcher more than once (FLUX's
IP-Adapter processor: the joint attention, then one image attention per adapter) has rules act on its first
call only.
"""
from __future__ import annotations

import inspect
import types
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..errors import ModelError
from .core import MIRRORS, AttnContext, eager_under_compile
from .streams import Split, apply_rules

SEAM_NAME = "dispatch_attention_fn"


# ----------------------------------------------------------------------------------------- token layouts
class TextFirst:
    """[text, image, references] in every layer (FLUX.1 and FLUX.2 double- and single-stream blocks,
    Qwen-Image): the image tokens are the H·W before the reference tokens at the end, text the rest in front."""

    def split(self, name: str, total: int, image: int, references: int = 0) -> Split:
        start = total - image - references
        if start < 0:
            raise RuntimeError(f"internal: {image} image + {references} reference tokens do not fit {total} tokens")
        return Split(slice(start, start + image), slice(0, start), slice(start + image, total))


class ImageFirst:
    """Z-Image's single-stream DiT: its main layers attend over [image, text], each part padded to a multiple of
    `multiple` tokens (ZImageTransformer2DModel's SEQ_MULTI_OF); `noise_refiner` layers see the image tokens only,
    `context_refiner` layers the text tokens only."""

    def __init__(self, multiple: int = 32, image_only: str = "noise_refiner.", text_only: str = "context_refiner."):
        self.multiple, self.image_only, self.text_only = multiple, image_only, text_only

    def split(self, name: str, total: int, image: int, references: int = 0) -> Split:
        if name.startswith(self.text_only):
            return Split(slice(0, 0), slice(0, total))
        padded = -(-image // self.multiple) * self.multiple
        if padded > total:
            raise RuntimeError(f"internal: {image} image tokens do not fit {total} tokens")
        if name.startswith(self.image_only):
            return Split(slice(0, image), slice(0, 0))
        return Split(slice(0, image), slice(padded, total))


# Token layouts by transformer class name; a new family whose processors use the dispatcher adds one line here.
LAYOUTS: dict[str, Any] = {
    "FluxTransformer2DModel": TextFirst(),
    "ChromaTransformer2DModel": TextFirst(),  # FLUX.1's blocks and processors (FluxAttnProcessor)
    "Flux2Transformer2DModel": TextFirst(),
    "QwenImageTransformer2DModel": TextFirst(),
    "ZImageTransformer2DModel": ImageFirst(),
}


def calls_the_dispatcher(processor) -> bool:
    """True when the processor's own `__call__` reaches attention through the global `dispatch_attention_fn`."""
    call = type(processor).__dict__.get("__call__")
    return isinstance(call, types.FunctionType) and SEAM_NAME in call.__code__.co_names


def rebind(function: types.FunctionType, seam) -> types.FunctionType:
    """`function` made again from its code over a copy of its module's globals in which `dispatch_attention_fn`
    is `seam` (closures, defaults and keyword defaults kept). The original function and module are untouched."""
    namespace = dict(function.__globals__)
    namespace[SEAM_NAME] = seam
    bound = types.FunctionType(function.__code__, namespace, function.__name__, function.__defaults__,
                               function.__closure__)
    bound.__kwdefaults__ = function.__kwdefaults__
    return bound


# ----------------------------------------------------------------------------------------- the seam
class DispatcherSeam:
    """Controlled processor of one layer whose processor calls `dispatch_attention_fn` (module docstring)."""

    def __init__(self, controller, name: str, original, layout):
        self.controller, self.name, self.original, self.layout = controller, name, original, layout
        self._run = rebind(type(original).__dict__["__call__"], self.attend)
        self._rules, self._attn, self._calls = (), None, 0

    @eager_under_compile
    def __call__(self, attn, *args, **kwargs):
        rules = self.controller._rules(self.name, "attention")
        if not rules:
            return self.original(attn, *args, **kwargs)
        self._rules, self._attn, self._calls = rules, attn, 0
        try:
            return self._run(self.original, attn, *args, **kwargs)
        finally:
            self._rules, self._attn = (), None

    def _context(self, total: int, scale: float) -> tuple[AttnContext, Split]:
        controller = self.controller
        if controller.latent_hw is None:
            raise RuntimeError("internal: a transformer layer needs set_call(..., latent_hw=token grid)")
        h, w = controller.latent_hw
        split = self.layout.split(self.name, total, h * w, controller.reference_tokens)
        grid = (h, w) if split.image.stop > split.image.start else (0, 0)
        ctx = AttnContext(self.name, controller, self._attn, False, grid, None, None, self.original,
                          text_tokens=split.text.stop - split.text.start, split=split, logit_scale=scale)
        return ctx, split

    def attend(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False, attention_kwargs=None, *, backend=None, parallel_config=None):
        """`dispatch_attention_fn`'s signature; q, k, v (B, tokens, heads, head_dim). The rules act on the layer's
        first call; the attention goes to the layer's backend unless a rule needs the matrix."""
        def dispatch(q, k, v):
            return dispatch_attention_fn(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, attention_kwargs,
                                         backend=backend, parallel_config=parallel_config)

        self._calls += 1
        if self._calls > 1 or not self._rules:
            return dispatch(query, key, value)
        if dropout_p or enable_gqa:
            raise ModelError(f"attention layer {self.name!r}: zeroedit's rules need plain attention (no dropout, no "
                             "grouped-query heads).")
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, heads, tokens, head_dim)
        ctx, split = self._context(q.shape[2], q.shape[-1] ** -0.5 if scale is None else scale)

        def attention(q, k, v):
            return dispatch(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

        out = apply_rules(self._rules, ctx, split, q, k, v, attention, _mask(attn_mask, is_causal, q))
        return out.transpose(1, 2)


def _mask(attn_mask, is_causal: bool, q: torch.Tensor):
    """The additive logit mask of an explicit attention (None, a boolean "attend" mask, or a float mask)."""
    tokens = q.shape[2]
    if is_causal:
        causal = torch.ones(tokens, tokens, dtype=torch.bool, device=q.device).tril()
        attn_mask = causal if attn_mask is None else attn_mask & causal
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    return torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, float("-inf"))


def _accepts(name: str, processor, model=None) -> bool:
    """Layers of the transformers in LAYOUTS whose processor calls the dispatcher; another processor of those
    families (fused or custom) is a ModelError naming what to undo."""
    family = type(model).__name__ if model is not None else None
    if family not in LAYOUTS or type(processor).__name__ in MIRRORED_ELSEWHERE:
        return False
    if calls_the_dispatcher(processor):
        return True
    raise ModelError(f"attention layer {name!r} runs {type(processor).__name__}, which does not call diffusers' "
                     "dispatch_attention_fn; zeroedit's control acts at that call. Restore the model's default "
                     "processors (e.g. pipe.transformer.set_default_attn_processor() or unfuse_qkv_projections()).")


_SEAM_TYPES: dict = {}


def _seam_type(processor_type) -> type:
    """DispatcherSeam with the signature of `processor_type.__call__`: diffusers' attention modules pass a processor
    only the keyword arguments its signature names (e.g. Qwen-Image's encoder_hidden_states_mask)."""
    if processor_type not in _SEAM_TYPES:
        def __call__(self, *args, **kwargs):
            return DispatcherSeam.__call__(self, *args, **kwargs)
        __call__.__signature__ = inspect.signature(processor_type.__dict__["__call__"])
        _SEAM_TYPES[processor_type] = type(f"Seam{processor_type.__name__}", (DispatcherSeam,), {"__call__": __call__})
    return _SEAM_TYPES[processor_type]


def _make(controller, name: str, original, model=None):
    return _seam_type(type(original))(controller, name, original, LAYOUTS[type(model).__name__])


MIRRORED_ELSEWHERE = {"FluxIPAdapterAttnProcessor"}  # control/joint.py mirrors it (its image attention is MIP's term)
MIRRORS.insert(0, (_accepts, _make))
