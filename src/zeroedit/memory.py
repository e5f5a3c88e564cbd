"""The memory plan: what a method needs on the GPU, part by part, and the cheapest measures that make it fit.

    plan = zeroedit.memory.plan("FLUX.1-dev", "translate", size=1024, budget="24GB")   # configs only, no weights
    print(plan)                                      # the table; plan.measure, plan.peak, plan.slowdown, plan.options
    pipe = ze.load("black-forest-labs/FLUX.1-dev", dtype="bfloat16", device="cuda", memory=plan)   # applied

What is predicted (every figure in bytes; 1 GB = 10^9 bytes, 1 GiB = 2^30 bytes; "24GB" and "16GiB" say which):
- weights per component, exactly: the sum of its parameters' and buffers' bytes in their dtype (a pipeline built on
  the `meta` device from configs gives the same figure as the loaded one). Quantized: every `nn.Linear` weight of the
  quantized components at 1 byte per parameter plus one scale per output row (int8: bitsandbytes' fp32 row scales,
  torchao's in the model's dtype) or 0.5 byte plus an fp32 absmax per block of 64 (nf4); everything bitsandbytes and
  torchao leave alone (biases, norms, embeddings, convolutions) stays in its dtype.
- the activations of ONE denoiser call of each phase of the method at the working size and batch (sample-evaluations
  per call), from the per-family formulas below, plus the attention matrices the method's rules build where they need
  them (compose's composite logits, edit's guidance maps) and, for edit's gradient call, everything autograd keeps for
  the backward pass;
- the method's stores (recorded features / values / q-k / background K-V, guidance maps), named as `stats.store_bytes`
  names them: "features", "attention" (translate's recorded q/k on a UNet, values on SD3/FLUX), "qk" (compose),
  "background_kv", "guidance" (here: edit's attention maps; `stats.store_bytes["guidance"]` is everything the gradient
  call keeps for its backward, i.e. these maps + the gradient call's activations below), "trajectory"; their shapes
  follow the methods (methods/pnp*.py, tficon*.py, pix2pix_zero*.py);
- the text encoders' pass and the VAE (encode of the inputs, decode of the outputs: its decoder's last level holds
  three full-resolution tensors of `block_out_channels[1]` channels).
The peak is the largest, over the method's steps in order (VAE encode, text encoders, inversion, sampling, gradient
call, decode), of the weights on the GPU during that step (per measure: all of them; under model offload the ones
diffusers' hooks leave there, simulated along zeroedit's call order; under group offload the components' resident parts
and two blocks of the active one) + that step's activations + the stores alive then (all of them from the first
recording call on; conservative: until the end of the decode). A reserve of `RESERVE` bytes (the CUDA context, cuBLAS
workspaces, the allocator's rounding) is added before comparing with the budget.

Per-call activation formulas (B sample-evaluations, s bytes per element, N image tokens + T text tokens, D = heads ×
head_dim; measured with `LiveBytes` on CPU for several configs and sizes: `python benchmarks/memory.py --validate`):
- FLUX: B·(N+T)·D·s·k, k = 15 in fp32 (a single-stream block at `gate * proj_out(cat(attn, mlp))`: its input, the
  concatenated stream, the norm, the 4D MLP, the attention output, the 5D concat, proj_out and the product), 17.5 in
  half precision (the q/k RMS norms upcast to fp32 inside the attention).
- SD3: B·D·s·(13·N + 3·T) (+ B·D·s·N with SD3.5's dual attention), at the image stream's feed-forward GELU.
- UNet: B·s·max over decoder levels of (the skip connections still held + 24·C·HW at an attention level, the GEGLU
  feed-forward of its transformer block; 3·(C_in)·HW + C·HW at a resnet-only level).
- gradient calls (edit): FLUX/SD3 keep 25 (fp32) / 29 (half) B·(N+T)·D·s per block up to the last guided block (with
  checkpointing one block is recomputed at a time), + one piece of the guidance's logits (at most PIECE_ELEMENTS
  image queries × keys, 16 bytes per logit at its peak; the attention itself runs the layer's kernel and keeps no
  matrix); UNet keeps 25·C·HW (fp32)
  / 29·C·HW (half) per layer (resnet or transformer block) at every level, + the cross-attention maps. These
  constants are counts at the peak op measured with LiveBytes (the no-grad ones follow from the layer code).
- attention matrices built by a rule (no gradient): B·heads·Nq·Nk·(s + 4 + 4) in half precision (the logits, their
  fp32 copy, the softmax), 8 bytes in fp32.

Measures, tried in this order; the first that fits is the plan (each later one may combine with offloading; a method's
own memory options, `store="cpu"` for its stores and edit's `checkpointing=True` on SD3/FLUX, are tried within each
rung before the next):
1. resident: every component on the GPU;
2. model CPU offload: diffusers' `enable_model_cpu_offload()` (one component at a time, moved whole);
3. group offload: `enable_group_offload(onload, offload_device="cpu", offload_type="block_level",
   num_blocks_per_group=1, use_stream=True)` on the denoiser and the text encoders (the VAE stays resident);
4. 8-bit weights of the denoiser and T5 (bitsandbytes LLM.int8 on CUDA, torchao int8 weight-only elsewhere), alone,
   with model offload, with group offload;
5. 4-bit weights (bitsandbytes nf4; CUDA only), likewise.

Predicted slowdown against resident (a stated model, not a measurement; `ASSUMPTIONS` are printed with every plan):
compute time of a call = its FLOPs (2 × parameters × positions each layer sees, + 4·N²·d per attention layer) /
`GPU_FLOPS` (half precision; fp32 at a quarter); bytes moved = what the measure copies host -> GPU (model offload: a
component each time a hook moves it; group offload: the offloaded weights once per call; store="cpu": one step's
slice per injected call) / `PCIE_BYTES_PER_S`; with CUDA streams the copy overlaps the compute (a call takes the
longer of the two), otherwise it adds. Quantized matmuls cost `QUANT_COMPUTE` × the half-precision ones.

Families are table entries (`FAMILIES`): the denoiser, the text encoders in call order with their token counts, the
components group offload and quantization act on, and the per-call activation formula. A new family (FLUX.2,
Qwen-Image, Z-Image) adds one entry and its formula.

Built-in architectures (`BUILT_IN`, src/zeroedit/assets/architectures/NAME): model_index.json and every component's
config.json of FLUX.1-dev, FLUX.1-schnell, SD3.5-large, SD3.5-medium, SD3-medium, SDXL-base, SD-2.1-base and SD-1.5,
written from the values of their published configs (no weights; the parameter counts they build to match the published
ones: FLUX.1-dev 11.90 B + T5-XXL 4.76 B, SD3.5-large 8.06 B, SDXL 2.57 B, ...), so plans work offline.

Known limits: T5 loaded in float16 keeps its `wo` layers in fp32 (transformers' `_keep_in_fp32_modules`; not counted);
on CUDA the VAE's mid-block attention (one head of 512) may take a math kernel whose N² matrix is not counted; the
model-offload simulation follows the methods' current call order (e.g. translate re-encodes its prompts after the
inversion, which leaves the transformer and T5 both on the GPU under `enable_model_cpu_offload`); the constants of
the gradient calls are measured on FLUX layouts (SD3 reuses them).

Layers: this module imports errors and control.layers only (loading.load imports it, function-level, for `memory=`);
entry points (cli, runner) import it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import weakref
from pathlib import Path
from typing import Callable

import torch

from .control.layers import attention_layers, decoder_self_attention_layers, joint_attention_layers
from .control.streams import PIECE_ELEMENTS
from .errors import ModelError, ParameterError

logger = logging.getLogger(__name__)

GB, GiB = 10**9, 2**30
PCIE_BYTES_PER_S = 25e9  # host -> GPU over PCIe 4.0 x16 from pinned memory
GPU_FLOPS = 100e12  # sustained half-precision matmul throughput of a 16-24 GB card (RTX 4090 class); fp32 at 1/4
QUANT_COMPUTE = {"int8-bnb": 1.6, "int8-torchao": 1.1, "nf4": 1.25}  # matmul time vs half precision
RESERVE = 1 * GB  # CUDA context, cuBLAS workspaces and allocator rounding, kept free
ASSUMPTIONS = (f"PCIe {PCIE_BYTES_PER_S / 1e9:.0f} GB/s host->GPU; {GPU_FLOPS / 1e12:.0f} TFLOP/s half precision "
               f"({GPU_FLOPS / 4e12:.0f} fp32); int8 matmuls x{QUANT_COMPUTE['int8-bnb']} (bitsandbytes) / "
               f"x{QUANT_COMPUTE['int8-torchao']} (torchao), nf4 x{QUANT_COMPUTE['nf4']}; {RESERVE / GB:.0f} GB "
               "reserved for the CUDA context; 1 GB = 10^9 bytes")
METHODS = ("compose", "translate", "edit", "personalize", "invert")
ARCHITECTURES = Path(__file__).parent / "assets" / "architectures"  # published config.json values, no weights


# ----------------------------------------------------------------------------------------- units
def parse_bytes(value, name: str = "budget") -> int:
    """"24GB" (10^9), "16GiB" (2^30), "512MB", "0.5TB" or a number of bytes -> int bytes."""
    if isinstance(value, bool):
        raise ParameterError(f"{name} must be a size such as '24GB' or '16GiB', got {value!r}.")
    if isinstance(value, (int, float)):
        number, unit = float(value), "B"
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKMGT]i?B|B)?\s*", str(value))
        if not match:
            raise ParameterError(f"{name} {value!r} is not a size: write e.g. '24GB' (10^9 bytes), '16GiB' (2^30 "
                                 "bytes) or a number of bytes.")
        number, unit = float(match.group(1)), match.group(2) or "B"
    scale = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2**10, "kiB": 2**10,
             "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]
    if not math.isfinite(number) or number <= 0:
        raise ParameterError(f"{name} must be a positive size, got {value!r}.")
    return int(number * scale)


def gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


# ----------------------------------------------------------------------------------------- configs only
BUILT_IN = {path.name: path for path in sorted(ARCHITECTURES.iterdir())} if ARCHITECTURES.is_dir() else {}


def _hub_id(folder: Path) -> str:
    return json.loads((folder / "model_index.json").read_text())["_name_or_path"]


HUB_IDS = {_hub_id(folder): name for name, folder in BUILT_IN.items()}


def _cached_configs(repo: str) -> Path | None:
    """The folder of `repo` in the local Hugging Face cache that holds its model_index.json (configs only), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
        path = try_to_load_from_cache(repo, "model_index.json")
    except Exception:  # noqa: BLE001 — not a valid repo id, no cache: not found
        return None
    return Path(path).parent if isinstance(path, str) else None


def config_folder(model: str) -> Path:
    """Where the configs of `model` are: a local folder, a hub id in the local cache, or a built-in architecture
    (a name of `BUILT_IN` such as "FLUX.1-dev", or its hub id)."""
    model = os.fspath(model)
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "model_index.json")):
            raise ModelError(f"{model!r} has no model_index.json: point at a diffusers-format pipeline folder.")
        return Path(model)
    cached = _cached_configs(model) if "/" in model else None
    if cached is not None:
        return cached
    name = model if model in BUILT_IN else HUB_IDS.get(model)
    if name is None:
        raise ModelError(f"no configs for {model!r}: pass a local diffusers folder, a hub id in your Hugging Face cache "
                         f"(configs are enough: `hf download {model} --include '*.json'`), or a built-in architecture: "
                         f"{', '.join(BUILT_IN)}.")
    return BUILT_IN[name]


def _component_config(folder: Path, name: str) -> dict:
    path = folder / name / ("scheduler_config.json" if name == "scheduler" else "config.json")
    if not path.is_file():  # a hub cache holds only what was downloaded
        raise ModelError(f"{path} is missing: the configs of every component are needed to plan (download them with "
                         "`hf download REPO --include '*.json'`).")
    return json.loads(path.read_text())


def meta_pipeline(model, dtype: torch.dtype | None = None):
    """A diffusers pipeline whose weights live on the `meta` device, built from the configs of `model` (see
    `config_folder`): nothing is downloaded or allocated. Tokenizers are left out. `dtype`: the weights' dtype
    (None: bfloat16 for SD3/FLUX, float16 for UNet models, as they are usually run)."""
    import diffusers
    folder = config_folder(model)
    index = json.loads((folder / "model_index.json").read_text())
    pipeline_class = getattr(diffusers, index["_class_name"], None)
    if pipeline_class is None:
        raise ModelError(f"{index['_class_name']} is not a diffusers pipeline class.")
    flow = any(entry == ["diffusers", "FluxTransformer2DModel"] or entry == ["diffusers", "SD3Transformer2DModel"]
               for entry in index.values())
    dtype = dtype or (torch.bfloat16 if flow else torch.float16)
    components = {}
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()  # not "cast with to()" notices: there is nothing to cast
    try:
        for name, entry in index.items():
            _meta_component(components, folder, name, entry, dtype)
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
    if pipeline_class.__name__ == "StableDiffusionPipeline":
        components["requires_safety_checker"] = False
    accepted = set(pipeline_class._get_signature_keys(pipeline_class)[0]) | set(pipeline_class._optional_components)
    pipe = pipeline_class(**{k: v for k, v in components.items() if k in accepted})
    pipe.zeroedit_architecture = folder.name if folder.parent == ARCHITECTURES else str(folder)
    return pipe


def _meta_component(components: dict, folder: Path, name: str, entry, dtype: torch.dtype):
    """One component of a configs-only pipeline (meta_pipeline): a module on the meta device, a scheduler, or None."""
    import diffusers
    import transformers
    if name.startswith("_") or not isinstance(entry, list):
        return
    library, class_name = entry
    if library is None or name.startswith("tokenizer") or name in ("safety_checker", "feature_extractor"):
        components[name] = None
        return
    config = _component_config(folder, name)
    if name == "scheduler":
        components[name] = getattr(diffusers, class_name).from_config(config)
        return
    with torch.device("meta"):
        if library == "diffusers":
            module = getattr(diffusers, class_name).from_config(config)
        else:
            model_class = getattr(transformers, class_name)
            module = model_class(model_class.config_class(**config))
    components[name] = module.to(dtype).eval()


# ----------------------------------------------------------------------------------------- weights
def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype, device="meta").element_size()


def module_bytes(module: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Exact bytes of a module's parameters and buffers (in `dtype` where given, for floating ones)."""
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        size = _dtype_bytes(dtype) if dtype is not None and tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * size
    return total


def quantized_bytes(module: torch.nn.Module, kind: str) -> int:
    """Predicted bytes of `module` with its nn.Linear weights quantized (kind "int8-bnb", "int8-torchao", "nf4"),
    everything else as it is (module docstring)."""
    total = module_bytes(module)
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            weight = layer.weight
            total -= weight.numel() * weight.element_size()
            if kind == "nf4":
                total += math.ceil(weight.numel() / 2) + math.ceil(weight.numel() / 64) * 4
            else:
                total += weight.numel() + weight.shape[0] * (4 if kind == "int8-bnb" else weight.element_size())
    return total


def _groups(module: torch.nn.Module, blocks: tuple[str, ...]) -> tuple[int, int]:
    """(bytes outside any block, bytes of the largest block) as diffusers' block-level group offloading splits
    `module`: each element of a ModuleList/Sequential child is a group; `blocks` names children to recurse into."""
    sizes = []

    def walk(parent):
        for name, child in parent.named_children():
            if name in blocks:
                walk(child)
            elif isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
                sizes.extend(module_bytes(block) for block in child)
    walk(module)
    largest = max(sizes, default=0)
    return module_bytes(module) - sum(sizes), largest


GROUP_BLOCKS = {"T5EncoderModel": ("encoder",), "CLIPTextModel": ("text_model", "encoder"),
                "CLIPTextModelWithProjection": ("text_model", "encoder"),
                "CLIPVisionModelWithProjection": ("vision_model", "encoder")}  # where transformers models keep blocks


# ----------------------------------------------------------------------------------------- families
@dataclasses.dataclass(frozen=True)
class Geometry:
    """One method run's shapes: latent (h, w), image (H, W), bytes per element of the denoiser and of the VAE."""

    latent: tuple[int, int]
    image: tuple[int, int]
    s: int
    vae_s: int
    text_tokens: int  # tokens the denoiser's attention sees per prompt (cross- or joint attention)


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family as the plan sees it (module docstring): `call(model, geometry, batch)` -> activation bytes of
    one no-grad denoiser call; `grad(model, geometry, batch, blocks, checkpointing)` -> what edit's gradient call keeps."""

    name: str
    denoiser: str
    text_encoders: tuple[str, ...]  # in the order the backbone runs them
    call: Callable
    grad: Callable
    attention_layers: Callable  # (model, geometry) -> [(layer, heads, query tokens, inner width)] of self/joint attention


def _heads_dim(model) -> tuple[int, int]:
    config = model.config
    return config.num_attention_heads, config.num_attention_heads * config.attention_head_dim


def _image_tokens(g: Geometry) -> int:
    return (g.latent[0] // 2) * (g.latent[1] // 2)


def flux_call(model, g: Geometry, batch: int) -> int:
    _, d = _heads_dim(model)
    return int(batch * (_image_tokens(g) + g.text_tokens) * d * g.s * (15 if g.s == 4 else 17.5))


def sd3_call(model, g: Geometry, batch: int) -> int:
    _, d = _heads_dim(model)
    n, dual = _image_tokens(g), bool(model.config.get("dual_attention_layers") or ())
    return batch * d * g.s * ((14 if dual else 13) * n + 3 * g.text_tokens)


def attention_matrix(batch: int, heads: int, nq: int, nk: int, s: int, kept: bool = False) -> int:
    """Bytes of an explicit attention matrix a rule computes: at its peak (the logits, their fp32 copy and the fp32
    softmax; 8 bytes per element in fp32, where the copy is the logits), or what a gradient call keeps of it for
    the backward pass (the fp32 softmax and the probabilities in the model's dtype)."""
    per = (4 + (s if s != 4 else 0)) if kept else (s + 8 if s != 4 else 8)
    return batch * heads * nq * nk * per


def transformer_grad(model, g: Geometry, batch: int, blocks: int, checkpointing: bool) -> int:
    """Edit's gradient call on SD3/FLUX: blocks up to the last guided one keep their activations (with
    checkpointing, every block only its input; the peak is the backward of one recomputed block). The guidance
    reads the image→text probabilities piece by piece (pix2pix_zero_flow.ImageToTextGuidance: at most
    PIECE_ELEMENTS logits of image queries × keys, each piece recomputed in the backward) and the layers attend with
    their kernel, so no attention matrix is kept: one piece at a time, 16 bytes per logit at its peak (its fp32
    logits, exponentials and their gradients; measured, benchmarks/memory.py --validate --gradients)."""
    heads, d = _heads_dim(model)
    tokens = _image_tokens(g) + g.text_tokens
    unit = batch * tokens * d * g.s
    per_block, transient = (25, 5) if g.s == 4 else (29, 10)
    piece = min(batch * heads * _image_tokens(g) * tokens, PIECE_ELEMENTS)
    if checkpointing:
        return unit * (blocks + per_block + transient) + piece * 16
    return unit * (per_block * blocks + transient) + piece * 16


def _unet_levels(model, g: Geometry):
    """Per UNet level i: (channels, positions h·w at that level, has attention, layers per block)."""
    config = model.config
    h, w = g.latent
    levels = []
    for i, (channels, kind) in enumerate(zip(config.block_out_channels, config.down_block_types)):
        lpb = config.layers_per_block if isinstance(config.layers_per_block, int) else config.layers_per_block[i]
        levels.append((channels, h * w, "CrossAttn" in kind, lpb))
        h, w = (h + 1) // 2, (w + 1) // 2
    return levels


def unet_call(model, g: Geometry, batch: int) -> int:
    """UNet formula (module docstring): the decoder level where skips still held + the working set is largest."""
    levels = _unet_levels(model, g)
    skips = [levels[0][0] * levels[0][1]]  # conv_in, then each level's layer outputs and its downsampler
    for i, (channels, positions, _, lpb) in enumerate(levels):
        skips += [channels * positions] * lpb + ([channels * levels[i + 1][1]] if i + 1 < len(levels) else [])
    worst, deeper = 0, levels[-1][0]
    for i in reversed(range(len(levels))):
        channels, positions, attention, lpb = levels[i]
        skips = skips[: len(skips) - 1]  # the level's first resnet took its skip
        working = 24 * channels * positions if attention else (3 * (deeper + channels) + deeper) * positions
        worst = max(worst, sum(skips) + working)
        skips = skips[: len(skips) - lpb]
        deeper = channels
    return batch * g.s * worst


def unet_grad(model, g: Geometry, batch: int, blocks: int = 0, checkpointing: bool = False) -> int:
    """Edit's gradient call on a UNet: 25·C·HW (fp32; 29 in half precision) per resnet or transformer block (encoder:
    layers_per_block per level, decoder: one more), with the guidance rule's explicit cross-attention (measured,
    benchmarks/memory.py --validate), + the cross-attention maps of every attn2 layer (kept: fp32 softmax and
    probabilities). `blocks` and `checkpointing` (SD3/FLUX options) do not apply."""
    depth = model.config.get("transformer_layers_per_block", 1)
    total = 0
    for i, (channels, positions, attention, lpb) in enumerate(_unet_levels(model, g)):
        blocks_here = 1 + ((depth if isinstance(depth, int) else depth[i]) if attention else 0)
        total += (25 if g.s == 4 else 29) * (2 * lpb + 1) * channels * positions * blocks_here
    maps = sum(attention_matrix(batch, heads, tokens, g.text_tokens, g.s, kept=True)
               for _, heads, tokens, _ in unet_attention(model, g, "attn2"))
    return batch * g.s * total + maps


def unet_attention(model, g: Geometry, kind: str = "attn1", names=None) -> list[tuple[str, int, int, int]]:
    """(layer, heads, query tokens, inner width) of the UNet's attention layers of `kind` (or of `names`):
    down_blocks.i run at level i, up_blocks.j at level L-1-j, the mid block at the deepest level."""
    modules = dict(model.named_modules())
    levels = _unet_levels(model, g)
    deepest = len(levels) - 1
    out = []
    for name in names if names is not None else attention_layers(model, kind):
        part, index = name.split(".")[:2]
        level = int(index) if part == "down_blocks" else deepest - int(index) if part == "up_blocks" else deepest
        out.append((name, modules[name].heads, levels[level][1], modules[name].to_q.out_features))
    return out


def joint_attention(model, g: Geometry) -> list[tuple[str, int, int, int]]:
    """(layer, heads, image tokens, inner width) of every joint-attention layer of an SD3/FLUX transformer."""
    heads, d = _heads_dim(model)
    names = joint_attention_layers(model, "double") + (joint_attention_layers(model, "single")
                                                       if hasattr(model, "single_transformer_blocks") else [])
    return [(name, heads, _image_tokens(g), d) for name in names]


FAMILIES = {
    "flux": Family("flux", "transformer", ("text_encoder", "text_encoder_2"), flux_call, transformer_grad,
                   joint_attention),
    "sd3": Family("sd3", "transformer", ("text_encoder", "text_encoder_2", "text_encoder_3"), sd3_call,
                  transformer_grad, joint_attention),
    "unet": Family("unet", "unet", ("text_encoder", "text_encoder_2"), unet_call, unet_grad, unet_attention),
}
T5_TOKENS = {"flux": 512, "sd3": 256}  # FluxPipeline's / StableDiffusion3Pipeline's max_sequence_length (backbones/flow.py)
QUANTIZED = ("transformer", "unet", "text_encoder_2", "text_encoder_3")  # denoiser and T5 (FLUX: text_encoder_2)


def family_of(pipe) -> Family:
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    kind = type(denoiser).__name__
    name = {"FluxTransformer2DModel": "flux", "SD3Transformer2DModel": "sd3", "UNet2DConditionModel": "unet"}.get(kind)
    if name is None:
        raise ModelError(f"cannot plan for {type(pipe).__name__} ({kind}): the memory plan knows "
                         "FLUX.1, SD3/SD3.5 and SD 1.x/2.x/XL pipelines.")
    return FAMILIES[name]


def _quantize_target(pipe, name: str) -> bool:
    """The plan quantizes the denoiser and the T5 encoder."""
    module = getattr(pipe, name, None)
    return name in QUANTIZED and module is not None and (name in ("transformer", "unet")
                                                         or type(module).__name__ == "T5EncoderModel")


# ----------------------------------------------------------------------------------------- the methods' steps
@dataclasses.dataclass
class Step:
    """One step of a method run: `component` runs (calls times, at batch), needing `work` bytes of activations;
    `stores`: the method's stores are alive; `flops`: FLOPs of one call; `injected`: calls that read one key's
    slice of the stores (what store="cpu" copies back)."""

    name: str
    component: str
    work: int
    calls: int = 1
    flops: float = 0.0
    stores: bool = False
    injected: int = 0


@dataclasses.dataclass
class Stores:
    """The method's stores: name -> bytes, and the number of keys (recorded steps) each is split into."""

    sizes: dict
    keys: int = 1

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


def _text_work(encoder, batch: int, tokens: int, s: int) -> int:
    """A text encoder's pass: its layer's working set (4 states and the feed-forward) and, for T5, the relative
    position bias expanded over the batch (transformers' SDPA path)."""
    config = encoder.config
    width = getattr(config, "d_model", None) or config.hidden_size
    ff = getattr(config, "d_ff", None) or config.intermediate_size
    work = batch * tokens * s * (4 * width + 3 * ff)
    if hasattr(config, "d_model"):
        work += batch * config.num_heads * tokens * tokens * s
    return work


def _flops(model, family: Family, g: Geometry, batch: int) -> float:
    """FLOPs of one denoiser call: 2 × parameters × positions each layer sees (all tokens on SD3/FLUX; its level's
    positions on a UNet) + 4·N²·d per self/joint attention layer (module docstring)."""
    params = sum(p.numel() for p in model.parameters())
    if family.name != "unet":
        tokens = _image_tokens(g) + g.text_tokens
        _, d = _heads_dim(model)
        attention = 4 * tokens * tokens * d * len(family.attention_layers(model, g))
        return batch * (2 * params * tokens + attention)
    levels = _unet_levels(model, g)
    total = 0.0
    for name, child in model.named_children():
        blocks = list(child) if isinstance(child, torch.nn.ModuleList) else [child]
        for index, block in enumerate(blocks):
            level = {"down_blocks": index, "up_blocks": len(levels) - 1 - index}.get(name, len(levels) - 1)
            level = 0 if name in ("conv_in", "conv_out", "conv_norm_out") else level
            total += 2 * sum(p.numel() for p in block.parameters()) * levels[level][1]
    for _, _, tokens, inner in family.attention_layers(model, g):
        total += 4 * tokens * tokens * inner
    return batch * total


def _unet_translate_layers(unet) -> tuple[int, list[str]]:
    """The decoder level index (up_blocks[j]) of PnP's feature and its q/k layers, as methods/pnp.py
    `injection_layers` picks them (ldm's output blocks 4–11 on SD; after the first decoder attention on SDXL)."""
    n = len(unet.up_blocks[0].resnets)
    if len(unet.config.block_out_channels) == 4:
        return 4 // n, decoder_self_attention_layers(unet)[4 - n:12 - n]
    return 0, [name for name in decoder_self_attention_layers(unet) if not name.startswith("up_blocks.0.attentions.0.")]


@dataclasses.dataclass
class Call:
    """`count` denoiser calls of one kind at `batch` sample-evaluations: activations `work` (None: the family's
    per-call formula) + `extra` (attention matrices a rule builds); `flops` × one plain call's FLOPs."""

    name: str
    batch: int
    count: int
    work: int | None = None
    extra: int = 0
    flops: float = 1.0
    injected: int = 0  # calls that read one key of the stores


def _translate(pipe, family, model, g, prompts, options):
    """Translate at its defaults: UNet PnP (50 steps, features 40, q/k 25 steps; the first sampling call carries the
    source branch); SD3/FLUX FireFlow editing (8 steps, the values of every single-stream (FLUX) / joint (SD3)
    block for 1 step: the inversion records one key, its midpoint evaluation)."""
    if family.name == "unet":
        steps, k_feature, k_attention = 50, 40, 25
        level, layers = _unet_translate_layers(model)
        levels = _unet_levels(model, g)
        channels = model.config.block_out_channels[::-1][level]
        # the inversion never evaluates the top timestep: the first step's source rides in its call, k - 1 keys
        features = (k_feature - 1) * channels * levels[len(levels) - 1 - level][1] * g.s
        qk = (k_attention - 1) * 2 * g.s * sum(tokens * inner for _, _, tokens, inner in unet_attention(model, g, names=layers))
        calls = [Call("inversion", 1, steps), Call("sampling", 2 * prompts + 1, steps, injected=k_feature)]
        return calls, Stores({"features": features, "attention": qk}, keys=k_feature - 1)
    steps, keys = 8, 1
    _, d = _heads_dim(model)
    layers = joint_attention_layers(model, "single" if family.name == "flux" else "double")
    attention = keys * len(layers) * (_image_tokens(g) + g.text_tokens) * d * g.s
    sampling = prompts * (2 if family.name == "sd3" else 1)
    calls = [Call("inversion", 1, steps + 1), Call("sampling", sampling, steps + 1, injected=keys)]
    return calls, Stores({"attention": attention}, keys=keys)


def _compose(pipe, family, model, g, objects, options):
    """Compose at its defaults (the first sampling call also carries the background and references): UNet TF-ICON
    (DPM-Solver++ 20 steps; composite logits in every self-attention layer for 7 calls, q/k recorded for the 6 the
    inversion evaluates); SD3/FLUX KV-Edit's rule (FireFlow 20 steps; the background's image-token K/V of every
    joint layer at the 7 midpoints of the window)."""
    steps, k_a = 20, 7
    if family.name == "unet":
        layers = unet_attention(model, g, "attn1")
        qk = (k_a - 1) * 2 * (1 + objects) * g.s * sum(tokens * inner for _, _, tokens, inner in layers)
        first = 2 + 1 + objects
        matrix = max(max(attention_matrix(first, heads, tokens, tokens, g.s), (2 * first + 4) * heads * tokens ** 2 * g.s)
                     for _, heads, tokens, _ in layers)
        calls = [Call("inversion", 1 + objects, steps), Call("sampling", first, steps, extra=matrix, injected=k_a)]
        return calls, Stores({"qk": qk}, keys=k_a - 1)
    _, d = _heads_dim(model)
    kv = k_a * len(family.attention_layers(model, g)) * 2 * _image_tokens(g) * d * g.s
    sampling = (2 if family.name == "sd3" else 1) + 1
    calls = [Call("inversion", 1 + objects, steps + 1), Call("sampling", sampling, steps + 1, injected=2 * k_a)]
    return calls, Stores({"background_kv": kv}, keys=k_a)


def _edit(pipe, family, model, g, images, options):
    """Edit at its defaults (50 steps): inversion, then per step a gradient call on [reference, edit, edit] (UNet:
    the whole UNet; SD3/FLUX: up to the last guided block, every double/joint block) and a second call."""
    steps = 50
    if family.name == "unet":
        maps = sum(heads * tokens * g.text_tokens * g.s for _, heads, tokens, _ in unet_attention(model, g, "attn2"))
        grad, share, second = family.grad(model, g, 3 * images), 1.0, 2 * images
    else:  # the guidance's maps are pieces recomputed in the backward (transformer_grad), none kept
        blocks = len(joint_attention_layers(model, "double"))
        maps = 0
        grad = family.grad(model, g, 3 * images, blocks, bool(options.get("checkpointing")))
        guided = sum(p.numel() for p in model.transformer_blocks.parameters())
        share, second = guided / sum(p.numel() for p in model.parameters()), 3 * images
    calls = [Call("inversion", images, steps), Call("gradient call", 3 * images, steps, work=grad, flops=3 * share),
             Call("second call", second, steps)]
    return calls, Stores({"guidance": images * maps})


def _personalize(pipe, family, model, g, objects, options):
    """Personalize: plain generation's calls (30 steps; CFG on UNet models, FLUX-dev's guidance embedding)."""
    return [Call("sampling", 1 if family.name == "flux" else 2, 30)], Stores({})


def _invert(pipe, family, model, g, images, options):
    """Invert then reconstruct (the CLI's invert): 50 steps each way, DDIM on UNet models, FireFlow on SD3/FLUX
    (51 calls); the trajectory (float32 latents of every step) is kept."""
    steps = 50 if family.name == "unet" else 51
    channels = model.config.in_channels // (4 if family.name == "flux" else 1)
    trajectory = (steps + 1) * images * channels * g.latent[0] * g.latent[1] * 4
    return [Call("inversion", images, steps), Call("reconstruction", images, steps)], Stores({"trajectory": trajectory})


METHOD_STEPS = {"translate": _translate, "compose": _compose, "edit": _edit, "personalize": _personalize,
                "invert": _invert}


# ----------------------------------------------------------------------------------------- adapters (personalize)
IMAGE_ENCODERS = {  # the reference IP-Adapters' CLIP vision towers (loading.DEFAULT_IP_ADAPTERS / FLUX_IP_ADAPTER)
    768: dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
              projection_dim=1024, patch_size=14, image_size=224),  # h94 models/image_encoder: ViT-H/14
    2048: dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16,
               projection_dim=1280, patch_size=14, image_size=224, hidden_act="gelu"),  # sdxl_models: ViT-bigG/14
    "flux": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 projection_dim=768, patch_size=14, image_size=224),  # openai/clip-vit-large-patch14
}


def _adapter_parts(pipe, family) -> dict:
    """Weights of the image encoder and IP-Adapter personalize needs when the pipeline has none loaded: those of the
    default adapter (loading.DEFAULT_IP_ADAPTERS / FLUX_IP_ADAPTER), its encoder built on the meta device. A loaded
    adapter is already counted: its image encoder is a component, its processors and projection live in the
    denoiser."""
    model = getattr(pipe, family.denoiser)
    if getattr(pipe, "image_encoder", None) is not None:
        return {}
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    s = _dtype_bytes(model.dtype)
    if family.name == "flux":
        config = IMAGE_ENCODERS["flux"]
        width, inner = model.config.joint_attention_dim, _heads_dim(model)[1]
        adapter = len(joint_attention_layers(model, "double")) * 2 * (width * inner + inner)
        adapter += config["projection_dim"] * 4 * width + 4 * width + 2 * width
    else:
        width = model.config.cross_attention_dim
        if width not in IMAGE_ENCODERS:
            raise ParameterError(f"personalize: no default IP-Adapter for this UNet (text width {width}).")
        config = IMAGE_ENCODERS[width]
        modules = dict(model.named_modules())
        adapter = sum(2 * width * modules[name].to_k.out_features for name in attention_layers(model, "attn2"))
        adapter += config["projection_dim"] * 4 * width + 4 * width + 2 * width
    with torch.device("meta"):
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    return {"image_encoder (predicted)": module_bytes(vision, model.dtype), "ip_adapter (predicted)": adapter * s}


# ----------------------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Measure:
    """A set of measures: `offload` None | "model" | "group", `quantize` None | "int8" | "nf4", and the method's own
    memory options (`store="cpu"`, edit's `checkpointing=True`)."""

    offload: str | None = None
    quantize: str | None = None
    options: tuple = ()

    @property
    def name(self) -> str:
        parts = [{"int8": "8-bit weights", "nf4": "4-bit weights"}.get(self.quantize, "")]
        parts.append({"model": "model CPU offload", "group": "group offload"}.get(self.offload, ""))
        parts += [f"{key}={value!r}" for key, value in self.options]
        return " + ".join(p for p in parts if p) or "resident"


@dataclasses.dataclass
class Trial:
    """One measure's prediction: peak bytes, the step where it is reached, the predicted slowdown, and the per-step
    split [(step, weights on the GPU, activations, stores on the GPU)]."""

    measure: Measure
    peak: int
    at: str
    slowdown: float
    steps: list


@dataclasses.dataclass
class Plan:
    """The plan for one method on one model: the parts (bytes each), the measures tried, the chosen one."""

    model: str
    method: str
    size: tuple[int, int]
    batch: int
    dtype: str
    budget: int
    device: str
    parts: list  # [(part, bytes, note)]
    trials: list  # [Trial] in the order tried
    chosen: Trial
    quantized: tuple = ()  # components the quantization rungs act on
    quant_backend: str = ""  # "bitsandbytes" (CUDA) or "torchao"

    @property
    def measure(self) -> Measure:
        return self.chosen.measure

    @property
    def peak(self) -> int:
        return self.chosen.peak

    @property
    def slowdown(self) -> float:
        return self.chosen.slowdown

    @property
    def options(self) -> dict:
        """The method arguments the plan asks for (e.g. {"store": "cpu"})."""
        return dict(self.chosen.measure.options)

    def weight_bytes(self) -> int:
        return sum(size for part, size, _ in self.parts if part.startswith("weights:"))

    def to_dict(self) -> dict:
        return {"model": self.model, "method": self.method, "size": list(self.size), "budget_bytes": self.budget,
                "measures": self.measure.name, "offload": self.measure.offload, "quantize": self.measure.quantize,
                "options": self.options, "peak_bytes": self.peak, "peak_step": self.chosen.at,
                "slowdown": round(self.slowdown, 3), "device": self.device}

    def __str__(self) -> str:
        width = max(len(p) for p, _, _ in self.parts) + 2
        lines = [f"memory plan: {self.method} on {self.model} at {self.size[0]}x{self.size[1]}, batch {self.batch}, "
                 f"{self.dtype}; budget {gb(self.budget)} (1 GB = 10^9 bytes; {self.budget / GiB:.2f} GiB)", "",
                 f"{'part':<{width}}{'bytes':>11}  note"]
        lines += [f"{part:<{width}}{gb(size):>11}  {note}" for part, size, note in self.parts]
        column = max(len(t.measure.name) for t in self.trials) + 2
        lines += ["", f"{'measures':<{column}}{'peak':>11}  {'+ reserve':>10}  fits  slowdown  peak at"]
        for trial in self.trials:
            mark = " <- chosen" if trial is self.chosen else ""
            fits = "yes" if trial.peak + RESERVE <= self.budget else "no"
            lines.append(f"{trial.measure.name:<{column}}{gb(trial.peak):>11}  {gb(trial.peak + RESERVE):>10}  {fits:<4}  "
                         f"{trial.slowdown:>7.2f}x  {trial.at}{mark}")
        lines += ["", f"chosen: {self.measure.name}: peak {gb(self.peak)} at {self.chosen.at}, predicted slowdown "
                      f"{self.slowdown:.2f}x vs resident.", "step by step under it (weights + activations + stores):"]
        column = max(len(row[0]) for row in self.chosen.steps) + 2
        lines += [f"  {name:<{column}}{gb(w):>11} +{gb(a):>10} +{gb(s):>10} = {gb(w + a + s)}"
                  for name, w, a, s in self.chosen.steps]
        lines.append(f"assumptions: {ASSUMPTIONS}.")
        return "\n".join(lines)


def _geometry(pipe, family, size, s) -> tuple[Geometry, tuple[int, int]]:
    """Working size (the model's native long side, square, by default) -> shapes; sides rounded down to the
    latent multiple (16 px on SD3/FLUX, the VAE factor on UNet models)."""
    vae = pipe.vae
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if size is None:
        if family.name == "unet":
            sample = pipe.unet.config.sample_size
            size = (sample if isinstance(sample, int) else max(sample)) * scale
        else:
            sample = vae.config.sample_size
            size = sample if isinstance(sample, int) else max(sample)
    width, height = (size, size) if isinstance(size, (int, float)) and not isinstance(size, bool) else tuple(size) \
        if isinstance(size, (tuple, list)) and len(size) == 2 else (None, None)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 16384 for v in (width, height)):
        raise ParameterError(f"size must be a long side in px or (width, height), each in 1…16384, got {size!r}.")
    multiple = scale * (1 if family.name == "unet" else 2)
    width, height = (max(multiple, int(v) // multiple * multiple) for v in (width, height))
    vae_s = _dtype_bytes(vae.dtype)
    if family.name == "unet" and getattr(pipe, "text_encoder_2", None) is not None and vae.dtype == torch.float16 \
            and vae.config.get("force_upcast", False):
        vae_s = 4  # backbones/unet.py runs an fp16 SDXL VAE in fp32, as diffusers' force_upcast
    text = _text_tokens(pipe, family)
    return Geometry((height // scale, width // scale), (height, width), s, vae_s, text), (width, height)


def _text_tokens(pipe, family) -> int:
    """Tokens per prompt the denoiser attends to: CLIP's 77 (UNet), T5's (FLUX), CLIP's 77 + T5's (SD3), T5's length
    capped by its tokenizer's maximum where the pipeline has one (backbones/flow.py `t5_length`)."""
    if family.name == "unet":
        return 77
    tokenizer = pipe.tokenizer_2 if family.name == "flux" else getattr(pipe, "tokenizer_3", None)
    t5 = min(T5_TOKENS[family.name], int(getattr(tokenizer, "model_max_length", None) or T5_TOKENS[family.name]))
    return t5 + (0 if family.name == "flux" else 77)


def _method_options(method: str, family: Family) -> list[tuple]:
    """The method's own memory options the plan may add (module docstring)."""
    if method in ("translate", "compose"):
        return [(), (("store", "cpu"),)]
    if method == "edit" and family.name != "unet":
        return [(), (("checkpointing", True),)]
    return [()]


def _check_method(pipe, family, method):
    if method not in METHODS:
        raise ParameterError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    if method == "personalize" and family.name == "sd3":
        raise ParameterError("personalize does not run on SD3/SD3.5 (no SD3 IP-Adapter in zeroedit): nothing to plan.")
    if method == "edit" and family.name == "unet" and getattr(pipe, "text_encoder_2", None) is not None:
        raise ParameterError("edit does not run on SDXL (directions need one CLIP encoder): nothing to plan.")


def plan(pipe, method: str = "invert", size=None, budget="24GB", batch: int | None = None,
         dtype: torch.dtype | None = None, device: str = "cuda") -> Plan:
    """The memory plan of `method` on `pipe` (module docstring).

    pipe: a pipeline (loaded, or with weights on the `meta` device), or a model: a local folder, a hub id in the
    local cache or a built-in architecture name (`BUILT_IN`: FLUX.1-dev, SD3.5-large, SDXL-base, ...); only configs
    are read. size: working size, a long side in px (a square image) or (width, height) (None: the model's native
    size). budget: the GPU memory you have, "24GB" (10^9), "16GiB" (2^30) or bytes. batch: prompts (translate),
    objects (compose, personalize) or images (invert, edit) (None: 1). dtype: the weights' dtype (None: the
    pipeline's). device: what the plan is for: "cuda" (CUDA streams, bitsandbytes) or "cpu" (what a machine without
    CUDA can apply: no streams, torchao int8, no 4-bit).
    Raises ParameterError when nothing fits, naming the smallest budget that does and its measures."""
    budget_bytes = parse_bytes(budget)
    if device not in ("cuda", "cpu"):
        raise ParameterError(f"device must be 'cuda' or 'cpu' (what the plan is for), got {device!r}.")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ParameterError(f"dtype must be a torch dtype such as torch.bfloat16, got {dtype!r}.")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 64):
        raise ParameterError(f"batch must be an int in 1…64 (prompts, objects or images), got {batch!r}.")
    name = str(pipe) if isinstance(pipe, (str, os.PathLike)) else getattr(pipe, "zeroedit_architecture", None) or \
        getattr(getattr(pipe, "config", None), "_name_or_path", None) or type(pipe).__name__
    if isinstance(pipe, (str, os.PathLike)):
        pipe = meta_pipeline(pipe, dtype)
    family = family_of(pipe)
    _check_method(pipe, family, method)
    model = getattr(pipe, family.denoiser)
    s = _dtype_bytes(dtype or model.dtype)
    g, size = _geometry(pipe, family, size, s)
    count = batch or 1
    components = {key: module for key, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    weights, parts = _weights(pipe, family, method, components, dtype)
    backend = "bitsandbytes" if device == "cuda" else "torchao"
    quantized = tuple(key for key in components if _quantize_target(pipe, key))
    variants = {options: _steps(pipe, family, method, g, count, dict(options)) for options in _method_options(method, family)}
    trials = _trials(pipe, family, variants, components, weights, quantized, backend, g, device)
    steps, stores = variants[()]
    named = {step.name: step for step in steps}  # a step that runs twice (text encoders) is one row
    parts += [(f"activations: {step.name}", step.work, f"{step.calls} call(s)" if step.calls > 1 else "")
              for step in named.values()]
    parts += [(f"store: {key}", size_bytes, f"{stores.keys} recorded step(s)" if stores.keys > 1 else "")
              for key, size_bytes in stores.sizes.items()]
    fitting = [t for t in trials if t.peak + RESERVE <= budget_bytes]
    smallest = min(trials, key=lambda t: (t.peak, trials.index(t)))
    result = Plan(name, method, size, count, str(dtype or model.dtype).replace("torch.", ""), budget_bytes, device,
                  parts, trials, fitting[0] if fitting else smallest, quantized, backend)
    if not fitting:
        error = ParameterError(
            f"{method} on {name} at {size[0]}x{size[1]} does not fit {gb(budget_bytes)} with any measure: the smallest "
            f"budget that fits is {gb(smallest.peak + RESERVE)} ({smallest.measure.name}; peak {gb(smallest.peak)} at "
            f"{smallest.at} + {gb(RESERVE)} reserve). Use a smaller size, or a card with that much memory.")
        error.plan = result
        raise error
    return result


def _weights(pipe, family, method, components, dtype) -> tuple[dict, list]:
    """Bytes per component (in `dtype` where given) and their table rows; personalize adds the default adapter's
    image encoder and IP-Adapter when none is loaded."""
    weights = {key: module_bytes(module, dtype) for key, module in components.items()}
    parts = [(f"weights: {key}", weights[key], f"{sum(p.numel() for p in module.parameters()) / 1e9:.2f} B params, "
              f"{str(dtype or module.dtype).replace('torch.', '')}") for key, module in components.items()]
    if method == "personalize":
        for key, size_bytes in _adapter_parts(pipe, family).items():
            weights[key.split(" ")[0]] = size_bytes
            parts.append((f"weights: {key}", size_bytes, "image encoder + IP-Adapter of the default adapter"))
    return weights, parts


def _trials(pipe, family, variants, components, weights, quantized, backend, g, device) -> list[Trial]:
    """Every measure in the order of the ladder (module docstring), each with the method's option variants."""
    ladder = [(q, off) for q in (None, "int8") + (("nf4",) if device == "cuda" else ()) for off in (None, "model", "group")]
    grouped = {key: _groups(module, GROUP_BLOCKS.get(type(module).__name__, ()))
               for key, module in components.items() if key != "vae"}
    trials = []
    for quantize, offload in ladder:
        sizes = _quantized_sizes(components, weights, quantized, quantize, backend)
        for options, (steps, stores) in variants.items():
            trials.append(_evaluate(pipe, family, Measure(offload, quantize, options), steps, stores, sizes, weights,
                                    grouped, quantized, backend, g, device))
    return trials


def _steps(pipe, family, method, g, count, options) -> tuple[list[Step], Stores]:
    """The method's steps in run order (module docstring) and its stores."""
    model = getattr(pipe, family.denoiser)
    calls, stores = METHOD_STEPS[method](pipe, family, model, g, count, options)
    text = [name for name in family.text_encoders if getattr(pipe, name, None) is not None]

    def text_steps(batch, label):
        out = []
        for name in text:
            encoder = getattr(pipe, name)
            t5 = type(encoder).__name__ == "T5EncoderModel"
            tokens = g.text_tokens - (77 if family.name == "sd3" else 0) if t5 else 77
            out.append(Step(f"{label}: {name} (batch {batch})", name, _text_work(encoder, batch, tokens, g.s)))
        return out

    height, width = g.image
    channels = pipe.vae.config.block_out_channels
    inputs = {"compose": 1 + count, "personalize": 0, "invert": count, "edit": count}.get(method, 1)
    outputs = {"compose": 1, "personalize": 1, "edit": count}.get(method, count)
    steps = []
    if inputs:
        steps.append(Step(f"VAE encode (batch {inputs})", "vae", inputs * height * width * 5 * channels[0] * g.vae_s))
    if method == "personalize":  # the loaded image encoder's config, else the default adapter's
        loaded = getattr(pipe, "image_encoder", None)
        encoder = loaded.config.to_dict() if loaded is not None else \
            IMAGE_ENCODERS["flux" if family.name == "flux" else model.config.cross_attention_dim]
        tokens = (encoder["image_size"] // encoder["patch_size"]) ** 2 + 1
        work = 2 * count * tokens * g.s * (4 * encoder["hidden_size"] + 3 * encoder["intermediate_size"])
        steps.append(Step(f"image encoder (batch {2 * count})", "image_encoder", work))
    steps += text_steps(1, "text")
    if method == "edit":
        steps += text_steps(64, "direction sentences")  # directions.build encodes 64 sentences per pass
    for call in calls:
        if call.name in ("sampling", "gradient call") and method in ("translate", "compose"):
            steps += text_steps(count if method == "translate" else 1, "text")
        work = family.call(model, g, call.batch) if call.work is None else call.work
        flops = _flops(model, family, g, call.batch) * call.flops
        steps.append(Step(f"{call.name} (batch {call.batch})", family.denoiser, work + call.extra, call.count, flops,
                          stores=True, injected=call.injected))
    steps.append(Step(f"VAE decode (batch {outputs})", "vae", outputs * height * width * 3 * channels[1] * g.vae_s))
    return steps, stores


def _quant_kind(quantize, backend) -> str | None:
    if quantize is None:
        return None
    return "nf4" if quantize == "nf4" else "int8-bnb" if backend == "bitsandbytes" else "int8-torchao"


def _quantized_sizes(components, weights, quantized, quantize, backend) -> dict:
    """Component -> bytes on the device under `quantize` (module docstring)."""
    kind = _quant_kind(quantize, backend)
    return {key: quantized_bytes(components[key], kind) if kind and key in quantized else size
            for key, size in weights.items()}


def _evaluate(pipe, family, measure, steps, stores, sizes, weights, grouped, quantized, backend, g, device) -> Trial:
    """Peak and slowdown of one measure (module docstring); `sizes`: the components' bytes under its quantization,
    `grouped`: (bytes outside any block, largest block) of the group-offloaded components."""
    kind = _quant_kind(measure.quantize, backend)
    on_cpu = dict(measure.options).get("store") == "cpu"
    movable = {k: v for k, v in stores.sizes.items() if k != "trajectory"} if on_cpu else {}
    moved_store = sum(movable.values())  # on the GPU: the key in use and the next one being copied back
    store_gpu = stores.total - moved_store + min(moved_store, 2 * moved_store // max(1, stores.keys))
    streams = 2 if device == "cuda" else 1
    chain = [c for c in (type(pipe).model_cpu_offload_seq or "").split("->") if c in sizes]
    adapter = sizes.get("ip_adapter", 0)  # lives in the denoiser's attention processors
    flops_rate = GPU_FLOPS / (4 if g.s == 4 else 1)
    slow = QUANT_COMPUTE[kind] if kind and family.denoiser in quantized else 1.0
    resident, moved, peak, at, rows = set(), 0, 0, "", []
    compute, transfer, baseline = 0.0, 0.0, 0.0
    for step in steps:
        name = step.component
        if measure.offload is None:
            on_gpu = sum(v for k, v in sizes.items() if k != "ip_adapter") + adapter
        elif measure.offload == "model":
            if name in chain:
                index = chain.index(name)
                resident.discard(chain[index - 1] if index > 0 else None)
                if name not in resident:
                    resident.add(name)
                    moved += sizes[name]
            on_gpu = sum(sizes[k] for k in resident) + (adapter if family.denoiser in resident else 0)
        else:
            on_gpu = sizes.get("vae", 0) + adapter
            if name in grouped:
                outside, largest = grouped[name]
                ratio = sizes[name] / max(1, weights[name])
                on_gpu += int((outside + streams * largest) * ratio)
                per_call = sizes[name] / PCIE_BYTES_PER_S
                step_compute = step.flops * (slow if name == family.denoiser else 1) / flops_rate
                extra = step.calls * max(0.0, per_call - step_compute) if streams == 2 else step.calls * per_call
                transfer += extra
            elif name != "vae":  # a predicted component (the default image encoder): on the GPU whole while it runs
                on_gpu += sizes.get(name, 0)
        live = store_gpu if step.stores else 0
        total = on_gpu + step.work + live
        rows.append((step.name, on_gpu, step.work, live))
        if total > peak:
            peak, at = total, step.name
        if step.flops:
            call_time = step.flops / flops_rate
            baseline += step.calls * call_time
            compute += step.calls * call_time * (slow if name == family.denoiser else 1)
            if movable and step.injected:
                transfer += step.injected * max(0.0, sum(movable.values()) / stores.keys / PCIE_BYTES_PER_S - call_time)
    transfer += moved / PCIE_BYTES_PER_S
    return Trial(measure, peak, at, (compute + transfer) / max(baseline, 1e-12), rows)


# ----------------------------------------------------------------------------------------- applying a plan
def resolve(memory, target, method: str = "invert", size=None, dtype: torch.dtype | None = None, device=None,
            batch: int | None = None) -> Plan:
    """`memory` as ze.load / --memory take it: a Plan (returned as is) or a budget, planned for `method` on `target`
    (a pipeline or a model's configs) for `device`'s kind."""
    if isinstance(memory, Plan):
        return memory
    kind = "cuda" if torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type == "cuda" else "cpu"
    return plan(target, method, size=size, budget=memory, batch=batch, dtype=dtype, device=kind)


def check_memory(memory, device=None):
    """Refuse a bad `memory=` before any model work: a budget that is not a size, a Plan the device cannot apply."""
    if isinstance(memory, Plan):
        check_applicable(memory, device)
    else:
        parse_bytes(memory, "memory")


def quantization_config(chosen: Plan, dtype: torch.dtype | None = None):
    """diffusers' PipelineQuantizationConfig for from_pretrained under `chosen`'s quantization (None without):
    bitsandbytes 8-bit / nf4 on CUDA plans, torchao int8 weight-only on CPU plans, for `chosen.quantized`."""
    if chosen.measure.quantize is None:
        return None
    import diffusers
    import transformers
    from diffusers import PipelineQuantizationConfig
    mapping = {}
    for name in chosen.quantized:
        library = diffusers if name in ("transformer", "unet") else transformers
        if chosen.quant_backend == "torchao":
            from torchao.quantization import Int8WeightOnlyConfig
            mapping[name] = library.TorchAoConfig(Int8WeightOnlyConfig())
        elif chosen.measure.quantize == "int8":
            mapping[name] = library.BitsAndBytesConfig(load_in_8bit=True)
        else:
            mapping[name] = library.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_compute_dtype=dtype or torch.bfloat16)
    return PipelineQuantizationConfig(quant_mapping=mapping)


def _is_quantized(module) -> bool:
    """True when from_pretrained quantized `module` (diffusers / transformers set `hf_quantizer`) or torchao did."""
    if getattr(module, "hf_quantizer", None) is not None or getattr(module, "is_quantized", False):
        return True
    return any(type(p).__module__.startswith("torchao") for p in module.parameters())


def check_applicable(chosen: Plan, device) -> torch.device:
    """The device the plan is applied on; a ParameterError (before any model work) for what it cannot do there:
    CUDA streams and bitsandbytes need CUDA, 4-bit weights too."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and chosen.device == "cuda" and (
            chosen.measure.offload == "group" or chosen.measure.quantize is not None):
        what = "group offloading with CUDA streams" if chosen.measure.offload == "group" else "bitsandbytes weights"
        raise ParameterError(f"this plan uses {what}, which needs CUDA; the device is {device}. Make the plan for it: "
                             "zeroedit.memory.plan(..., device='cpu') (no streams, torchao int8), or pass a budget.")
    if chosen.measure.quantize == "nf4" and device.type != "cuda":
        raise ParameterError("4-bit weights (bitsandbytes nf4) need CUDA; plan with device='cpu' to stay within int8.")
    return device


def apply(pipe, chosen: Plan, device=None):
    """Apply `chosen` to a loaded pipeline on `device` (None: CUDA if available): quantize what from_pretrained did
    not (torchao int8 weight-only), then model CPU offload / group offload (CUDA streams on CUDA; on CPU onload =
    offload = cpu, no streams) / placement, and record the plan as `pipe.zeroedit_memory_plan`. Results are those of
    the same weights resident (offloading moves weights, it does not change them)."""
    device = check_applicable(chosen, device)
    measure = chosen.measure
    if measure.quantize is not None:
        for name in chosen.quantized:
            module = getattr(pipe, name, None)
            if module is not None and not _is_quantized(module):
                if measure.quantize != "int8":
                    raise ParameterError("4-bit weights are set at load time: ze.load(model, memory=plan) with a "
                                         "model folder or hub id.")
                from torchao.quantization import Int8WeightOnlyConfig, quantize_
                quantize_(module, Int8WeightOnlyConfig())
    if measure.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif measure.offload == "group":
        for name, module in pipe.components.items():
            if not isinstance(module, torch.nn.Module):
                continue
            if name == "vae":
                module.to(device)
                continue
            options = dict(onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
                           num_blocks_per_group=1, use_stream=device.type == "cuda")
            if hasattr(module, "enable_group_offload"):
                module.enable_group_offload(**options)
            else:
                from diffusers.hooks import apply_group_offloading
                apply_group_offloading(module, block_modules=list(GROUP_BLOCKS.get(type(module).__name__, ())),
                                       **options)
    else:
        pipe.to(device)
    pipe.zeroedit_memory_plan = chosen
    logger.info("memory plan applied: %s (peak %s, slowdown %.2fx)", measure.name, gb(chosen.peak), chosen.slowdown)
    return pipe


# ----------------------------------------------------------------------------------------- measuring on any device
class LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of the tensors created and alive inside the block, on any device (CPU included): every tensor an
    op returns is counted until its storage is freed (a weakref finalizer); views and the inputs' storages are not
    counted again. `peak`, `live` in bytes. What validates the activation formulas on CPU.

        with LiveBytes() as tracker:
            model(**inputs)
        tracker.peak
    """

    def __init__(self):
        super().__init__()
        self.live, self.peak, self._seen = 0, 0, set()

    def _free(self, key, size):
        self._seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = torch.utils._pytree.tree_flatten
        inputs = {t.untyped_storage().data_ptr() for t in flat((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for tensor in flat(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in inputs or key in self._seen:
                continue
            self._seen.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)
        return out
