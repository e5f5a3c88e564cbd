"""Offline random-weight tiny FLUX.2 pipelines for tests: `load("tiny-flux2")`.

Built in-process, deterministically from a seed, never touching the network; FLUX.2's real layouts, tiny widths:
- transformer: Flux2Transformer2DModel with 2 double- and 2 single-stream blocks, 4 heads × 8, RoPE axes
  (2, 2, 2, 2) over the 4 position axes (T, H, W, L), patch size 1 on 32 input channels (= 4 × 8 patchified VAE
  channels, as 128 = 4 × 32 on the real models);
- VAE: AutoencoderKLFlux2 (×8, 4 blocks) with 8 latent channels, its 2×2 patchify and the BatchNorm
  normalisation; the running mean / variance are drawn from the seed (not 0 / 1), so the normalisation is tested;
- variant "klein" (the default, FLUX.2 [klein] base: true CFG): Flux2KleinPipeline with a Qwen3ForCausalLM of
  28 layers (the pipeline stacks hidden states 9, 18, 27: 3 × 16 = joint_attention_dim 48), hidden 16;
  "klein-distilled": the same with `is_distilled=True` (no CFG);
  "dev" (FLUX.2 [dev]): Flux2Pipeline with the guidance embedding, a Mistral3ForConditionalGeneration of 31
  text layers (the pipeline stacks hidden states 10, 20, 30) with a tiny Pixtral vision tower, and a
  tokenizer with a Mistral-style chat template in place of its PixtralProcessor (which needs torchvision);
- tokenizers written here: byte-level BPE without merges (one token per byte, as tiny.py's CLIP one) with the
  chat markers as special tokens; model_max_length 64 (prompts are 64 tokens instead of 512; dev 256, for its
  180-token system message). klein: Qwen's
  `<|im_start|>user … <|im_end|>` template with the empty `<think>` block that `enable_thinking=False` adds;
  dev: `<s>[SYSTEM_PROMPT]…[/SYSTEM_PROMPT][INST]…[/INST]`, as Mistral Small 3.x.
- scheduler: FlowMatchEulerDiscreteScheduler with dynamic shifting (the pipelines pass mu =
  compute_empirical_mu(image tokens, steps)).
Default image size: 128 px (8×8 latent after patchify, 64 image tokens).

`flux2_transformer_config(real=True, variant=...)` gives the published transformer configs of FLUX.2 [dev] and
[klein] 4B / 9B (for random-weight GPU timings; benchmarks/flow_gpu.py).
"""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline,
                       Flux2Transformer2DModel)

from .tiny import QWEN3_SPECIALS, TINY_SIZE, byte_vocab, tiny_qwen3_tokenizer
from .tiny_flow import FLUX_DEV_SCHEDULER

TEXT_LENGTH = 64
DEV_TEXT_LENGTH = 256
TEXT_WIDTH = 16  # the tiny text encoders' hidden size; the transformer reads 3 stacked layers: 48
VARIANTS = ("klein", "klein-distilled", "dev")
MISTRAL_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]",
                    "[IMG_BREAK]", "[IMG_END]")
MISTRAL_TEMPLATE = (  # Mistral Small 3.x's chat template, reduced to text blocks (what Flux2Pipeline sends)
    "{{- bos_token }}{%- for message in messages %}"
    "{%- set text = message['content'] if message['content'] is string else "
    "message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{%- if message['role'] == 'system' %}{{ '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{ '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{ text + eos_token }}{%- endif %}{%- endfor %}")

# Published transformer configs (each model's transformer/config.json; the values differing from diffusers'
# Flux2Transformer2DModel defaults, which are FLUX.2 [dev]'s).
REAL_CONFIGS = {
    "dev": dict(num_layers=8, num_single_layers=48, num_attention_heads=48, joint_attention_dim=15360,
                guidance_embeds=True),
    "klein-4b": dict(num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680,
                     guidance_embeds=False),
    "klein-9b": dict(num_layers=8, num_single_layers=24, num_attention_heads=32, joint_attention_dim=12288,
                     guidance_embeds=False),
}


def flux2_transformer_config(real: bool = True, variant: str = "klein-4b") -> dict:
    """Flux2Transformer2DModel arguments: real=True the published config of FLUX.2 `variant` ("dev", "klein-4b",
    "klein-9b": 128 input channels, 128-wide heads, RoPE axes (32, 32, 32, 32), θ 2000, MLP ratio 3); real=False
    the tiny model's (klein layout, or dev's guidance embedding for variant "dev")."""
    if real:
        return dict(patch_size=1, in_channels=128, attention_head_dim=128, timestep_guidance_channels=256,
                    mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, **REAL_CONFIGS[variant])
    return dict(patch_size=1, in_channels=32, num_layers=2, num_single_layers=2, attention_head_dim=8,
                num_attention_heads=4, joint_attention_dim=3 * TEXT_WIDTH, timestep_guidance_channels=32,
                mlp_ratio=3.0, axes_dims_rope=(2, 2, 2, 2), rope_theta=2000, guidance_embeds=variant == "dev")



def tiny_mistral_tokenizer(max_length: int = DEV_TEXT_LENGTH):
    """A byte-level BPE tokenizer (no merges) with Mistral's chat markers and a reduced chat template, in place of
    FLUX.2 [dev]'s PixtralProcessor (which needs torchvision): Flux2Pipeline calls only its `apply_chat_template`,
    which a tokenizer has with the same arguments. model_max_length 256: the system message alone is 180 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.BPE(vocab=byte_vocab(MISTRAL_SPECIALS), merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=list(MISTRAL_SPECIALS[4:]),
                                   model_max_length=max_length, chat_template=MISTRAL_TEMPLATE)


def _vae(seed: int) -> AutoencoderKLFlux2:
    vae = AutoencoderKLFlux2(block_out_channels=(16, 16, 32, 32), latent_channels=8, layers_per_block=1,
                             norm_num_groups=8, sample_size=TINY_SIZE)
    generator = torch.Generator().manual_seed(seed + 1)
    vae.bn.running_mean.copy_(0.2 * torch.randn(vae.bn.running_mean.shape, generator=generator))
    vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.running_var.shape, generator=generator))
    return vae


def _qwen3(width: int = TEXT_WIDTH, head_dim: int = 8):
    """A Qwen3ForCausalLM of 28 layers (the pipeline reads hidden states 9, 18, 27), 2 heads, `width` wide."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    config = Qwen3Config(vocab_size=256 + len(QWEN3_SPECIALS), hidden_size=width, intermediate_size=32,
                         num_hidden_layers=28, num_attention_heads=2, num_key_value_heads=1, head_dim=head_dim,
                         max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=256)
    return Qwen3ForCausalLM(config)


def _mistral3(width: int = TEXT_WIDTH, head_dim: int = 8):
    """A Mistral3ForConditionalGeneration of 31 text layers (the pipeline reads hidden states 10, 20, 30), 2 heads,
    `width` wide, with a one-layer Pixtral vision tower."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration
    vision = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, head_dim=8, patch_size=16, image_size=64)
    text = dict(model_type="mistral", vocab_size=256 + len(MISTRAL_SPECIALS), hidden_size=width,
                intermediate_size=32, num_hidden_layers=31, num_attention_heads=2, num_key_value_heads=1,
                head_dim=head_dim, max_position_embeddings=1024)
    config = Mistral3Config(vision_config=vision, text_config=text, spatial_merge_size=2,
                            image_token_index=256 + MISTRAL_SPECIALS.index("[IMG]"))
    return Mistral3ForConditionalGeneration(config)


def build_tiny_flux2(seed: int = 0, variant: str = "klein"):
    """Random-weight tiny FLUX.2 pipeline (see module docstring): variant "klein", "klein-distilled" or "dev"."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(**flux2_transformer_config(real=False, variant=variant))
        vae = _vae(seed)
        text_encoder = (_mistral3() if variant == "dev" else _qwen3()).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    if variant == "dev":
        pipe = Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tiny_mistral_tokenizer(),
                             transformer=transformer)
    else:
        pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tiny_qwen3_tokenizer(TEXT_LENGTH),
                                  transformer=transformer, is_distilled=variant == "klein-distilled")
    pipe.set_progress_bar_config(disable=True)
    return pipe
