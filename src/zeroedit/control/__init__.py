"""control/: the one mechanism for attention and feature manipulation (see core.py; joint attention of
SD3/FLUX transformers: joint.py)."""
from . import joint  # noqa: F401 — registers SD3's and FLUX's controlled processors (core.MIRRORS)
from .core import AttnContext, Controller, ControlledAttnProcessor, FeatureContext, Rule, ip_adapter_term
from .layers import (attention_layers, decoder_self_attention_layers, double_block, joint_attention_layers, joint_block,
                     single_block)
from .rules import Inject, Record, Store, check_store, from_branch, from_store

__all__ = ["AttnContext", "Controller", "ControlledAttnProcessor", "FeatureContext", "Rule", "Inject", "Record", "Store",
           "check_store", "from_branch", "from_store", "ip_adapter_term", "attention_layers", "decoder_self_attention_layers",
           "joint_attention_layers", "double_block", "joint_block", "single_block"]
