"""Offline random-weight tiny Qwen-Image pipelines for tests: `load("tiny-qwen-image")`, and the Edit-Plus layout
(`build_tiny_qwen_image(seed, edit_plus=True)`: QwenImageEditPlusPipeline, several input images).

Built in-process, deterministically from a seed, never touching the network; real layouts, tiny widths:
- transformer: QwenImageTransformer2DModel with 2 double-stream (MM-DiT) blocks, 4 heads × 8, RoPE axes (2, 2, 4),
  16 latent channels packed 2×2 (in_channels 64), text width 64;
- VAE: AutoencoderKLQwenImage (the Wan-style causal 3D VAE: a frame axis, ×8 spatial, 16 channels, RMS norms) with
  base width 16 and the real per-channel latents_mean / latents_std (diffusers' defaults = Qwen/Qwen-Image's);
- text encoder: Qwen2_5_VLForConditionalGeneration from a tiny config (2 text layers of width 64, mRoPE sections
  (2, 3, 3); a 2-block vision tower of width 32 with Qwen2.5-VL's patch 14, temporal patch 2 and 2×2 merge);
- tokenizer: a Qwen2 byte-level BPE whose vocabulary is written here: the 256 byte symbols, the merges that make
  each word of the pipelines' prompt templates one token (so their system prefixes are exactly the 34 / 64 tokens
  the pipelines drop, as with the real tokenizer), and the chat tokens the templates use (<|im_start|>,
  <|im_end|>, <|vision_start|>, <|image_pad|>, <|vision_end|>, ...). The pipelines format their templates
  themselves (no Jinja chat template is applied);
- Edit-Plus: a Qwen2VLProcessor of that tokenizer and a Qwen2VL image processor (no video processor);
- scheduler: Qwen/Qwen-Image's scheduler config (dynamic shift, mu from the image-token count, shift_terminal).
Default image size: 128 px (`pipe.default_sample_size` 16 latent rows; 8×8 = 64 image tokens); set on the pipeline
object, so a saved and reloaded tiny model defaults to the pipelines' 1024 px.
`qwen_image_transformer_config(real=True)`: the 20 B transformer's published config, for GPU benchmarks.
"""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline,
                       QwenImagePipeline, QwenImageTransformer2DModel)
from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer,
                          Qwen2VLImageProcessorPil, Qwen2VLProcessor)

from .tiny import TINY_SIZE, _byte_symbols

TEXT_WIDTH = 64
CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
# Qwen/Qwen-Image scheduler/scheduler_config.json
QWEN_IMAGE_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
                            shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)


def qwen_image_transformer_config(real: bool = False) -> dict:
    """QwenImageTransformer2DModel arguments: the tiny model's, or (real=True) Qwen/Qwen-Image's published
    transformer/config.json (60 double-stream blocks, 24 heads × 128, Qwen2.5-VL-7B's text width 3584, ~20 B
    parameters; Qwen-Image-Edit-2509 has the same, Edit-2511 adds zero_cond_t=True)."""
    if real:
        return dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                    axes_dims_rope=(16, 56, 56))
    return dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=8,
                num_attention_heads=4, joint_attention_dim=TEXT_WIDTH, axes_dims_rope=(2, 2, 4))


def _templates() -> list[str]:
    """QwenImagePipeline's and QwenImageEditPlusPipeline's prompt templates (string constants of their __init__)."""
    consts = QwenImagePipeline.__init__.__code__.co_consts + QwenImageEditPlusPipeline.__init__.__code__.co_consts
    return [c for c in consts if isinstance(c, str) and c.startswith("<|im_start|>system")]


def _template_words(tokenizer: Qwen2Tokenizer) -> list[str]:
    """The multi-symbol pre-tokens of the templates and of Edit-Plus's "Picture k: " image labels, the space-led
    ones ("Ġ...") first."""
    words = set()
    for text in _templates() + ["Picture 1: "]:
        for chunk in text.replace("<|im_start|>", "{}").replace("<|im_end|>", "{}").split("{}"):
            words |= {w for w, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(chunk) if len(w) > 1}
    return sorted(words, key=lambda w: (not w.startswith("Ġ"), w))


def tiny_qwen_tokenizer() -> Qwen2Tokenizer:
    """A Qwen2 byte-level BPE tokenizer with a locally written vocabulary; see module docstring. Each template word
    is built by a chain of merges (prefix + next symbol), the space-led words' chains ranked first so that no other
    merge can split them."""
    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    merges = []
    for word in _template_words(Qwen2Tokenizer(vocab=dict(vocab), merges=[])):
        for end in range(2, len(word) + 1):
            pair = (word[:end - 1], word[end - 1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(word[:end], len(vocab))
    for token in CHAT_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": CHAT_TOKENS[1:]})
    return tokenizer


def _text_encoder(tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in CHAT_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3]),
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TEXT_WIDTH,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    return Qwen2_5_VLForConditionalGeneration(config).eval()


class _ImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without a video processor: transformers checks every sub-processor's class, and without
    torchvision it cannot look up the video processor's base class even for None; that one check is skipped."""

    def check_argument_for_proper_class(self, argument_name, argument):
        return None if argument is None else super().check_argument_for_proper_class(argument_name, argument)


def build_tiny_qwen_image(seed: int = 0, edit_plus: bool = False, zero_cond_t: bool = False):
    """Random-weight tiny Qwen-Image pipeline (QwenImagePipeline; QwenImageEditPlusPipeline with edit_plus=True,
    zero_cond_t=True giving Edit-2511's layout); see module docstring."""
    tokenizer = tiny_qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(**qwen_image_transformer_config(), zero_cond_t=zero_cond_t)
        vae = AutoencoderKLQwenImage(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                     temperal_downsample=[False, True, True])
        text_encoder = _text_encoder(tokenizer)
    parts = dict(scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER), vae=vae, text_encoder=text_encoder,
                 tokenizer=tokenizer, transformer=transformer)
    if edit_plus:
        processor = _ImageOnlyProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer,
                                        video_processor=None)
        pipe = QwenImageEditPlusPipeline(processor=processor, **parts)
    else:
        pipe = QwenImagePipeline(**parts)
    pipe.default_sample_size = TINY_SIZE // pipe.vae_scale_factor
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_qwen_image_edit(seed: int = 0) -> QwenImageEditPlusPipeline:
    """The tiny Qwen-Image-Edit-Plus pipeline (Edit-2509's layout), for a `TINY_FAMILIES` entry of its own."""
    return build_tiny_qwen_image(seed, edit_plus=True)
