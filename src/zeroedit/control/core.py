"""The one control mechanism: named branches in a batch, a step clock, and rules on named layers.

A method builds a `Controller`, adds rules (record, inject, edit logits, merge extra attention,
replace features), installs it for the duration of a call with `with controller.installed(unet):`,
and before every UNet call tells it which step it is and how the batch is laid out
(`controller.set_call(step, timestep, [("source", 1), ("uncond", 1), ("cond", 1)], latent_hw)`).

Installation points are diffusers' own: `unet.set_attn_processor` (each layer's `set_processor` on models
without it) for attention layers and
`register_forward_hook` for modules. Only layers that some rule names get a `ControlledAttnProcessor`;
every other layer keeps the processor it had (SDPA). Everything is restored on exit, also on error.

Under torch.compile (Backbone(compile=...)) the controlled processors and feature hooks run eagerly
(`eager_under_compile`): rule decisions read Python state (step, timestep, windows, stores), and traced they
would become guards that recompile the UNet at every step. Dynamo breaks the graph at each controlled layer
and compiles everything else; it guards only on the processor's and hook's type, so the new objects every
method call installs reuse the graphs compiled before.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..sessions import current


class Rule:
    """A rule acts on `layers` (attention layer names such as
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1", or module names for feature rules) during the
    steps in `steps` (None = every step; a set/range of step indices; or a callable(controller) -> bool).

    Attention rules override any of `qkv`, `logits`, `probs`, `merge`; a rule that overrides `logits` or
    `probs` sets `needs_logits = True`, and only then (layer and step) is the attention matrix built —
    everywhere else the layer runs SDPA. Feature rules (`target = "feature"`) override `feature`.

    Joint attention (SD3/FLUX transformers, control/joint.py): `stream` says which tokens the rule sees —
    "image" (default: the image-token part of q/k/v, of the logits/probabilities (image × image) and of the
    output), "text", or "joint" (the whole sequence in the layer's order). UNet layers ignore it.
    """

    target = "attention"
    needs_logits = False
    stream = "image"

    def __init__(self, layers: Iterable[str], steps=None):
        self.layers = list(layers)
        self.steps = steps

    def active(self, controller: "Controller") -> bool:
        if self.steps is None:
            return True
        if callable(self.steps):
            return bool(self.steps(controller))
        return controller.step in self.steps

    def qkv(self, ctx: "AttnContext", q, k, v):
        """q, k, v: (B, heads, tokens, head_dim). Return (possibly replaced) q, k, v."""
        return q, k, v

    def logits(self, ctx: "AttnContext", logits):
        """Pre-softmax scaled logits (B, heads, Nq, Nk). Return the edited logits."""
        return logits

    def probs(self, ctx: "AttnContext", probs):
        """Attention probabilities (B, heads, Nq, Nk), e.g. to record them. Return them."""
        return probs

    def merge(self, ctx: "AttnContext", out):
        """Attention output (B, heads, Nq, head_dim) before the output projection; add extra terms here."""
        return out

    def feature(self, ctx: "FeatureContext", output):
        """Output of a hooked module. Return the (possibly replaced) output."""
        return output


@dataclasses.dataclass
class FeatureContext:
    name: str
    controller: "Controller"

    def branch(self, name: str) -> slice:
        return self.controller.branch(name)


@dataclasses.dataclass
class AttnContext(FeatureContext):
    attn: Any  # diffusers Attention module
    is_cross: bool
    grid: tuple[int, int]  # (H, W) of the query tokens
    text_states: torch.Tensor | None  # encoder hidden states (text part), None for self-attention
    ip_states: Any  # IP-Adapter image tokens (list per adapter) or None
    original: Any  # the processor this layer had before installation
    ip_handled: bool = False  # a rule that adds the image-attention term itself sets this
    text_tokens: int = 0  # joint attention: number of text tokens in the layer's sequence
    split: Any = None  # joint attention: where the image and text tokens lie (streams.Split), for stream="joint" rules
    ip_query: Any = None  # joint attention with a FLUX IP-Adapter: the image queries its image attention uses
    ip_output: Any = None  # such a layer's image-attention term (B, N, dim), when a rule computes it (ip_handled)
    logit_scale: float | None = None  # the scale the layer's attention call uses, where the call names it
    mask: Any = None  # joint attention: the additive logit mask of the layer's call (padded text tokens), or None

    @property
    def scale(self) -> float:
        """The layer's logit scale: the one its attention call uses, else diffusers' Attention.scale, else
        head_dim^-0.5."""
        if self.logit_scale is not None:
            return self.logit_scale
        scale = getattr(self.attn, "scale", None)
        return scale if scale is not None else self.attn.head_dim ** -0.5


class Controller:
    """Holds the rules, the clock (step, timestep) and the batch layout; see module docstring."""

    def __init__(self):
        self.rules: list[Rule] = []
        self.step: int = 0
        self.timestep: Any = None
        self.layout: dict[str, slice] = {}
        self.latent_hw: tuple[int, int] | None = None
        self.reference_tokens: int = 0

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def set_call(self, step: int, timestep, branches: list[tuple[str, int]], latent_hw: tuple[int, int] | None = None,
                 reference_tokens: int = 0):
        """Announce the next UNet call: step index, timestep and the batch layout [(branch, size), ...].
        latent_hw: the latent's (h, w) for a UNet; the image-token grid for a transformer (FlowBackbone.token_grid).
        reference_tokens: reference-image tokens that follow the image tokens in the sequence (FLUX.2's references)."""
        self.step, self.timestep, self.reference_tokens = step, timestep, reference_tokens
        self.layout, start = {}, 0
        for name, size in branches:
            self.layout[name] = slice(start, start + size)
            start += size
        if latent_hw is not None:
            self.latent_hw = tuple(latent_hw)

    def branch(self, name: str) -> slice:
        if name not in self.layout:
            raise KeyError(f"branch {name!r} is not in this call's batch {list(self.layout)}")
        return self.layout[name]

    def has_branch(self, name: str) -> bool:
        return name in self.layout

    def grid(self, tokens: int) -> tuple[int, int]:
        """(H, W) of a layer with `tokens` query positions, from the latent size (ceil-halving per level,
        as the UNet's stride-2 downsamplers do), so non-square latents work."""
        if self.latent_hw is None:
            side = int(math.isqrt(tokens))
            return side, tokens // max(side, 1)
        h, w = self.latent_hw
        while h * w > tokens and h > 1:
            h, w = (h + 1) // 2, (w + 1) // 2
        if h * w != tokens:
            raise RuntimeError(f"internal: cannot place {tokens} tokens on latent {self.latent_hw}")
        return h, w

    def _rules(self, name: str, target: str) -> list[Rule]:
        return [r for r in self.rules if r.target == target and name in r.layers and r.active(self)]

    def apply_features(self, name: str, output):
        """Module `name`'s output after this controller's active feature rules, in order (the plain hook and
        the job-batch dispatcher both apply rules through this). A module that returns a tuple (diffusers'
        MM-DiT blocks return (text, image)): the rules see and replace its last element, the image tokens."""
        if isinstance(output, tuple):
            return output[:-1] + (self.apply_features(name, output[-1]),)
        ctx = FeatureContext(name, self)
        for rule in self._rules(name, "feature"):
            output = rule.feature(ctx, output)
        return output

    @contextlib.contextmanager
    def installed(self, unet):
        """Install processors and hooks for the rules' layers of `unet` (a UNet, or an SD3/FLUX transformer:
        its joint-attention layers get `ControlledJointAttnProcessor`); always restore on exit. Inside a job of
        a `zeroedit.jobs.JobSession` on this UNet, attach to the session instead (it runs this controller's
        rules on the job's own batch slice of the combined call)."""
        saved = attn_processors(unet)
        attn_layers = {name for r in self.rules if r.target == "attention" for name in r.layers}
        feature_layers = {name for r in self.rules if r.target == "feature" for name in r.layers}
        known = {key[: -len(".processor")] for key in saved}
        missing = sorted(attn_layers - known)
        if missing:
            raise ModelError(f"this UNet has no attention layer(s) {missing[:3]}: the method does not support this model.")
        modules = dict(unet.named_modules())
        missing = sorted(feature_layers - set(modules))
        if missing:
            raise ModelError(f"this UNet has no module(s) {missing[:3]}: the method does not support this model.")
        session = current(unet)
        if session is not None:  # a job of a JobSession: the session dispatches every job's rules on its slice
            member = session.attach(self, bool(attn_layers), sorted(feature_layers), modules)
            try:
                yield self
            finally:
                session.detach(member, self)
            return
        hooks = []
        try:
            processors = {key: (_controlled(self, key[: -len(".processor")], proc, unet)
                                if key[: -len(".processor")] in attn_layers else proc) for key, proc in saved.items()}
            if attn_layers:
                set_attn_processors(unet, processors)
            for name in sorted(feature_layers):
                hooks.append(modules[name].register_forward_hook(_FeatureHook(self, name)))
            yield self
        finally:
            for hook in hooks:
                hook.remove()
            if attn_layers:
                set_attn_processors(unet, saved)


def attn_processors(model) -> dict:
    """{"<layer>.processor": processor} of every attention layer, in forward order: diffusers' `attn_processors`
    (AttentionMixin), or the same collected from the modules for models without that mixin (Z-Image)."""
    if hasattr(model, "attn_processors"):
        return model.attn_processors
    return {f"{name}.processor": module.get_processor() for name, module in model.named_modules()
            if hasattr(module, "get_processor")}


def set_attn_processors(model, processors: dict) -> None:
    """Set every attention layer's processor from `processors` (as `attn_processors` returns them): diffusers'
    `set_attn_processor`, or each module's own `set_processor` for models without it."""
    if hasattr(model, "set_attn_processor"):
        model.set_attn_processor(processors)
        return
    modules = dict(model.named_modules())
    for key, processor in processors.items():
        modules[key[: -len(".processor")]].set_processor(processor)


# Controlled processors of other attention families: [(accepts(name, original, model), make(controller, name,
# original, model))], tried in order. control/seam.py adds the dispatcher seam (FLUX.1, FLUX.2, Qwen-Image,
# Z-Image), control/joint.py the SD3 / FLUX IP-Adapter mirror; every other layer gets ControlledAttnProcessor.
MIRRORS: list = []


def _controlled(controller: Controller, name: str, original, model=None):
    """The controlled processor for a layer of `model`: the first mirror that accepts it, else the UNet one."""
    for accepts, make in MIRRORS:
        if accepts(name, original, model):
            return make(controller, name, original, model)
    return ControlledAttnProcessor(controller, name, original)


def eager_under_compile(method=None, *, own_tensors: bool = False):
    """Run `method` eagerly when torch.compile traces its caller (a graph break: the rules see the real
    tensors and Python state, no guard on them); a plain call otherwise. `own_tensors`: between graphs, pass
    copies of the tensor arguments, since a graph's outputs may live in CUDA-graph memory that the next call
    overwrites (mode="reduce-overhead") and a rule may keep them (Record of a feature)."""
    if method is None:
        return functools.partial(eager_under_compile, own_tensors=own_tensors)

    def between_graphs(*args, **kwargs):
        if own_tensors:
            args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        return method(*args, **kwargs)
    eager = torch._dynamo.disable(between_graphs)

    @functools.wraps(method)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return eager(*args, **kwargs)
        return method(*args, **kwargs)
    return call


class _FeatureHook:
    def __init__(self, controller: Controller, name: str):
        self.controller, self.name = controller, name

    @eager_under_compile(own_tensors=True)
    def __call__(self, module, inputs, output):
        if not self.controller._rules(self.name, "feature"):
            return None  # keep the module's own output
        return self.controller.apply_features(self.name, output)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, tokens, heads·d) -> (B, heads, tokens, d)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def ip_adapter_term(ctx: AttnContext, q: torch.Tensor, image_states: torch.Tensor, index: int = 0) -> torch.Tensor:
    """Image attention of IP-Adapter number `index` for (B, tokens, dim) image states, scaled by its scale:
    s · Attn(Q, to_k_ip(c), to_v_ip(c)), returned as (B, heads, Nq, head_dim) (one softmax over the tokens)."""
    proc, heads = ctx.original, ctx.attn.heads
    key = _heads(proc.to_k_ip[index](image_states), heads)
    value = _heads(proc.to_v_ip[index](image_states), heads)
    return proc.scale[index] * F.scaled_dot_product_attention(q, key.to(q.dtype), value.to(q.dtype), scale=ctx.attn.scale)


class ControlledAttnProcessor:
    """Attention processor that lets the active rules of its layer see and change q/k/v, logits,
    probabilities and the output; computes SDPA when no active rule needs the explicit matrix.
    Mirrors diffusers' AttnProcessor2_0 / IPAdapterAttnProcessor2_0 otherwise."""

    def __init__(self, controller: Controller, name: str, original):
        self.controller, self.name, self.original = controller, name, original

    @eager_under_compile
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        rules = self.controller._rules(self.name, "attention")
        if not rules:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        ip_states = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, ip_states = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            if encoder_hidden_states is None:
                context = hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q = _heads(attn.to_q(hidden_states), attn.heads)
        k = _heads(attn.to_k(context), attn.heads)
        v = _heads(attn.to_v(context), attn.heads)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        grid = self.controller.grid(tokens) if input_ndim == 3 else (height, width)
        ctx = AttnContext(self.name, self.controller, attn, encoder_hidden_states is not None, grid,
                          encoder_hidden_states, ip_states, self.original)
        for rule in rules:
            q, k, v = rule.qkv(ctx, q, k, v)
        if any(rule.needs_logits for rule in rules):
            logits = (q @ k.transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                logits = logits + attention_mask
            for rule in rules:
                logits = rule.logits(ctx, logits)
            probs = logits.float().softmax(dim=-1).to(v.dtype)
            for rule in rules:
                probs = rule.probs(ctx, probs)
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=attn.scale)
        for rule in rules:
            out = rule.merge(ctx, out)
        if ip_states is not None and not ctx.ip_handled:
            for index, states in enumerate(ip_states):
                out = out + ip_adapter_term(ctx, q, states.reshape(states.shape[0], -1, states.shape[-1]), index)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1]).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
