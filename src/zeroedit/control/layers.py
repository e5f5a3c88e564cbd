"""Layer names by role, resolved from the model itself so SD 1.x/2.x and SDXL share method code; for SD3/FLUX
transformers, joint-attention layers by block index and kind (double/joint, single)."""
from __future__ import annotations

from ..errors import ParameterError


def attention_layers(unet, kind: str = "attn1", parts=("down", "mid", "up")) -> list[str]:
    """Names of the UNet's self- ("attn1") or cross- ("attn2") attention layers, in forward order."""
    prefixes = tuple({"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}[p] for p in parts)
    names = [key[: -len(".processor")] for key in unet.attn_processors]
    return [n for n in names if n.endswith("." + kind) and n.startswith(prefixes)]


def decoder_self_attention_layers(unet) -> list[str]:
    """Decoder (up_blocks) self-attention layers in forward order. On SD 1.x/2.x these are ldm's
    output_blocks 3–11 (index i here = output block i + 3 for i < 9)."""
    return attention_layers(unet, "attn1", parts=("up",))


def _blocks(model, prefix: str, blocks) -> list[str]:
    names = [key[: -len(".processor")] for key in model.attn_processors]
    found = [n for n in names if n.startswith(prefix + ".") and n.endswith(".attn")]
    if blocks is None:
        return found
    count, names = len(found), []
    for i in blocks:
        index = i + count if i < 0 else i
        if not 0 <= index < count:
            raise ParameterError(f"block {i} does not exist: the model has {count} {prefix}; use 0…{count - 1}.")
        names.append(f"{prefix}.{index}.attn")
    return names


def joint_attention_layers(model, kind: str = "double", blocks=None) -> list[str]:
    """Joint-attention layer names of an SD3/FLUX transformer, in forward order. kind: "double" (FLUX's
    double-stream blocks; on SD3 the joint blocks, `transformer_blocks.i.attn`; "joint" is the same) or "single"
    (FLUX's single-stream blocks, `single_transformer_blocks.i.attn`). blocks: block indices (negative ones
    count from the end), or None for all."""
    if kind not in ("double", "joint", "single"):
        raise ParameterError(f"kind must be 'double', 'joint' or 'single', got {kind!r}.")
    prefix = "single_transformer_blocks" if kind == "single" else "transformer_blocks"
    return _blocks(model, prefix, blocks)


def double_block(i: int) -> str:
    """FLUX double-stream block i's attention (also SD3's joint block i)."""
    return f"transformer_blocks.{i}.attn"


joint_block = double_block  # SD3/SD3.5: "joint block i"


def single_block(i: int) -> str:
    """FLUX single-stream block i's attention."""
    return f"single_transformer_blocks.{i}.attn"
