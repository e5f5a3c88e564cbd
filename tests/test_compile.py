"""Compiled path (issue 10, part 3): `compile=` on every method runs the UNet under torch.compile with every
control rule active, gives eager's outputs, compiles nothing after the first call of each batch shape, and
compiles nothing at all on a second call with the same shapes; the user's pipeline comes back unchanged.

Counting tests use a no-op counting backend (CompileCounter) or aot_eager: dynamo's tracing, not the
backend, is what recompiles; inductor itself is tested on the invert path of a 2-level UNet only when
ZEROEDIT_TEST_INDUCTOR=1 (its cold compile takes ~95 s on 2 busy CPU cores; ~9 s with a warm cache).
"""
import os
import warnings

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import zeroedit as ze
from zeroedit.backbones import unet as backbone_module
from zeroedit.backbones import Backbone
from zeroedit.cli import build_parser, resolve_arguments
from zeroedit.errors import ParameterError

from conftest import make_image, processors_snapshot


def _pipe_with(tiny_pipe, **unet_config) -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=32,
                                attention_head_dim=2, norm_num_groups=8, **unet_config)
    components = dict(tiny_pipe.components, unet=unet)
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def lean_pipe(tiny_pipe):
    """tiny's text encoder and VAE with a leaner SD-layout UNet (4 levels, one layer per block): the layer
    names every method addresses, about half of tiny's graphs to trace."""
    return _pipe_with(tiny_pipe, layers_per_block=1, block_out_channels=(32, 32, 32, 32),
                      down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def _compiles_per_call(monkeypatch, count) -> list[tuple[int, int]]:
    """Log (batch size, graphs compiled during the call) for every UNet call."""
    log, original = [], Backbone.unet_call

    def counted(self, latents, *args, **kwargs):
        before = count()
        out = original(self, latents, *args, **kwargs)
        log.append((latents.shape[0], count() - before))
        return out
    monkeypatch.setattr(Backbone, "unet_call", counted)
    return log


def _assert_compiles_only_on_new_shapes(log):
    """Graphs are compiled only at a call whose batch differs from the previous call's: no recompilation from
    one step to the next."""
    for index, (batch, compiled) in enumerate(log):
        if index > 0 and batch == log[index - 1][0]:
            assert compiled == 0, f"call {index} (batch {batch}, same as the call before) compiled {compiled} graphs: {log}"


def _unchanged(pipe, snapshot):
    assert processors_snapshot(pipe) == snapshot
    assert pipe.unet._compiled_call_impl is None
    assert type(pipe.unet) is UNet2DConditionModel


def _run_twice(monkeypatch, pipe, method, counter):
    eager = method(False)
    snapshot = processors_snapshot(pipe)
    log = _compiles_per_call(monkeypatch, lambda: counter.frame_count)
    first = method({"backend": counter})
    _unchanged(pipe, snapshot)
    _assert_compiles_only_on_new_shapes(log)
    assert sum(c for _, c in log) > 0 or counter.frame_count > 0
    compiled_callable = backbone_module._COMPILED[pipe.unet][repr(sorted({"backend": counter, "dynamic": False}.items()))]
    log.clear()
    second = method({"backend": counter})
    assert sum(c for _, c in log) == 0, f"a second call with the same shapes compiled graphs: {log}"
    assert backbone_module._COMPILED[pipe.unet][repr(sorted({"backend": counter, "dynamic": False}.items()))] is compiled_callable
    _unchanged(pipe, snapshot)
    return eager, first, second


def test_compose_compiled_equals_eager_and_stops_compiling(lean_pipe, monkeypatch):
    """Composite logits (needs_logits), q/k records during inversion, a first sampling step of batch 4."""
    counter = CompileCounter()
    background, reference = make_image(0), make_image(1)
    def compose(compile):
        return ze.compose(lean_pipe, background, reference, region=(30, 30, 90, 90), steps=5, seed=0,
                          output_type="latent", compile=compile)
    eager, first, second = _run_twice(monkeypatch, lean_pipe, compose, counter)
    torch.testing.assert_close(first.latents, eager.latents, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(second.latents, eager.latents, atol=1e-4, rtol=1e-4)
    assert first.stats.params["compile"] == {"backend": counter}
    assert first.stats.unet_calls == eager.stats.unet_calls
    assert eager.stats.unet_evals == 2 * 5 + 4 + 2 * 4  # the first sampling step has batch 4: two shapes


def test_translate_compiled_equals_eager_and_stops_compiling(lean_pipe, monkeypatch):
    """Feature hooks (record and inject on up_blocks.1.resnets.1.conv2) and q/k record/inject windows."""
    counter = CompileCounter()
    image = make_image(2)
    def translate(compile):
        return ze.translate(lean_pipe, image, "a dog", steps=2, source_cache="recompute", output_type="latent",
                            compile=compile)
    eager, first, second = _run_twice(monkeypatch, lean_pipe, translate, counter)
    torch.testing.assert_close(first.latents, eager.latents, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(second.latents, eager.latents, atol=1e-4, rtol=1e-4)


def test_edit_gradient_through_compiled_unet(lean_pipe, monkeypatch):
    """pix2pix-zero's guided call takes a gradient through the compiled UNet (aot_eager: AOT autograd, as
    inductor uses) with its cross-attention loss computed by eager rules between the graphs."""
    image = make_image(3)
    def edit(compile):
        return ze.edit(lean_pipe, image, steps=2, reg_steps=0, seed=0, output_type="latent", compile=compile)
    eager = edit(False)
    log = _compiles_per_call(monkeypatch, lambda: counters["stats"]["unique_graphs"])
    first = edit({"backend": "aot_eager"})
    _assert_compiles_only_on_new_shapes(log)
    log.clear()
    edit({"backend": "aot_eager"})
    assert sum(c for _, c in log) == 0, log
    assert first.stats.unet_backward == eager.stats.unet_backward == 2
    torch.testing.assert_close(first.latents, eager.latents, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(os.environ.get("ZEROEDIT_TEST_INDUCTOR") != "1",
                    reason="inductor's cold compile takes ~95 s on 2 CPU cores; set ZEROEDIT_TEST_INDUCTOR=1")
def test_inductor_invert_equals_eager(tiny_pipe):
    """compile=True (the default inductor backend) on the invert path of a 2-level UNet, and reconstruct
    compiles as its inversion did."""
    pipe = _pipe_with(tiny_pipe, layers_per_block=1, block_out_channels=(32, 32),
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    image = make_image(4)
    eager = ze.invert(pipe, image, steps=3)
    compiled = ze.invert(pipe, image, steps=3, compile=True)
    torch.testing.assert_close(compiled.latents, eager.latents, atol=1e-4, rtol=1e-4)
    back = ze.reconstruct(pipe, compiled, output_type="latent")
    assert back.stats.params["compile"] is True
    torch.testing.assert_close(back.latents, ze.reconstruct(pipe, eager, output_type="latent").latents,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("value", ["yes", 1, ["mode"], {1: "x"}, {"fullgraph": True}])
def test_bad_compile_value_is_a_parameter_error(tiny_pipe, value, monkeypatch):
    monkeypatch.setattr(Backbone, "unet_call", lambda *a, **k: pytest.fail("model work before validation"))
    image = make_image(0)
    for call in (lambda: ze.invert(tiny_pipe, image, compile=value),
                 lambda: ze.translate(tiny_pipe, image, "a dog", compile=value),
                 lambda: ze.edit(tiny_pipe, image, compile=value),
                 lambda: ze.compose(tiny_pipe, image, image, region=(0, 0, 64, 64), compile=value),
                 lambda: ze.personalize(tiny_pipe, "a cat", {"cat": image}, compile=value)):
        with pytest.raises(ParameterError, match="compile"):
            call()


def test_unsupported_dynamo_falls_back_to_eager_with_a_warning(tiny_pipe, monkeypatch):
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("torch.compile called"))
    image = make_image(0)
    eager = ze.invert(tiny_pipe, image, steps=2)
    with pytest.warns(RuntimeWarning, match="torch.compile is not available"):
        result = ze.invert(tiny_pipe, image, steps=2, compile=True)
    assert result.stats.params["compile"] is True
    torch.testing.assert_close(result.latents, eager.latents)


def test_backend_failure_falls_back_to_eager_once(tiny_pipe, monkeypatch):
    """A backend that cannot build (e.g. inductor without a C compiler) warns once and runs eagerly."""
    def failing_compile(function, **options):
        def compiled(*args):
            raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no C compiler"), None)
        return compiled
    monkeypatch.setattr(torch, "compile", failing_compile)
    monkeypatch.setattr(backbone_module, "_COMPILED", backbone_module.weakref.WeakKeyDictionary())
    image = make_image(0)
    eager = ze.invert(tiny_pipe, image, steps=2)
    with pytest.warns(RuntimeWarning, match="backend failed"):
        result = ze.invert(tiny_pipe, image, steps=2, compile={"mode": "max-autotune"})
    torch.testing.assert_close(result.latents, eager.latents)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ze.invert(tiny_pipe, image, steps=2, compile={"mode": "max-autotune"})  # remembered: no second warning


def test_cli_compile_switch_and_sidecar_args():
    parser = build_parser()
    for method in ("compose", "translate", "edit", "personalize", "invert"):
        assert "--compile" in parser._subparsers._group_actions[0].choices[method].format_help()
    args = parser.parse_args(["translate", "--image", "x.png", "--prompt", "a dog", "--compile"])
    assert args.compile is True
    values = resolve_arguments("translate", vars(args), {}, None)
    assert values["compile"] is True
    args = parser.parse_args(["translate", "--image", "x.png", "--prompt", "a dog"])
    assert resolve_arguments("translate", vars(args), {}, None).get("compile") is None
    config = {"compile": {"mode": "reduce-overhead"}}
    assert resolve_arguments("translate", vars(args), config, None)["compile"] == {"mode": "reduce-overhead"}
