"""Offline random-weight tiny pipelines for tests and the demo: `load("tiny")`, `load("tiny-xl")`.

They are built in-process, deterministically from a seed, and never touch the network.
- tiny: SD's layer layout (4 UNet levels, CrossAttnDownBlock2D ×3 + DownBlock2D, UpBlock2D +
  CrossAttnUpBlock2D ×3, so attentions live in up_blocks[1..3] and PnP/TF-ICON address the same
  names as on SD 1.x/2.x), a ×8 AutoencoderKL (4 blocks), a tiny CLIP text encoder and a CLIP
  tokenizer whose vocabulary (256 byte-level symbols, the same with `</w>`, BOS/EOS) is written here.
- tiny-xl: SDXL's layer layout (3 levels, attentions in down_blocks[1..2] / up_blocks[0..1],
  two transformer layers per block on the deeper levels, two text encoders, text_time embedding).
Default image size: 128 px (16×16 latent).
"""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TINY_SIZE = 128


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: one printable unicode symbol per byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    order = printable + [b for b in range(256) if b not in printable]
    by_byte = dict(zip(order, codes))
    return [chr(by_byte[b]) for b in range(256)]


def byte_vocab(specials=()) -> dict:
    """The 256 byte symbols (ids 0…255), then `specials` (256…): a byte-level BPE vocabulary without merges."""
    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    vocab.update({token: 256 + i for i, token in enumerate(specials)})
    return vocab


QWEN3_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
QWEN3_CHAT_TEMPLATE = (  # Qwen3's chat template, reduced to what Flux2KleinPipeline and ZImagePipeline use: user
    # messages, the generation prompt, and the empty think block Qwen3 writes when enable_thinking is false
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}")


def tiny_qwen3_tokenizer(max_length: int = 512):
    """A Qwen2 byte-level BPE tokenizer (fast, no merges: one token per byte) with Qwen3's chat markers as special
    tokens and the reduced chat template above: the text encoders of FLUX.2 [klein] and Z-Image. The first special,
    <|endoftext|>, is id 256 (the pad token of the tiny Qwen3 models)."""
    from transformers import Qwen2TokenizerFast
    return Qwen2TokenizerFast(vocab=byte_vocab(QWEN3_SPECIALS), merges=[], model_max_length=max_length,
                              chat_template=QWEN3_CHAT_TEMPLATE, additional_special_tokens=list(QWEN3_SPECIALS[1:]))


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer with a locally written vocabulary (no merges: one token per character)."""
    symbols = _byte_symbols()
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": 256 + i for i, symbol in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(hidden: int = 32, projection: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=hidden,
                          intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4,
                          num_hidden_layers=3, vocab_size=1000, max_position_embeddings=77,
                          projection_dim=projection, hidden_act="gelu")


def _vae(scaling_factor: float) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(16, 16, 32, 32), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=TINY_SIZE,
                         scaling_factor=scaling_factor)


def _sd_scheduler_config() -> dict:
    return dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def build_tiny_sd(seed: int = 0, prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """Random-weight tiny SD 1.x/2.x-shaped pipeline (see module docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=TINY_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(32, 64, 64, 64),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=32, attention_head_dim=(2, 4, 4, 4), norm_num_groups=32)
        vae = _vae(5.0)  # scaling factor for unit-variance latents, as 0.18215 is for SD's VAE
        text_encoder = CLIPTextModel(_text_config())
    scheduler = DDIMScheduler(**_sd_scheduler_config(), **({} if prediction_type == "epsilon" else {}))
    scheduler.register_to_config(prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """Random-weight tiny SDXL-shaped pipeline (see module docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=TINY_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 2), attention_head_dim=(2, 4, 4), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=32)
        vae = _vae(5.0)
        text_encoder = CLIPTextModel(_text_config())
        text_encoder_2 = CLIPTextModelWithProjection(_text_config())
    scheduler = EulerDiscreteScheduler(**{k: v for k, v in _sd_scheduler_config().items()
                                          if k not in ("clip_sample", "set_alpha_to_one")}, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), unet=unet,
                                     scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
