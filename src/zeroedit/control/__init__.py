"""control/: the one mechanism for attention and feature manipulation (see core.py). Transformers: the
dispatcher seam (seam.py: FLUX.1, FLUX.2, Qwen-Image, Z-Image) and the SD3 / FLUX IP-Adapter mirror (joint.py),
both through streams.py."""
from . import seam  # noqa: F401 — registers the dispatcher seam (core.MIRRORS), tried first
from . import joint  # noqa: F401 — registers SD3's and FLUX IP-Adapter's mirrored processors
from .core import (AttnContext, Controller, ControlledAttnProcessor, FeatureContext, Rule, attn_processors,
                   ip_adapter_term)
from .layers import (attention_layers, decoder_self_attention_layers, double_block, joint_attention_layers, joint_block,
                     single_block)
from .rules import Inject, Record, Store, check_store, from_branch, from_store

__all__ = ["AttnContext", "Controller", "ControlledAttnProcessor", "FeatureContext", "Rule", "Inject", "Record", "Store",
           "check_store", "from_branch", "from_store", "ip_adapter_term", "attn_processors", "attention_layers",
           "decoder_self_attention_layers",
           "joint_attention_layers", "double_block", "joint_block", "single_block"]
