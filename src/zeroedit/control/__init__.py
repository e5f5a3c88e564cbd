"""control/: the one mechanism for attention and feature manipulation (see core.py)."""
from .core import AttnContext, Controller, ControlledAttnProcessor, FeatureContext, Rule, ip_adapter_term
from .layers import attention_layers, decoder_self_attention_layers
from .rules import Inject, Record, from_branch, from_store

__all__ = ["AttnContext", "Controller", "ControlledAttnProcessor", "FeatureContext", "Rule", "Inject", "Record",
           "from_branch", "from_store", "ip_adapter_term", "attention_layers", "decoder_self_attention_layers"]
