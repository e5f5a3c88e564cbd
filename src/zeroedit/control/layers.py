"""Layer names by role, resolved from the model itself so SD 1.x/2.x and SDXL share method code; for SD3/FLUX
transformers, attention layers by block index and kind (double/joint, single), per family (`BLOCKS`)."""
from __future__ import annotations

from ..errors import ParameterError
from .core import attn_processors


def attention_layers(unet, kind: str = "attn1", parts=("down", "mid", "up")) -> list[str]:
    """Names of the UNet's self- ("attn1") or cross- ("attn2") attention layers, in forward order."""
    prefixes = tuple({"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}[p] for p in parts)
    names = [key[: -len(".processor")] for key in unet.attn_processors]
    return [n for n in names if n.endswith("." + kind) and n.startswith(prefixes)]


def decoder_self_attention_layers(unet) -> list[str]:
    """Decoder (up_blocks) self-attention layers in forward order. On SD 1.x/2.x these are ldm's
    output_blocks 3–11 (index i here = output block i + 3 for i < 9)."""
    return attention_layers(unet, "attn1", parts=("up",))


# The attention layers of each transformer family's blocks: kind -> (list of blocks, attention module in a block).
# "double": two-stream blocks (separate weights for image and text tokens; SD3's joint blocks), "single": one-stream.
BLOCKS = {
    "SD3Transformer2DModel": {"double": ("transformer_blocks", "attn")},
    "FluxTransformer2DModel": {"double": ("transformer_blocks", "attn"), "single": ("single_transformer_blocks", "attn")},
    "ChromaTransformer2DModel": {"double": ("transformer_blocks", "attn"), "single": ("single_transformer_blocks", "attn")},
    "Flux2Transformer2DModel": {"double": ("transformer_blocks", "attn"), "single": ("single_transformer_blocks", "attn")},
    "QwenImageTransformer2DModel": {"double": ("transformer_blocks", "attn")},
    "ZImageTransformer2DModel": {"single": ("layers", "attention")},
}
_FLUX_NAMES = BLOCKS["FluxTransformer2DModel"]  # any other transformer: FLUX's names


def joint_attention_layers(model, kind: str = "double", blocks=None) -> list[str]:
    """Attention layer names of a flow transformer's blocks, in forward order. kind: "double" (two-stream blocks:
    FLUX.1/FLUX.2 double-stream, SD3's joint blocks `transformer_blocks.i.attn` ("joint" is the same), Qwen-Image's
    blocks) or "single" (one-stream blocks: FLUX's `single_transformer_blocks.i.attn`, Z-Image's
    `layers.i.attention`); a family without blocks of that kind gives []. blocks: block indices (negative ones count
    from the end), or None for all."""
    if kind not in ("double", "joint", "single"):
        raise ParameterError(f"kind must be 'double', 'joint' or 'single', got {kind!r}.")
    names = BLOCKS.get(type(model).__name__, _FLUX_NAMES).get("single" if kind == "single" else "double")
    if names is None:
        return [] if blocks is None else _blocks(model, "", "", blocks, kind)
    return _blocks(model, *names, blocks, kind)


def _blocks(model, prefix: str, module: str, blocks, kind: str) -> list[str]:
    names = [key[: -len(".processor")] for key in attn_processors(model)]
    found = [n for n in names if prefix and n.startswith(prefix + ".") and n.endswith("." + module)
             and n.count(".") == 2]
    if blocks is None:
        return found
    count, chosen = len(found), []
    for i in blocks:
        index = i + count if i < 0 else i
        if not 0 <= index < count:
            raise ParameterError(f"block {i} does not exist: the model has {count} {kind} blocks; use 0…{count - 1}."
                                 if count else f"this model has no {kind} blocks.")
        chosen.append(found[index])
    return chosen


def double_block(i: int) -> str:
    """FLUX double-stream block i's attention (also SD3's joint block i)."""
    return f"transformer_blocks.{i}.attn"


joint_block = double_block  # SD3/SD3.5: "joint block i"


def single_block(i: int) -> str:
    """FLUX single-stream block i's attention."""
    return f"single_transformer_blocks.{i}.attn"
