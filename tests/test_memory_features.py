"""Every method under diffusers' memory features (issue 24, items 1, 2, 4b, 5): group offloading, model and
sequential CPU offload, layerwise casting, torchao and quanto int8 weights, caches, stores on the CPU, and
compile= on flow transformers.

Each method (compose, translate, edit with its gradient call, personalize, invert + reconstruct) runs on a UNet
model (tiny) and a flow model (tiny-flux) under each feature and must equal a resident run:
- offloading (model, sequential, group block/leaf level): the same pipeline resident, to float tolerance
  (ATOL/RTOL below; on the CPU the results are bitwise equal);
- layerwise casting (float8 storage, float32 compute) and int8 weights: the resident run of the same rounded
  weights (a float32 twin whose weights are the float8 / dequantized int8 values), to float tolerance for float8
  and to INT8_TOL for int8 (its kernels apply the scale after the matmul). Against the original float32 weights
  the int8 runs differ by about 1e-2 in the latents (`test_quantization_error`).
and leave the pipeline as it was given: `zeroedit.devices.state(pipe)` (hooks, offload bookkeeping, processors,
parameter devices and dtypes) equal before and after.

The default run covers every (method, feature) pair once, on the UNet or the flow model in turn;
ZEROEDIT_TEST_MEMORY=all runs the whole matrix on tiny, tiny-flux and tiny-sd3 (the file took 72 s instead of 45 s
on 2 shared CPU cores).
CUDA streams (group offloading with use_stream=True), model offload onto a GPU and pinned CPU stores need CUDA and
are skipped without it.
"""
import os
import tempfile

import accelerate
import pytest
import torch
from diffusers import QuantoConfig, TorchAoConfig
from diffusers.hooks import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast
from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import zeroedit as ze
from zeroedit import devices
from zeroedit.backbones import Backbone, FlowBackbone, backbone_for
from zeroedit.backbones.vae import vae_in
from zeroedit.control import Store
from zeroedit.errors import ParameterError, UnsupportedFeature
from zeroedit.tiny_ip import add_tiny_flux_ip_adapter

from conftest import make_image

ATOL = RTOL = 1e-4  # float tolerance, as the compile and batch tests
INT8_TOL = 1e-3  # int8 kernels scale after the matmul, the twin before it: rounding differs (measured ≤ 2e-4)
FULL = os.environ.get("ZEROEDIT_TEST_MEMORY") == "all"
A, B = make_image(0), make_image(1)
CPU = torch.device("cpu")
INJECT = dict(feature_steps=1.0, attention_steps=1.0)  # translate records and injects at every step


# ----------------------------------------------------------------------------------------- methods
def _compose(pipe, **kwargs):
    """TF-ICON with its q/k (or FLUX's background K/V) recorded and injected at every step."""
    return ze.compose(pipe, A, B, region=(30, 30, 90, 90), steps=5, tau_a=1.0, seed=0, output_type="latent",
                      **kwargs).latents


def _translate(pipe, **kwargs):
    return ze.translate(pipe, A, "a dog", steps=3, **INJECT, output_type="latent", **kwargs).latents


def _edit(pipe, **kwargs):
    """pix2pix-zero: its guidance takes a backward pass through the denoiser at every step."""
    out = ze.edit(pipe, A, steps=2, reg_steps=1, seed=0, output_type="latent", **kwargs)
    assert out.stats.unet_backward == 2
    return out.latents


def _personalize(pipe):
    return ze.personalize(pipe, "a cat", {"cat": B}, steps=2, seed=0, output_type="latent").images


def _invert(pipe):
    inversion = ze.invert(pipe, A, steps=2)
    back = ze.reconstruct(pipe, inversion, output_type="latent").latents
    return torch.cat([inversion.latents.flatten(), back.flatten()])


METHODS = {"compose": _compose, "translate": _translate, "edit": _edit, "personalize": _personalize, "invert": _invert}


# ----------------------------------------------------------------------------------------- features
def _group(level):
    def enable(pipe):
        kwargs = dict(num_blocks_per_group=1) if level == "block_level" else {}
        devices.denoiser(pipe).enable_group_offload(onload_device=CPU, offload_type=level, **kwargs)
    return enable


def _sequential(pipe):
    """What enable_sequential_cpu_offload applies per component (accelerate.cpu_offload: weights on the meta device
    between calls), on the denoiser and the VAE: on the whole pipeline plain diffusers fails here already
    (accelerate 1.16 on transformers 5.25's CLIP embedding, set_module_tensor_to_device), before zeroedit."""
    for model in (pipe.vae, devices.denoiser(pipe)):
        accelerate.cpu_offload(model, execution_device=CPU)


def _layerwise(pipe):
    devices.denoiser(pipe).enable_layerwise_casting(
        storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32,
        skip_modules_pattern=DEFAULT_SKIP_MODULES_PATTERN + ("encoder_hid_proj",))  # see test_layerwise_ip_projection


def _quantized(config):
    """The denoiser reloaded through diffusers' quantizer (as PipelineQuantizationConfig does per component); an
    IP-Adapter is loaded onto the quantized model afterwards, as a user would."""
    def enable(pipe):
        adapter = getattr(pipe, "image_encoder", None) is not None
        model = devices.denoiser(pipe)
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)  # without the adapter's processors
            quantized = type(model).from_pretrained(folder, quantization_config=config(), torch_dtype=torch.float32)
        pipe.register_modules(**{_name(pipe): quantized})
        if adapter:  # FLUX only: diffusers' load_ip_adapter refuses a quantized UNet (see _skip_unsupported)
            add_tiny_flux_ip_adapter(pipe)
    return enable


def _torchao():
    from torchao.quantization import Int8WeightOnlyConfig
    return TorchAoConfig(Int8WeightOnlyConfig())


FEATURES = {  # name: (enable(pipe), compared with the same weights rounded as stored, tolerance)
    "model_offload": (lambda pipe: pipe.enable_model_cpu_offload(device="cpu"), False, ATOL),
    "sequential_offload": (_sequential, False, ATOL),
    "group_block": (_group("block_level"), False, ATOL),
    "group_leaf": (_group("leaf_level"), False, ATOL),
    "layerwise_fp8": (_layerwise, True, ATOL),
    "torchao_int8": (_quantized(_torchao), True, INT8_TOL),
    "quanto_int8": (_quantized(lambda: QuantoConfig(weights_dtype="int8")), True, INT8_TOL),
}


def _name(pipe) -> str:
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def _load(family, method):
    return ze.load(family, ip_adapter=method == "personalize")


def _twin(pipe, family, method):
    """A resident pipeline whose denoiser holds the float32 values of `pipe`'s stored weights (float8 upcast,
    int8 dequantized): what the feature computes with, without the feature."""
    twin = _load(family, method)
    model = devices.denoiser(twin)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in devices.denoiser(pipe).named_parameters():
            params[name].copy_(value.dequantize() if hasattr(value, "dequantize") else value)
    return twin


def _unsupported(feature, family, method) -> str | None:
    """Why a case cannot run, before zeroedit is involved (None: it runs)."""
    if method == "personalize" and family == "tiny-sd3":
        return "no SD3 IP-Adapter in diffusers"
    if method == "personalize" and family == "tiny" and feature in ("torchao_int8", "quanto_int8"):
        return ("diffusers' load_ip_adapter refuses a quantized UNet ('Casting a quantized model to a new dtype is "
                "unsupported'), before zeroedit")
    return None


def _cases():
    families = ("tiny", "tiny-flux")
    if FULL:
        return [(f, fam, m) for fam in families + ("tiny-sd3",) for f in FEATURES for m in METHODS]
    cases = []  # every (feature, method) pair once, the families in turn (the other one where a case cannot run)
    for i, (feature, method) in enumerate((f, m) for f in FEATURES for m in METHODS):
        family = families[i % 2]
        if _unsupported(feature, family, method):
            family = families[(i + 1) % 2]
        cases.append((feature, family, method))
    return cases


def _warm(pipe):
    """transformers 5 installs its output-capturing forward hooks on a text encoder's first call that asks for
    hidden states (SD3's CLIP encoders), and keeps them: one encoding first, so the snapshot is taken after them."""
    if getattr(pipe, "transformer", None) is not None:
        backbone_for(pipe).encode_prompt("")


_RESIDENT: dict = {}


def _resident(family, method):
    if (family, method) not in _RESIDENT:
        _RESIDENT[family, method] = METHODS[method](_load(family, method))
    return _RESIDENT[family, method]


@pytest.mark.parametrize("feature,family,method", _cases())
def test_method_under_memory_feature(feature, family, method):
    """The method under the feature equals its resident run (see module docstring) and leaves the pipeline's
    hooks, offload state, processors, devices and dtypes as they were."""
    if _unsupported(feature, family, method):
        pytest.skip(_unsupported(feature, family, method))
    enable, rounded, tolerance = FEATURES[feature]
    pipe = _load(family, method)
    enable(pipe)
    _warm(pipe)
    before = devices.state(pipe)
    out = METHODS[method](pipe)
    assert devices.state(pipe) == before
    reference = METHODS[method](_twin(pipe, family, method)) if rounded else _resident(family, method)
    torch.testing.assert_close(out, reference, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("feature", ["model_offload", "group_block", "layerwise_fp8", "torchao_int8"])
@pytest.mark.parametrize("family", ["tiny-flux2", "tiny-qwen-image", "tiny-z-image"])
def test_later_families_under_memory_features(feature, family):
    """FLUX.2, Qwen-Image and Z-Image: translate (values injected at every step; their blocks' features are refused on
    FLUX.2 and Z-Image) and compose under model offload, group offloading, float8 storage and torchao int8 equal
    their resident runs (the same rounded weights where stored rounded) and leave the pipeline as given."""
    enable, rounded, tolerance = FEATURES[feature]

    def run(pipe):
        translated = ze.translate(pipe, A, "a dog", steps=3, attention_steps=1.0, output_type="latent").latents
        return [translated, _compose(pipe)]

    pipe = _load(family, "translate")
    enable(pipe)
    _warm(pipe)
    before = devices.state(pipe)
    out = run(pipe)
    assert devices.state(pipe) == before
    twin = _twin(pipe, family, "translate") if rounded else _load(family, "translate")
    for ours, theirs in zip(out, run(twin)):
        torch.testing.assert_close(ours, theirs, atol=tolerance, rtol=tolerance)


def test_quantization_error():
    """The int8 runs against the original float32 weights (stated in the README): translate on tiny-flux."""
    resident = _resident("tiny-flux", "translate")
    for feature in ("torchao_int8", "quanto_int8"):
        pipe = ze.load("tiny-flux")
        FEATURES[feature][0](pipe)
        error = (_translate(pipe) - resident).abs().max().item()
        assert 1e-4 < error < 5e-2, (feature, error)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams, a GPU execution device and pinned memory")
@pytest.mark.parametrize("family", ["tiny", "tiny-flux"])
@pytest.mark.parametrize("setting", ["stream_block", "stream_leaf", "model_offload", "store_cpu"])
def test_on_a_gpu(family, setting):
    """GPU-only: group offloading with CUDA streams (block and leaf level), model offload onto the GPU, stores in
    pinned CPU memory; every method equals its resident GPU run and leaves the pipeline as given."""
    gpu = torch.device("cuda")

    def enable(pipe):
        if setting == "model_offload":
            pipe.enable_model_cpu_offload(device="cuda")
            return
        if setting == "store_cpu":
            pipe.to(gpu)
            return
        pipe.to(gpu)
        model = devices.denoiser(pipe)
        model.to(CPU)
        level = "block_level" if setting == "stream_block" else "leaf_level"
        kwargs = dict(num_blocks_per_group=1) if level == "block_level" else {}
        model.enable_group_offload(onload_device=gpu, offload_device=CPU, offload_type=level, use_stream=True, **kwargs)

    for method, run in METHODS.items():
        resident = run(_load(family, method).to(gpu))
        pipe = _load(family, method)
        enable(pipe)
        _warm(pipe)
        before = devices.state(pipe)
        stored = setting == "store_cpu" and method in ("compose", "translate", "edit")
        out = run(pipe, store="cpu") if stored else run(pipe)
        assert devices.state(pipe) == before, (setting, method)
        torch.testing.assert_close(out.float(), resident.float(), atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------------------------------- devices and dtypes
def test_execution_device_and_compute_dtype_under_each_feature():
    """Backbones make tensors on the execution device (never `meta` or `cpu:0`) in the compute dtype (float32
    under float8 storage)."""
    pipe = ze.load("tiny")
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._execution_device == torch.device("cpu:0") and Backbone(pipe).device == CPU
    pipe = ze.load("tiny-flux")
    _sequential(pipe)
    assert pipe.transformer.device.type == "meta" and FlowBackbone(pipe).device == CPU
    pipe = ze.load("tiny")
    _layerwise(pipe)
    assert pipe.unet.conv_in.weight.dtype == torch.float8_e4m3fn and Backbone(pipe).dtype == torch.float32
    pipe = ze.load("tiny-flux")
    FEATURES["torchao_int8"][0](pipe)
    assert FlowBackbone(pipe).dtype == torch.float32 and devices.compute_dtype(pipe.transformer) == torch.float32


def test_vae_keeps_its_dtype_under_a_feature_a_cast_would_break(caplog):
    """force_upcast's dtype switch (SDXL fp16 VAEs): `.to()` and back on a plain VAE; kept, with a warning, on a
    group-offloaded one (whose hooks keep their own copies of the weights)."""
    vae = ze.load("tiny").vae
    with vae_in(vae, torch.float64) as dtype:
        assert dtype == torch.float64 and vae.dtype == torch.float64
    assert vae.dtype == torch.float32
    vae.enable_group_offload(onload_device=CPU, offload_type="leaf_level")
    pipe = ze.load("tiny")
    pipe.register_modules(vae=vae)
    before = devices.state(pipe)
    with caplog.at_level("WARNING", logger="zeroedit"), vae_in(vae, torch.float64) as dtype:
        assert dtype == torch.float32
    assert devices.state(pipe) == before and "cannot be recast" in caplog.text


# ----------------------------------------------------------------------------------------- refused before model work
def _no_model_work(monkeypatch):
    for cls, name in ((Backbone, "unet_call"), (FlowBackbone, "transformer_call")):
        monkeypatch.setattr(cls, name, lambda *a, **k: pytest.fail("model work before the cache check"))


CALLS = {"compose": lambda p: ze.compose(p, A, B, region=(30, 30, 90, 90), steps=2),
         "translate": lambda p: ze.translate(p, A, "a dog", steps=2),
         "edit": lambda p: ze.edit(p, A, steps=2, source="cat", target="dog"),
         "personalize": lambda p: ze.personalize(p, "a cat", {"cat": B}, steps=2),
         "invert": lambda p: ze.invert(p, A, steps=2)}


@pytest.mark.parametrize("family", ["tiny", "tiny-flux"])
def test_caches_are_refused_before_model_work(family, monkeypatch):
    """A diffusers cache skips blocks or reuses their outputs: every method refuses it with UnsupportedFeature,
    naming the cache and how to switch it off, before any model call; the pipeline is untouched."""
    pipe = ze.load(family, ip_adapter=True)  # for personalize; the others refuse before they would need its absence
    if family == "tiny-flux":
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
        expected = ("FirstBlockCache", "pipe.transformer.disable_cache()")
    else:  # a UNet has no enable_cache: a cache applied with its apply_* function
        apply_pyramid_attention_broadcast(pipe.unet, PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500))
        expected = ("PyramidAttentionBroadcast", "remove_hook")
    _no_model_work(monkeypatch)
    before = devices.state(pipe)
    for method, call in CALLS.items():
        with pytest.raises(UnsupportedFeature) as error:
            call(pipe)
        assert all(text in str(error.value) for text in expected), (method, str(error.value))
    assert devices.state(pipe) == before
    if family == "tiny-flux":
        pipe.transformer.disable_cache()
        assert devices.cache_hooks(pipe.transformer) == []


@pytest.mark.parametrize("family", ["tiny", "tiny-flux"])
def test_layerwise_ip_projection_is_refused(family, monkeypatch):
    """diffusers' IP-Adapter image projection casts its input to its float8 storage dtype and fails: personalize
    says so before model work, with the skip pattern that works (used by the matrix above)."""
    pipe = ze.load(family, ip_adapter=True)
    devices.denoiser(pipe).enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    _no_model_work(monkeypatch)
    with pytest.raises(UnsupportedFeature, match="encoder_hid_proj"):
        _personalize(pipe)


# ----------------------------------------------------------------------------------------- stores
@pytest.mark.parametrize("family", ["tiny", "tiny-flux"])
def test_store_sizes_and_cpu_store(family):
    """stats.store_bytes names each method's stores (Stats' docstring) and sizes them; store="cpu" gives the same
    result and sizes (on a CPU-only run both stores are CPU memory)."""
    pipe = ze.load(family)
    flow = family == "tiny-flux"
    runs = {"compose": lambda **k: ze.compose(pipe, A, B, region=(30, 30, 90, 90), steps=5, tau_a=1.0, seed=0,
                                              output_type="latent", **k),
            "translate": lambda **k: ze.translate(pipe, A, "a dog", steps=3, **INJECT, output_type="latent", **k),
            "edit": lambda **k: ze.edit(pipe, A, steps=2, reg_steps=0, seed=0, output_type="latent", **k)}
    names = {"compose": {"background_kv"} if flow else {"qk"}, "translate": {"features", "attention"},
             "edit": {"guidance"}}
    for method, run in runs.items():
        default, on_cpu = run(), run(store="cpu")
        assert set(default.stats.store_bytes) == names[method] and min(default.stats.store_bytes.values()) > 0
        assert on_cpu.stats.store_bytes == default.stats.store_bytes
        assert on_cpu.stats.params["store"] == "cpu" and default.stats.params["store"] is None
        assert torch.equal(on_cpu.latents, default.latents), method
    if flow:
        composite = ze.compose(pipe, A, B, region=(30, 30, 90, 90), steps=5, tau_a=1.0, seed=0, attention="composite",
                               output_type="latent")
        assert set(composite.stats.store_bytes) == {"qk"}
    with pytest.raises(ParameterError, match="store"):
        ze.translate(pipe, A, "a dog", store="gpu")


def test_store_copies_offloaded_tensors_and_rebuilds_swapped_weights(monkeypatch):
    """The offloading paths of Store without a GPU (pinned memory needs CUDA: a plain copy stands in): recorded
    tensors are held as compact copies and read back equal; in a gradient call activations are copied and counted,
    weights are kept by reference and rebuilt in the dtype the forward used when a feature cast them since."""
    monkeypatch.setattr(Store, "_host", lambda self, tensor: tensor.detach().clone())
    store = Store("cpu")
    store.offload = True
    batch = torch.randn(3, 4, 5)
    store[("layer", "k", 0)] = batch[1:2]
    assert store.nbytes() == 4 * 5 * 4 and store[("layer", "k", 0)].untyped_storage().nbytes() == 4 * 5 * 4
    assert torch.equal(store[("layer", "k", 0)], batch[1:2])

    layer = torch.nn.Linear(5, 5)
    x = torch.randn(2, 5, requires_grad=True)
    expected, = torch.autograd.grad(layer(x).tanh().sum(), x)
    with store.saved_tensors():
        loss = layer(x).tanh().sum()
    layer.weight.data = layer.weight.data.to(torch.float64)  # what a storage cast does between forward and backward
    grad, = torch.autograd.grad(loss, x)
    assert torch.allclose(grad, expected) and store.saved_bytes > 0


def test_cli_store_flag():
    from zeroedit.cli import build_parser, resolve_arguments
    parser = build_parser()
    for method in ("compose", "translate", "edit"):
        helptext = " ".join(parser._subparsers._group_actions[0].choices[method].format_help().split())
        assert "--store STORE" in helptext and "pinned CPU memory" in helptext
    args = parser.parse_args(["translate", "--image", "x.png", "--prompt", "a dog", "--store", "cpu"])
    assert resolve_arguments("translate", vars(args), {}, None)["store"] == "cpu"


# ----------------------------------------------------------------------------------------- compile on flow transformers
@pytest.mark.parametrize("family", ["tiny-flux", "tiny-sd3"])
def test_flow_compile_compiles_repeated_blocks_once_and_leaves_the_model(family, monkeypatch):
    """compile= on SD3/FLUX compiles the repeated blocks (regional compilation) with the controlled layers eager:
    equal to eager; the second method call compiles nothing (dynamo's frame count); no compiled callable is left on
    any module of the transformer, and the pipeline's state is as before."""
    pipe = ze.load(family)
    image = make_image(2)

    def translate(compile):
        return ze.translate(pipe, image, "a dog", steps=2, attention_steps=1, output_type="latent", compile=compile)

    eager = translate(False)
    counter = CompileCounter()
    before = devices.state(pipe)
    first = translate({"backend": counter})
    compiled_first = counter.frame_count
    second = translate({"backend": counter})
    assert compiled_first > 0 and counter.frame_count == compiled_first, "the second call compiled graphs"
    assert devices.state(pipe) == before
    assert all(module._compiled_call_impl is None for module in pipe.transformer.modules())
    torch.testing.assert_close(first.latents, eager.latents, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(second.latents, eager.latents, atol=ATOL, rtol=RTOL)


def test_flow_edit_gradient_through_compiled_blocks():
    """edit's guidance gradient flows through the compiled blocks (aot_eager: AOT autograd, as inductor uses, with
    the Store's saved-tensor hooks); equal to eager, and the second call compiles nothing."""
    pipe = ze.load("tiny-flux")

    def edit(compile):
        return ze.edit(pipe, A, steps=2, reg_steps=0, seed=0, output_type="latent", compile=compile)

    eager = edit(False)
    first = edit({"backend": "aot_eager"})
    graphs = counters["stats"]["unique_graphs"]
    edit({"backend": "aot_eager"})
    assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs
    assert first.stats.unet_backward == 2
    torch.testing.assert_close(first.latents, eager.latents, atol=ATOL, rtol=RTOL)
