"""`load`: a standard diffusers pipeline (SD 1.x, SD 2.x, SDXL, SD3/SD3.5 or FLUX.1, auto-detected from
model_index.json) from a hub id or a local folder, an offline tiny random-weight one ("tiny", "tiny-xl",
"tiny-sd3", "tiny-flux"), or the project's own trained toy model ("toy", see src/zeroedit/assets/toy/README.md).

Safetensors only, no safety checker, never `trust_remote_code`.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os

import torch

from .devices import compute_dtype, execution_device
from .errors import ModelError, ModelNotFound, ParameterError

logger = logging.getLogger(__name__)

TINY_MODELS = ("tiny", "tiny-xl")
TINY_FLOW_MODELS = ("tiny-sd3", "tiny-flux")
# Offline random-weight tiny models of the later flow families: name -> (module, builder(seed)).
TINY_FAMILIES = {"tiny-flux2": ("zeroedit.tiny_flux2", "build_tiny_flux2"),
                 "tiny-qwen-image": ("zeroedit.tiny_qwenimage", "build_tiny_qwen_image"),
                 "tiny-z-image": ("zeroedit.tiny_zimage", "build_tiny_z_image")}
TOY_MODEL = os.path.join(os.path.dirname(__file__), "assets", "toy")
TOY_FLOW_MODEL = os.path.join(os.path.dirname(__file__), "assets", "toy_flow")  # scripts/train_toy_flow.py
TOY_IP_WEIGHTS = "ip-adapter_toy.safetensors"
OFFLINE_MODELS = TINY_MODELS + ("toy", "toy-flow") + TINY_FLOW_MODELS + tuple(TINY_FAMILIES)  # no download
_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def resolve_dtype(dtype) -> torch.dtype | None:
    """None, a torch dtype, or a name such as "float16" -> torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() not in _DTYPES:
        raise ParameterError(f"dtype {dtype!r} is not supported; use one of float16, bfloat16, float32.")
    return _DTYPES[str(dtype).lower()]


def check_device(device) -> torch.device | None:
    """None or a device this torch can use; else a ParameterError (e.g. "cuda" on a CPU-only machine)."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ParameterError(f"device {device!r} is not a device name ({error}); use e.g. 'cpu' or 'cuda'.") from None
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, AttributeError) as error:
        reason = (str(error).split(". ")[0] or type(error).__name__)[:160]
        if device.type == "cuda":
            reason += f"; {torch.cuda.device_count()} CUDA device(s) visible"
        raise ParameterError(f"device {str(device)!r} cannot be used here ({reason}; torch {torch.__version__}): use "
                             "device='cpu', or a torch build and device for your accelerator.") from None
    return device


def not_found_message(model: str, reason: str, how: str = "load({!r})") -> str:
    """What to do about a model that is not a folder and cannot be fetched from the Hub: download it on a
    connected machine and pass the folder, or use a model that needs no download. `how` words passing a model
    for the reader: `load({!r})` in Python, `--model {}` on the command line."""
    return (f"could not fetch {model!r} from the Hugging Face Hub ({reason}). If you are offline, download it on a "
            f"connected machine (`hf download {model} --local-dir DIR`) and pass the local folder: "
            f"{how.format('DIR')}. These models need no download: {', '.join(OFFLINE_MODELS)} "
            f"(e.g. {how.format('toy')}).")


def _model_index(model: str) -> dict:
    """model_index.json of a local folder or a hub repository (raises ModelNotFound offline)."""
    if os.path.isdir(model):
        path = os.path.join(model, "model_index.json")
        if not os.path.isfile(path):
            raise ModelError(f"{model!r} is a folder but has no model_index.json: point at a diffusers-format "
                             "pipeline folder (the one that holds unet/, vae/, text_encoder/, ...).")
    elif os.path.exists(model):
        raise ModelError(f"{model!r} is a file; zeroedit loads diffusers-format folders. Convert single-file "
                         "checkpoints with diffusers' `from_single_file(...).save_pretrained(folder)` first.")
    else:
        from huggingface_hub import hf_hub_download
        try:
            path = hf_hub_download(model, "model_index.json")
        except Exception as error:  # offline, unknown repo, gated repo, ...
            reason = type(error).__name__
            raise ModelNotFound(not_found_message(model, reason), model, reason) from None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# Flow pipelines zeroedit loads, by model_index.json's `_class_name`; a folder of another class is loaded as its
# family's plain text-to-image pipeline (last column) when its transformer is one of theirs.
FLOW_PIPELINES = {
    "StableDiffusion3Pipeline": "SD3Transformer2DModel",
    "FluxPipeline": "FluxTransformer2DModel",
    "FluxKontextPipeline": "FluxTransformer2DModel",
    "ChromaPipeline": "ChromaTransformer2DModel",
    "Flux2Pipeline": "Flux2Transformer2DModel",
    "Flux2KleinPipeline": "Flux2Transformer2DModel",
    "QwenImagePipeline": "QwenImageTransformer2DModel",
    "QwenImageEditPlusPipeline": "QwenImageTransformer2DModel",
    "ZImagePipeline": "ZImageTransformer2DModel",
}
DEFAULT_FLOW_PIPELINE = {"SD3Transformer2DModel": "StableDiffusion3Pipeline", "FluxTransformer2DModel": "FluxPipeline",
                         "ChromaTransformer2DModel": "ChromaPipeline", "Flux2Transformer2DModel": "Flux2Pipeline",
                         "QwenImageTransformer2DModel": "QwenImagePipeline",
                         "ZImageTransformer2DModel": "ZImagePipeline"}


def _pipeline_class(index: dict):
    """The diffusers pipeline class of a model_index.json: a flow pipeline by its `_class_name` (FLOW_PIPELINES) or
    its transformer's family, SDXL by its second text encoder, else Stable Diffusion 1.x/2.x."""
    import diffusers
    name = index.get("_class_name", "")
    transformer = (index.get("transformer") or [None, None])[-1] or ""
    if name in FLOW_PIPELINES:
        return getattr(diffusers, name)
    if transformer in DEFAULT_FLOW_PIPELINE:
        return getattr(diffusers, DEFAULT_FLOW_PIPELINE[transformer])
    if "transformer" in index:
        raise ModelError(f"{name or 'this pipeline'} ({transformer}) is not supported: zeroedit loads SD 1.x/2.x/XL, "
                         "SD3/SD3.5, FLUX.1 (and Kontext, Chroma), FLUX.2, Qwen-Image and Z-Image pipelines.")
    sdxl = "text_encoder_2" in index or "XL" in name
    return diffusers.StableDiffusionXLPipeline if sdxl else diffusers.StableDiffusionPipeline


# Pipelines whose personalize needs no adapter (their transformers take reference images) or has none to load:
# `load_pipeline` loads them for personalize without an IP-Adapter, and the method says what runs.
NO_ADAPTER_PIPELINES = ("Flux2Pipeline", "Flux2KleinPipeline", "QwenImagePipeline", "QwenImageEditPlusPipeline",
                        "ZImagePipeline", "ChromaPipeline")


def takes_ip_adapter(model: str) -> bool:
    """Whether `ze.load(model, ip_adapter=True)` is what personalize needs: False for the later families (FLUX.2 and
    Qwen-Image-Edit-Plus take reference images natively; Qwen-Image, Z-Image and Chroma have no adapter), read from
    the name of a built-in model or a folder's / cached hub id's model_index.json; True otherwise (a model that
    cannot be read is left to `load` to report)."""
    if model in TINY_FAMILIES:
        return False
    if model in OFFLINE_MODELS:
        return True
    try:
        return _model_index(model).get("_class_name") not in NO_ADAPTER_PIPELINES
    except ModelError:
        return True


def is_sdxl(pipe) -> bool:
    """True for SDXL-style pipelines (two text encoders and text_time conditioning)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def add_toy_ip_adapter(pipe, folder: str = TOY_MODEL):
    """The toy model's trained image encoder and IP-Adapter (scripts/train_toy_ip.py), loaded with diffusers'
    own `load_ip_adapter` from the original-format safetensors file."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
    encoder_dir = os.path.join(folder, "image_encoder")
    if not os.path.isdir(encoder_dir):
        raise ModelError(f"the toy model in {folder!r} has no image encoder / IP-Adapter; train one with "
                         "scripts/train_toy_ip.py.")
    encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_dir, dtype=compute_dtype(pipe.unet),
                                                            use_safetensors=True)
    pipe.register_modules(image_encoder=encoder.to(execution_device(pipe)).eval(),
                          feature_extractor=CLIPImageProcessor.from_pretrained(os.path.join(folder, "feature_extractor")))
    pipe.load_ip_adapter(folder, subfolder="ip_adapter", weight_name=TOY_IP_WEIGHTS, image_encoder_folder=None)
    return pipe


# The reference IP-Adapters (h94/IP-Adapter) by the UNet's text width: SD 1.x (768) and SDXL (2048).
DEFAULT_IP_ADAPTERS = {
    768: {"pretrained_model_name_or_path_or_dict": "h94/IP-Adapter", "subfolder": "models",
          "weight_name": "ip-adapter_sd15.safetensors"},
    2048: {"pretrained_model_name_or_path_or_dict": "h94/IP-Adapter", "subfolder": "sdxl_models",
           "weight_name": "ip-adapter_sdxl.safetensors"},
}


# FLUX.1's IP-Adapter (XLabs), as diffusers' FluxIPAdapterMixin documents it, with its CLIP-L image encoder.
FLUX_IP_ADAPTER = {"pretrained_model_name_or_path_or_dict": "XLabs-AI/flux-ip-adapter",
                   "weight_name": "ip_adapter.safetensors",
                   "image_encoder_pretrained_model_name_or_path": "openai/clip-vit-large-patch14"}


def default_ip_adapter(pipe) -> dict:
    """`load_ip_adapter` arguments of the reference IP-Adapter for this pipeline's family (ip_adapter=True)."""
    if type(pipe).__name__ == "FluxPipeline":
        return FLUX_IP_ADAPTER
    if getattr(pipe, "unet", None) is None:
        raise ParameterError(f"ip_adapter: {type(pipe).__name__} has no IP-Adapter that personalize can use "
                             "(personalize runs on SD 1.x/2.x/XL and FLUX.1).")
    width = pipe.unet.config.cross_attention_dim
    if width not in DEFAULT_IP_ADAPTERS:
        raise ParameterError(f"there is no default IP-Adapter for this model (text width {width}; h94/IP-Adapter has "
                             "SD 1.x and SDXL ones): pass ip_adapter={...} with diffusers' load_ip_adapter arguments.")
    return DEFAULT_IP_ADAPTERS[width]


def fetch_configs(model: str) -> str:
    """The folder of a model's configs: a local folder as is; a hub id's *.json files (from the cache, or fetched)."""
    if os.path.isdir(model):
        return model
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(model, allow_patterns=["*.json"])
    except Exception as error:  # offline and not cached, unknown or gated repo
        raise ModelError(f"could not fetch the configs of {model!r} to plan its memory ({type(error).__name__}); "
                         "pass a local folder.") from None


class _EmptyFp32Notice(logging.Filter):
    """diffusers 0.42's `ModelMixin.to()` warns "There are modules in ... that should be kept in float32: []" on
    every dtype cast, also when that list is empty (`fp32_modules = ... or []`, then `is not None`), and
    `load_ip_adapter` casts the UNet: every personalize load printed it. Only the empty-list notice is dropped."""

    def filter(self, record):
        return "should be kept in float32: []" not in record.getMessage()


@contextlib.contextmanager
def _without_empty_fp32_notice():
    """Drop `_EmptyFp32Notice`'s message from diffusers' model logger while loading (a decorator of `load`)."""
    notice, modeling = _EmptyFp32Notice(), logging.getLogger("diffusers.models.modeling_utils")
    modeling.addFilter(notice)
    try:
        yield
    finally:
        modeling.removeFilter(notice)


@_without_empty_fp32_notice()
def load(model: str = "tiny", dtype=None, device=None, ip_adapter=None, seed: int = 0, memory=None):
    """Return a standard diffusers pipeline.

    model: "tiny" / "tiny-xl" / "tiny-sd3" / "tiny-flux" (offline random weights built from `seed`), "toy"
    (the trained toy-world model, 64 px, offline), "toy-flow" (its SD3-layout rectified-flow counterpart,
    src/zeroedit/assets/toy_flow), a hub id, or a local folder (SD3 / FLUX folders are detected from
    model_index.json).
    dtype: torch dtype or its name; device: where to move the pipeline.
    ip_adapter: for `personalize`: True loads the tiny models' random adapter, the toy model's trained one, or
    the reference h94/IP-Adapter of an SD 1.x / SDXL model (`DEFAULT_IP_ADAPTERS`) or XLabs' of FLUX.1
    (`FLUX_IP_ADAPTER`); a dict gives the arguments
    of diffusers' `pipe.load_ip_adapter` (e.g. {"pretrained_model_name_or_path_or_dict": "h94/IP-Adapter",
    "subfolder": "sdxl_models", "weight_name": "ip-adapter_plus_sdxl_vit-h.safetensors"}).
    memory: what fits on your GPU (zeroedit.memory): a budget ("24GB" = 24·10^9 bytes, "16GiB" = 16·2^30) planned
    for `invert` (the plain denoising loop) at the native size, or a `zeroedit.memory.Plan` (e.g. plan(model,
    "compose", budget="24GB") for a method's own stores); its quantization is set at from_pretrained time, its
    offloading after loading on `device`; the plan is kept as `pipe.zeroedit_memory_plan`.
    """
    torch_dtype = resolve_dtype(dtype)
    device = check_device(device)
    if not isinstance(model, str) and not isinstance(model, os.PathLike):
        raise ModelError(f"model must be a name, hub id or folder (a string), got {type(model).__name__}.")
    model = os.fspath(model)
    chosen = None
    if memory is not None:
        from .memory import check_memory
        check_memory(memory, device)
    if model in TINY_FAMILIES:
        if ip_adapter:
            raise ParameterError(f"ip_adapter: {model} has no IP-Adapter to load; personalize on FLUX.2 (and "
                                 "Qwen-Image-Edit-Plus) takes reference images natively, Qwen-Image and Z-Image have "
                                 "no way in for them.")
        module, builder = TINY_FAMILIES[model]
        pipe = getattr(importlib.import_module(module), builder)(seed)
    elif model in TINY_FLOW_MODELS:
        if ip_adapter and model == "tiny-sd3":
            raise ParameterError("ip_adapter: tiny-sd3 has no IP-Adapter (personalize runs on UNet models and FLUX.1).")
        from .tiny_flow import build_tiny_flux, build_tiny_sd3
        pipe = build_tiny_sd3(seed) if model == "tiny-sd3" else build_tiny_flux(seed)
        if ip_adapter:
            from .tiny_ip import add_tiny_flux_ip_adapter
            add_tiny_flux_ip_adapter(pipe, seed=seed)
    elif model in TINY_MODELS:
        from .tiny import build_tiny_sd, build_tiny_sdxl
        pipe = build_tiny_sd(seed) if model == "tiny" else build_tiny_sdxl(seed)
        if ip_adapter:
            from .tiny_ip import add_tiny_ip_adapter
            add_tiny_ip_adapter(pipe, seed=seed, **(ip_adapter if isinstance(ip_adapter, dict) else {}))
    else:
        if model == "toy-flow" and ip_adapter:
            raise ParameterError("the toy flow model has no IP-Adapter; use load('toy', ip_adapter=True).")
        model = {"toy": TOY_MODEL, "toy-flow": TOY_FLOW_MODEL}.get(model, model)  # the project's own, offline
        index = _model_index(model)
        pipeline_class = _pipeline_class(index)
        kwargs = dict(dtype=torch_dtype or torch.float32, use_safetensors=True)  # fp16 files load as fp32 unless asked
        if pipeline_class.__name__ == "StableDiffusionPipeline":
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        # a component saved as null (e.g. SD3 without T5) must be passed as None explicitly
        kwargs.update({name: None for name, entry in index.items() if isinstance(entry, list) and entry == [None, None]})
        if memory is not None:  # quantization is chosen before the weights load
            from .memory import quantization_config, resolve
            chosen = resolve(memory, fetch_configs(model), dtype=kwargs["dtype"], device=device)
            quantization = quantization_config(chosen, torch_dtype)
            if quantization is not None:
                kwargs["quantization_config"] = quantization
        try:
            pipe = pipeline_class.from_pretrained(model, **kwargs)
        except OSError as error:
            raise ModelError(f"could not load {model!r}: {error}. zeroedit loads safetensors weights only.") from None
        pipe.set_progress_bar_config(disable=True)
        if ip_adapter and model == TOY_MODEL and not isinstance(ip_adapter, dict):
            add_toy_ip_adapter(pipe)
        elif ip_adapter:
            pipe.load_ip_adapter(**(ip_adapter if isinstance(ip_adapter, dict) else default_ip_adapter(pipe)))
    if memory is not None:
        from .memory import apply, resolve
        if chosen is None:  # built in-process (tiny models): planned on the pipeline itself, quantized after loading
            pipe = pipe.to(dtype=torch_dtype) if torch_dtype is not None else pipe
            chosen = resolve(memory, pipe, dtype=torch_dtype, device=device)
        return apply(pipe, chosen, device)
    if torch_dtype is not None or device is not None:
        pipe = pipe.to(device=device, dtype=torch_dtype)
    return pipe
