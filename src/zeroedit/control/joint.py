"""Joint attention (MM-DiT) whose processor does not go through diffusers' attention dispatcher: the controlled
mirror of SD3's `JointAttnProcessor2_0` (it calls SDPA itself) and of FLUX's `FluxIPAdapterAttnProcessor` (the
double-stream layers an IP-Adapter replaces; MIP's merge computes their image-attention term). Every other FLUX
layer, and FLUX.2 / Qwen-Image / Z-Image, are controlled at the dispatcher seam (seam.py), with no mirror.

In joint attention image and text tokens attend together in one softmax. The layouts (diffusers 0.42):
- SD3 joint block (`transformer_blocks.i.attn`): q/k/v = [image, text] (image first); outputs split back,
  the text part projected by `to_add_out` unless the block is `context_pre_only` (SD3's last block).
- SD3.5 image-only block (`transformer_blocks.i.attn2`, encoder_hidden_states None): image tokens only.
- FLUX double-stream block with an IP-Adapter (`transformer_blocks.i.attn`): q/k/v = [text, image] (text first),
  RoPE on the concatenation; image out through `to_out`, text out through `to_add_out`, and the IP-Adapter's
  image-attention term s·Attn(image queries before RoPE, to_k_ip(c), to_v_ip(c)) returned beside them.

A rule sees the part of q/k/v (B, heads, tokens, head_dim), of the logits/probabilities (image queries × image
keys) and of the output that its `stream` names (streams.py). Everything else is computed as diffusers does;
with no active rule the original processor runs, and where no rule needs the matrix the attention is SDPA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

from ..errors import ModelError
from .core import MIRRORS, AttnContext, _heads, eager_under_compile
from .streams import Split, apply_rules

JOINT_PROCESSORS = (JointAttnProcessor2_0, FluxIPAdapterAttnProcessor)


def is_joint_processor(processor) -> bool:
    return type(processor) in JOINT_PROCESSORS


def check_joint_processor(name: str, processor):
    """Raise ModelError for an SD3 attention layer whose processor we cannot mirror."""
    if not is_joint_processor(processor):
        raise ModelError(f"attention layer {name!r} runs {type(processor).__name__}; zeroedit's joint-attention control "
                         "mirrors JointAttnProcessor2_0 (SD3) and FluxIPAdapterAttnProcessor (FLUX with an "
                         "IP-Adapter). Undo fused projections or custom processors (e.g. "
                         "pipe.transformer.unfuse_qkv_projections()) first.")


def _qkv(attn, hidden_states, projections, norms):
    """One stream's q, k, v (B, heads, tokens, head_dim), q and k through the layer's RMS norms when it has them."""
    q, k, v = (_heads(proj(hidden_states), attn.heads) for proj in projections)
    norm_q, norm_k = norms
    return (q if norm_q is None else norm_q(q)), (k if norm_k is None else norm_k(k)), v


class ControlledJointAttnProcessor:
    """Controlled processor of one mirrored joint-attention layer; see module docstring."""

    def __init__(self, controller, name: str, original, model=None):
        self.controller, self.name, self.original = controller, name, original
        self.ip = isinstance(original, FluxIPAdapterAttnProcessor)

    def _delegate(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, kwargs):
        if self.ip:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def _ip_output(self, ctx, ip_hidden_states) -> torch.Tensor:
        """FluxIPAdapterAttnProcessor's image-attention term: Σ_adapters scale · SDPA(image queries (before RoPE),
        to_k_ip(c), to_v_ip(c)), (B, N, dim), added by the block after its feed-forward (not through to_out)."""
        q, proc = ctx.ip_query, self.original
        out = q.new_zeros(q.shape[0], q.shape[2], q.shape[1] * q.shape[3])  # no image tokens: no term
        for states, scale, to_k, to_v in zip(ip_hidden_states, proc.scale, proc.to_k_ip, proc.to_v_ip):
            key, value = _heads(to_k(states).flatten(1, -2), q.shape[1]), _heads(to_v(states).flatten(1, -2), q.shape[1])
            term = F.scaled_dot_product_attention(q, key.to(q.dtype), value.to(q.dtype))
            out = out + scale * term.transpose(1, 2).flatten(2, 3)
        return out

    def _projections(self, attn, hidden_states, encoder_hidden_states):
        """q, k, v (B, heads, tokens, head_dim) of the joint sequence in the layer's order, and the Split."""
        q, k, v = _qkv(attn, hidden_states, (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k))
        n = hidden_states.shape[1]
        if encoder_hidden_states is None:  # SD3.5's image-only attn2
            return q, k, v, Split(slice(0, n), slice(0, 0))
        eq, ek, ev = _qkv(attn, encoder_hidden_states, (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
                          (attn.norm_added_q, attn.norm_added_k))
        m = encoder_hidden_states.shape[1]
        if self.ip:  # FLUX: text first
            q, k, v = torch.cat([eq, q], 2), torch.cat([ek, k], 2), torch.cat([ev, v], 2)
            return q, k, v, Split(slice(m, m + n), slice(0, m))
        q, k, v = torch.cat([q, eq], 2), torch.cat([k, ek], 2), torch.cat([v, ev], 2)  # SD3: image first
        return q, k, v, Split(slice(0, n), slice(n, n + m))

    def _output(self, attn, out, split: Split, encoder_hidden_states, ip_output=None):
        """(B, tokens, dim) attention output -> the layer's return value, as the original processor (FLUX
        IP-Adapter layers: (image, text, image-attention term))."""
        if encoder_hidden_states is None:
            return attn.to_out[1](attn.to_out[0](out))
        image, text = out[:, split.image], out[:, split.text]
        image = attn.to_out[1](attn.to_out[0](image.contiguous()))
        if self.ip or not attn.context_pre_only:
            text = attn.to_add_out(text.contiguous())
        return (image, text) if ip_output is None else (image, text, ip_output.to(image.dtype))

    @eager_under_compile
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 ip_hidden_states=None, ip_adapter_masks=None, **kwargs):
        if self.ip:  # FluxAttention passes only the keyword arguments this signature names
            kwargs.update(ip_hidden_states=ip_hidden_states, ip_adapter_masks=ip_adapter_masks)
        rules = self.controller._rules(self.name, "attention")
        if not rules:
            return self._delegate(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, kwargs)
        q, k, v, split = self._projections(attn, hidden_states, encoder_hidden_states)
        ip_query = q[:, :, split.image] if self.ip else None  # diffusers: the image queries before RoPE
        if image_rotary_emb is not None:
            q, k = apply_rotary_emb(q, image_rotary_emb), apply_rotary_emb(k, image_rotary_emb)
        grid = self.controller.grid(split.image.stop - split.image.start)
        ctx = AttnContext(self.name, self.controller, attn, False, grid, encoder_hidden_states,
                          ip_hidden_states if self.ip else None, self.original,
                          text_tokens=split.text.stop - split.text.start, split=split, ip_query=ip_query,
                          logit_scale=q.shape[-1] ** -0.5)

        def sdpa(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)

        out = apply_rules(rules, ctx, split, q, k, v, sdpa, attention_mask)
        out = out.transpose(1, 2).flatten(2, 3).to(q.dtype)
        ip_output = None
        if self.ip:
            ip_output = ctx.ip_output if ctx.ip_handled else self._ip_output(ctx, ip_hidden_states)
        return self._output(attn, out, split, encoder_hidden_states, ip_output)


def _accepts(name: str, processor, model=None) -> bool:
    """SD3's joint-attention processor and FLUX's IP-Adapter processor; another SD3 processor (fused projections,
    PAG, ...) is a ModelError, not silently the UNet mirror."""
    if is_joint_processor(processor):
        return True
    if "Joint" in type(processor).__name__:
        check_joint_processor(name, processor)
    return False


MIRRORS.append((_accepts, ControlledJointAttnProcessor))
