"""Sizes and the documented input conversions (issue 15 §1–2): working size from the model, outputs at the
input's own size, boxes and masks in the input's frame, compose's full-resolution background, EXIF orientation,
0/1 masks, CJK phrases, the truncation warning."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import zeroedit as ze
from zeroedit.backbones import Backbone
from zeroedit.errors import ParameterError
from zeroedit.images import MAX_WORKING_SIDE, load_image, load_mask, working_size
from zeroedit.methods.mip import _occurrences, _phrase_in_prompt

from conftest import make_image, processors_snapshot

REF = make_image(1, (48, 48))


@pytest.fixture(scope="module")
def ip_pipe():
    return ze.load("tiny", ip_adapter=True)


def test_working_size_follows_the_model():
    assert working_size((4000, 3000), 512, 64) == (512, 384)  # SD 1.x/2.x-base
    assert working_size((3000, 4000), 512, 64) == (384, 512)  # portrait stays portrait
    assert working_size((4000, 3000), 768, 64) == (768, 576)  # SD 2.x-768
    assert working_size((4000, 3000), 1024, 32) == (1024, 768)  # SDXL
    assert working_size((127, 95), 512, 64) == (512, 384)  # small inputs come up to the native size
    assert working_size((4000, 3000), 512, 64, size=640) == (640, 512)
    assert working_size((4000, 3000), 512, 64, size=(320, 320)) == (320, 320)
    with pytest.raises(ParameterError, match="allow_large"):
        working_size((4000, 3000), 512, 64, size=MAX_WORKING_SIDE + 64)
    assert working_size((4000, 3000), 512, 64, size=3000, allow_large=True) == (3008, 2240)


def test_backbone_geometry(tiny_pipe, tiny_xl_pipe):
    assert (Backbone(tiny_pipe).native_size, Backbone(tiny_pipe).size_multiple) == (128, 64)
    assert (Backbone(tiny_xl_pipe).native_size, Backbone(tiny_xl_pipe).size_multiple) == (128, 32)


@pytest.mark.parametrize("size", [(127, 95), (64, 160)])
def test_every_method_returns_the_input_size(tiny_pipe, size):
    image = make_image(3, size)
    outs = {
        "compose": ze.compose(tiny_pipe, image, REF, region=(10, 10, 50, 50), steps=2, seed=0),
        "translate": ze.translate(tiny_pipe, image, "a dog", steps=2),
        "edit": ze.edit(tiny_pipe, image, steps=2, reg_steps=1, seed=0),
        "reconstruct": ze.reconstruct(tiny_pipe, ze.invert(tiny_pipe, image, steps=2)),
    }
    working = list(working_size(size, 128, 64))
    for name, out in outs.items():
        assert out.image.size == size, name
        assert out.stats.params["size"] == working and out.stats.params["input_size"] == list(size), name
    assert outs["translate"].latents.shape[-2:] == (working[1] // 8, working[0] // 8)  # latents stay at working size
    for output_type, shape in (("np", (1, size[1], size[0], 3)), ("pt", (1, 3, size[1], size[0]))):
        out = ze.translate(tiny_pipe, image, "a dog", steps=1, output_type=output_type)
        assert tuple(out.images.shape) == shape and 0 <= float(out.images.min()) <= float(out.images.max()) <= 1


def test_personalize_size(ip_pipe):
    assert ze.personalize(ip_pipe, "a cat", {"cat": REF}, steps=1, seed=0).image.size == (128, 128)  # native
    out = ze.personalize(ip_pipe, "a cat", {"cat": REF}, steps=1, seed=0, size=(96, 64))
    assert out.image.size == (96, 64) and out.stats.params["size"] == [96, 64]


def test_size_overrides_and_is_recorded(tiny_pipe):
    out = ze.translate(tiny_pipe, make_image(0, (200, 100)), "a dog", steps=1, size=256, output_type="latent")
    assert out.stats.params["size"] == [256, 128] and out.images.shape[-2:] == (16, 32)


def test_boxes_and_masks_are_read_in_the_input_frame(tiny_pipe):
    """The same region given as a box of the input, the box of a 2× input, and a mask at another resolution
    lands on the same working-frame rectangle."""
    image = make_image(4, (192, 128))  # working size on tiny: 128×64
    kwargs = dict(steps=2, seed=0, output_type="latent")
    box = ze.compose(tiny_pipe, image, REF, region=(48, 32, 96, 96), **kwargs)
    big = np.asarray(Image.fromarray(image).resize((384, 256)))
    doubled = ze.compose(tiny_pipe, big, REF, region=(96, 64, 192, 192), **kwargs)
    mask = np.zeros((64, 96), np.uint8)  # a mask at half the input's resolution
    mask[16:48, 24:48] = 1  # a 0/1 mask
    masked = ze.compose(tiny_pipe, image, REF, region=mask, **kwargs)
    assert box.stats.extra["regions"] == doubled.stats.extra["regions"] == masked.stats.extra["regions"]
    assert torch.equal(box.images, masked.images)
    x0, y0, x1, y1 = box.stats.extra["regions"][0]
    assert (x1 - x0, y1 - y0) == (32, 32) and (x0 + x1) / 2 == 48  # the box (48…96)·2/3 → 32…64, centred at 48


def test_compose_pastes_the_full_resolution_background(tiny_pipe):
    image = make_image(5, (512, 256))
    box = (40, 40, 120, 120)  # working frame (size=256: half the input): 20…60, latent cells 16…64
    pasted = ze.compose(tiny_pipe, image, REF, region=box, steps=2, seed=0, size=256)
    plain = ze.compose(tiny_pipe, image, REF, region=box, steps=2, seed=0, size=256, paste_background=False)
    assert pasted.image.size == plain.image.size == (512, 256) and pasted.stats.params["paste_background"]
    out, raw = np.asarray(pasted.image).astype(int), np.asarray(plain.image).astype(int)
    far = np.ones((256, 512), bool)
    far[:200, :200] = False  # the region, its dilation by 2 cells (to 80 working = 160 input px) and the feather
    assert np.array_equal(out[far], image[far])  # untouched background, pixel for pixel
    assert np.abs(raw[far] - image[far]).mean() > 1  # without pasting: the resized generated image
    centre = (slice(60, 100), slice(60, 100))
    assert np.array_equal(out[centre], raw[centre])  # inside: the generated image


def test_exif_orientation_is_applied(tmp_path, tiny_pipe):
    wide = Image.fromarray(make_image(6, (128, 64)))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": a portrait phone photo stored landscape
    wide.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    upright = load_image(str(tmp_path / "phone.jpg"))
    assert upright.size == (64, 128)
    assert np.abs(np.asarray(upright, int) - np.asarray(wide.transpose(Image.ROTATE_270), int)).mean() < 8  # JPEG
    out = ze.translate(tiny_pipe, str(tmp_path / "phone.jpg"), "a dog", steps=1)
    assert out.image.size == (64, 128) and out.stats.params["size"] == [64, 128]


def test_zero_one_masks_are_binary_masks():
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:6] = 1
    assert load_mask(mask).sum() == 9 and load_mask(mask * 255).sum() == 9
    assert load_mask(Image.fromarray(mask)).sum() == 9
    assert load_mask(np.full((8, 8), 100, np.uint8)).sum() == 0  # grey 100 of 255 is still outside


def test_cjk_and_latin_phrases():
    assert _occurrences("一只猫和一只狗", "猫") and _occurrences("一只猫和一只狗", "一只狗")
    assert not _occurrences("a cat on a sofa", "ca") and _occurrences("A Big  Dog", "big dog")
    assert _occurrences("a cat, a dog", "cat")


def test_cjk_phrase_in_a_cjk_prompt(ip_pipe):
    refs = {"猫": REF, "狗": make_image(2, (48, 48))}
    alone = ze.personalize(ip_pipe, "一只猫和一只狗", refs, steps=1, seed=0, output_type="latent")
    inside = ze.personalize(ip_pipe, "一只猫和一只狗", refs, steps=1, seed=0, output_type="latent",
                            phrase_encoding="prompt")
    assert alone.relevance_maps.shape[0] == inside.relevance_maps.shape[0] == 2
    start, count = _phrase_in_prompt(ip_pipe.tokenizer, "一只猫和一只狗", "猫")
    assert (start, count) == (7, 3)  # BOS, 2 characters × 3 UTF-8 byte tokens, then 猫's 3 bytes


def test_truncated_prompt_warns(tiny_pipe, caplog):
    with caplog.at_level(logging.WARNING, logger="zeroedit"):
        ze.translate(tiny_pipe, make_image(0), "a very long prompt " * 10, steps=1, output_type="latent")
    assert any("truncated" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zeroedit"):
        ze.translate(tiny_pipe, make_image(0), "a dog", steps=1, output_type="latent")
    assert not any("truncated" in record.getMessage() for record in caplog.records)


def test_pipeline_unchanged_by_all_of_the_above(tiny_pipe):
    before = processors_snapshot(tiny_pipe)
    ze.compose(tiny_pipe, make_image(0, (127, 95)), REF, region=(10, 10, 60, 60), steps=2, seed=0)
    assert processors_snapshot(tiny_pipe) == before
