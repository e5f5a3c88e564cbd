"""Where and in what dtype the work runs, under diffusers' memory features, and what a call must leave as it was.

diffusers' memory features move weights between devices and dtypes behind hooks, so a module's `.device` and
`.dtype` say where its weights are *stored*, not where it computes:
- model CPU offload (`enable_model_cpu_offload`): accelerate `CpuOffload` hooks; a model sits on the CPU until its
  forward moves it to the execution device;
- sequential CPU offload (`enable_sequential_cpu_offload`): accelerate `AlignDevicesHook`s on every leaf; the
  weights are on the `meta` device between calls;
- group offloading (`enable_group_offload`, block or leaf level, with or without CUDA streams): diffusers'
  `HookRegistry` hooks swap the parameters' data between the offload and the onload device;
- layerwise casting (`enable_layerwise_casting`): weights stored in e.g. float8, cast to the compute dtype around
  each leaf's forward;
- quantized weights (torchao, bitsandbytes, GGUF, quanto): integer storage, the model's compute dtype for the rest.

`execution_device(pipe)` is diffusers' `DiffusionPipeline._execution_device` with its gaps closed (the denoiser's
own hooks first, a `meta` answer never, `cpu:0` as `cpu`); `compute_dtype(module)` is the dtype tensors are made
in. `forward_context(module)` runs submodules of a hooked model directly as if inside its forward (TF-ICON's
exceptional prompt bypasses the text encoder's `forward`); `stored_values` reads a weight that sequential offload
keeps off the module; `offload_models(pipe)` puts model-offloaded components back on the CPU after a call.
`check_no_cache(model)` refuses the diffusers caches (`enable_cache`) that skip blocks. `state(pipe)` snapshots
every hook, processor, device and dtype a call must leave unchanged, for tests to compare.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import UnsupportedFeature

GROUP_OFFLOADING = "group_offloading"  # diffusers/hooks/group_offloading.py _GROUP_OFFLOADING
LAYERWISE_CASTING = "layerwise_casting"  # diffusers/hooks/layerwise_casting.py _LAYERWISE_CASTING_HOOK
# The hook names of diffusers 0.42's caches (hooks/first_block_cache.py, taylorseer_cache.py, mag_cache.py,
# faster_cache.py, pyramid_attention_broadcast.py, sea_cache.py, text_kv_cache.py): each skips or replaces blocks.
CACHE_HOOKS = {
    "fbc_leader_block_hook": "FirstBlockCache", "fbc_block_hook": "FirstBlockCache",
    "taylorseer_cache": "TaylorSeerCache",
    "mag_cache_leader_block_hook": "MagCache", "mag_cache_block_hook": "MagCache",
    "faster_cache_denoiser": "FasterCache", "faster_cache_block": "FasterCache",
    "pyramid_attention_broadcast": "PyramidAttentionBroadcast",
    "sea_cache_root": "SeaCache", "sea_cache_leader_block": "SeaCache", "sea_cache_block": "SeaCache",
    "sea_cache_post_norm": "SeaCache",
    "text_kv_cache_transformer": "TextKVCache", "text_kv_cache_block": "TextKVCache",
}


def _registry_hooks(module) -> dict:
    """The diffusers HookRegistry hooks of one module, by name (empty without a registry)."""
    registry = getattr(module, "_diffusers_hook", None)
    return dict(getattr(registry, "hooks", None) or {})


def _hooked_device(model) -> torch.device | None:
    """Where a hooked model computes: the onload device of its group offloading, else the execution device of
    an accelerate hook on it or a submodule (model and sequential CPU offload); None without such hooks."""
    for module in model.modules():
        hook = _registry_hooks(module).get(GROUP_OFFLOADING)
        if hook is not None:
            return torch.device(hook.config.onload_device)
    for module in model.modules():
        device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    return None


def _normal(device: torch.device) -> torch.device:
    """`cpu:0` (what enable_model_cpu_offload(device="cpu") records) is the CPU; a meta answer means the CPU too."""
    return torch.device("cpu") if device.type in ("cpu", "meta") else device


def denoiser(pipe):
    """The pipeline's UNet, or its SD3/FLUX transformer."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else getattr(pipe, "transformer", None)


def execution_device(pipe) -> torch.device:
    """The device the pipeline's work runs on, where every tensor a method makes belongs (noise, masks,
    timesteps, token ids, stores copied back). diffusers' `_execution_device` answers from the first component it
    meets, which misses a denoiser offloaded on its own, and gives `cpu:0` or (sequential offload of unhooked
    components) `meta`; here the denoiser's own hooks come first, then diffusers' answer, and the CPU is `cpu`."""
    model = denoiser(pipe)
    device = _hooked_device(model) if isinstance(model, torch.nn.Module) else None
    if device is None:
        device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None) or torch.device("cpu")
    return _normal(torch.device(device))


def compute_dtype(module) -> torch.dtype:
    """The dtype a module computes in, and tensors for it are made in: the compute dtype of its layerwise casting
    (its storage may be float8), else its floating dtype (a quantized model's non-quantized layers)."""
    for sub in module.modules():
        hook = _registry_hooks(sub).get(LAYERWISE_CASTING)
        if hook is not None:
            return hook.compute_dtype
    dtype = getattr(module, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype.itemsize > 1:
        return dtype
    for param in module.parameters():  # a float8 or integer first tensor: the first wider floating one
        if param.dtype.is_floating_point and param.dtype.itemsize > 1:
            return param.dtype
    return torch.float32


def swaps_parameters(module) -> bool:
    """True when hooks replace the data of `module`'s parameters after each forward (group offloading moves it,
    layerwise casting casts it): a backward pass then finds other data than its forward used."""
    return any({GROUP_OFFLOADING, LAYERWISE_CASTING} & set(_registry_hooks(sub)) for sub in module.modules())


def recasts(module) -> bool:
    """True when `module.to(dtype)` would break its memory feature: group offloading (its CPU copies keep the old
    dtype), layerwise casting (the hooks cast back to storage) or quantized weights (diffusers refuses)."""
    return swaps_parameters(module) or bool(getattr(module, "is_quantized", False))


def layerwise_hooks(module) -> list:
    """The layerwise-casting hooks of `module` and its submodules."""
    hooks = (_registry_hooks(sub).get(LAYERWISE_CASTING) for sub in module.modules())
    return [hook for hook in hooks if hook is not None]


def stored_values(module, name: str = "weight") -> torch.Tensor:
    """A parameter's values wherever an offload keeps them: the parameter itself, or under sequential CPU offload
    (weights on the `meta` device between calls) the copy in its accelerate hook's weights map."""
    tensor = getattr(module, name)
    weights = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
    if tensor.device.type == "meta" and weights is not None:
        return weights[name]
    return tensor


@contextlib.contextmanager
def forward_context(module):
    """Call submodules of `module` directly as if inside its forward: its offload hooks' `pre_forward` on entry
    (accelerate's model offload moves it to the execution device; a top-level group offloading hook onloads the
    layers no block holds) and, for diffusers' hooks, `post_forward` on exit."""
    accelerate_hook = getattr(module, "_hf_hook", None)
    if accelerate_hook is not None and hasattr(accelerate_hook, "pre_forward"):
        accelerate_hook.pre_forward(module)
    group = _registry_hooks(module).get(GROUP_OFFLOADING)
    if group is not None:
        group.pre_forward(module)
    try:
        yield module
    finally:
        if group is not None:
            group.post_forward(module, None)


def offload_models(pipe):
    """End of a call under model CPU offload: every hooked model back on the CPU with its own hook (diffusers'
    `maybe_free_model_hooks` does it by re-enabling the offload, which replaces the hooks)."""
    for hook in getattr(pipe, "_all_hooks", None) or ():
        hook.offload()


def cache_hooks(model) -> list[str]:
    """The diffusers caches enabled on `model` (FirstBlockCache, TaylorSeerCache, MagCache, FasterCache, ...), by
    `CacheMixin.is_cache_enabled` or by their hooks (applied with `apply_*_cache` directly); empty if none."""
    found = {CACHE_HOOKS[name] for sub in model.modules() for name in _registry_hooks(sub) if name in CACHE_HOOKS}
    config = getattr(model, "_cache_config", None)
    if config is not None:
        found.add(type(config).__name__.replace("Config", ""))
    return sorted(found)


def check_no_cache(model):
    """Refuse a denoiser with a diffusers cache enabled (UnsupportedFeature, before any model work): a cache skips
    blocks or reuses their outputs from an earlier call, so recorded features, injected attention and inversion
    steps would come from blocks that did not run; the message names the cache and how to switch it off."""
    caches = cache_hooks(model)
    if not caches:
        return
    name = "unet" if type(model).__name__.startswith("UNet") else "transformer"
    switch_off = (f"pipe.{name}.disable_cache() before the call (and pipe.{name}.enable_cache(config) after it)"
                  if hasattr(model, "disable_cache") else
                  f"diffusers.hooks.HookRegistry.check_if_exists_or_initialize(pipe.{name}).remove_hook(name, "
                  "recurse=True) for each cache hook you applied")
    raise UnsupportedFeature(f"pipe.{name} has diffusers' {', '.join(caches)} enabled: a cache skips blocks or reuses "
                             "their outputs, which breaks zeroedit's recording, injection and inversion. Switch it "
                             f"off with {switch_off}.")


# ----------------------------------------------------------------------------------------- what a call keeps
def _module_state(module) -> dict:
    """One module's hooks and forward: diffusers' registry (names in order, hook objects), accelerate's hook,
    torch's forward (pre-)hooks, a replaced `forward`, the training flag."""
    registry = getattr(module, "_diffusers_hook", None)
    hooks = tuple((name, id(hook)) for name, hook in _registry_hooks(module).items())
    return dict(registry=(id(registry), tuple(getattr(registry, "_hook_order", ())), hooks) if registry else None,
                accelerate=id(module._hf_hook) if hasattr(module, "_hf_hook") else None,
                torch_hooks=(tuple(module._forward_hooks), tuple(module._forward_pre_hooks)),
                forward=id(module.__dict__["forward"]) if "forward" in module.__dict__ else None,
                training=module.training)


def _component_state(model) -> dict:
    """A model's state: every module's hooks (`_module_state`), every parameter's and buffer's device, dtype,
    shape and requires_grad, its attention processors (when it has them), gradient checkpointing and cache."""
    tensors = {name: (str(t.device), t.dtype, tuple(t.shape), t.requires_grad)
               for name, t in list(model.named_parameters()) + list(model.named_buffers())}
    processors = getattr(model, "attn_processors", None) if hasattr(model, "set_attn_processor") else None
    return dict(modules={name: _module_state(m) for name, m in model.named_modules()}, tensors=tensors,
                processors=None if processors is None else {k: id(p) for k, p in processors.items()},
                checkpointing=getattr(model, "gradient_checkpointing", None),
                cache=id(getattr(model, "_cache_config", None)))


def state(pipe) -> dict:
    """Everything about `pipe` a method call must leave as it found it, as a comparable dict: per component, its
    hooks (diffusers' HookRegistry: group offloading, layerwise casting, caches; accelerate's `_hf_hook`: model and
    sequential offload; torch hooks), processors, parameter devices and dtypes; and the pipeline's offload
    bookkeeping (`_all_hooks`, `_offload_gpu_id`, `_offload_device`)."""
    components = {name: _component_state(model) for name, model in pipe.components.items()
                  if isinstance(model, torch.nn.Module)}
    return dict(components=components,
                all_hooks=tuple(id(hook) for hook in getattr(pipe, "_all_hooks", None) or ()),
                offload_gpu_id=getattr(pipe, "_offload_gpu_id", None),
                offload_device=str(getattr(pipe, "_offload_device", None)))
