"""The dispatcher seam (control/seam.py): rules act at diffusers' `dispatch_attention_fn`, the layer's attention
backend stays in force, nothing in diffusers is modified, and the token layouts of each family."""
import contextlib
import functools

import pytest
import torch
from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
from diffusers.models.transformers import transformer_flux

import zeroedit as ze
from zeroedit.backbones import FlowBackbone
from zeroedit.control import Controller, Record, single_block
from zeroedit.control.seam import DispatcherSeam, ImageFirst, TextFirst
from zeroedit.errors import ModelError

from conftest import make_image, processors_snapshot


@contextlib.contextmanager
def counting(backend: str):
    """Count the calls that reach a registered attention backend (restored afterwards)."""
    name = AttentionBackendName(backend)
    original, calls = _AttentionBackendRegistry._backends[name], []

    @functools.wraps(original)
    def counted(*args, **kwargs):
        calls.append(kwargs["query"].shape)
        return original(*args, **kwargs)

    _AttentionBackendRegistry._backends[name] = counted
    try:
        yield calls
    finally:
        _AttentionBackendRegistry._backends[name] = original


@pytest.fixture
def math_backend(tiny_flux_pipe):
    """tiny-flux with the `_native_math` backend chosen by the user, as diffusers' set_attention_backend does."""
    processors = tiny_flux_pipe.transformer.attn_processors.values()
    saved = [p._attention_backend for p in processors]
    tiny_flux_pipe.transformer.set_attention_backend("_native_math")
    yield tiny_flux_pipe
    for processor, backend in zip(processors, saved):
        processor._attention_backend = backend


def test_the_layers_backend_sees_every_attention_call_of_a_flux_translate(math_backend):
    pipe = math_backend
    layers = len(pipe.transformer.attn_processors)
    before = processors_snapshot(pipe)
    with counting("_native_math") as calls:
        out = ze.translate(pipe, make_image(0, (128, 128)), "a dog", source_prompt="a cat")
    assert out.stats.unet_calls == 18 and len(calls) == 18 * layers  # injected layers included
    assert processors_snapshot(pipe) == before
    assert {p._attention_backend for p in pipe.transformer.attn_processors.values()} == {AttentionBackendName._NATIVE_MATH}


def test_diffusers_is_untouched_and_the_seam_is_per_layer(tiny_flux_pipe):
    """The controlled layer's processor runs with its own `dispatch_attention_fn` bound to the seam; diffusers'
    module global and the other layers keep the real one."""
    backbone = FlowBackbone(tiny_flux_pipe)
    controller = Controller()
    record = controller.add(Record([single_block(0)], "v", stream="joint"))
    controller.set_call(0, 0.5, [("a", 1)], backbone.token_grid((16, 16)))
    x, cond = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0)), backbone.encode_prompt("a cat")
    with controller.installed(tiny_flux_pipe.transformer):
        seam = tiny_flux_pipe.transformer.attn_processors[single_block(0) + ".processor"]
        assert isinstance(seam, DispatcherSeam)
        assert transformer_flux.dispatch_attention_fn is attention_dispatch.dispatch_attention_fn
        backbone.transformer_call(x, 0.5, cond)
    assert record.store[(single_block(0), "v", 0)].shape[2] == 64 + cond.embeds.shape[1]


def test_a_processor_that_does_not_dispatch_is_refused_and_restored(tiny_flux_pipe):
    class Custom:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
            raise AssertionError("never called")

    transformer = tiny_flux_pipe.transformer
    saved = transformer.attn_processors
    transformer.set_attn_processor({**saved, single_block(1) + ".processor": Custom()})
    try:
        before = processors_snapshot(tiny_flux_pipe)
        controller = Controller()
        controller.add(Record([single_block(1)], "v"))
        with pytest.raises(ModelError, match="dispatch_attention_fn"):
            with controller.installed(transformer):
                pass
        assert processors_snapshot(tiny_flux_pipe) == before
    finally:
        transformer.set_attn_processor(saved)


def test_token_layouts():
    text_first = TextFirst().split("transformer_blocks.0.attn", 64 + 10 + 16, 64, 16)
    assert (text_first.text, text_first.image, text_first.references) == (slice(0, 10), slice(10, 74), slice(74, 90))
    z = ImageFirst(multiple=32)
    main = z.split("layers.3.attention", 96 + 32, 80)  # 80 image tokens padded to 96, then 32 text tokens
    assert (main.image, main.text) == (slice(0, 80), slice(96, 128))
    assert z.split("noise_refiner.0.attention", 96, 80).text == slice(0, 0)
    assert z.split("context_refiner.1.attention", 32, 80).image == slice(0, 0)
