"""Layer names by role, resolved from the UNet itself so SD 1.x/2.x and SDXL share method code."""
from __future__ import annotations


def attention_layers(unet, kind: str = "attn1", parts=("down", "mid", "up")) -> list[str]:
    """Names of the UNet's self- ("attn1") or cross- ("attn2") attention layers, in forward order."""
    prefixes = tuple({"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}[p] for p in parts)
    names = [key[: -len(".processor")] for key in unet.attn_processors]
    return [n for n in names if n.endswith("." + kind) and n.startswith(prefixes)]


def decoder_self_attention_layers(unet) -> list[str]:
    """Decoder (up_blocks) self-attention layers in forward order. On SD 1.x/2.x these are ldm's
    output_blocks 3–11 (index i here = output block i + 3 for i < 9)."""
    return attention_layers(unet, "attn1", parts=("up",))
