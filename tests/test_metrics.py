"""zeroedit.metrics: each protocol's invariants offline, on tiny random CLIP / DINO / LPIPS networks built here."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

from zeroedit.errors import ModelError
from zeroedit.metrics import decode_rle, encode_rle, lpips, mip, models, mse, piebench, pixel, psnr, ssim, tficon
from zeroedit.tiny import _text_config, tiny_tokenizer


def rand_image(seed, size=32):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, projection_dim=32)
    config = CLIPConfig(text_config=_text_config().to_dict(), vision_config=vision, projection_dim=32)
    return models.Clip(CLIPModel(config), tiny_tokenizer())


@pytest.fixture(scope="module")
def dino():
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                       image_size=32, patch_size=8)
    return models.Dino(ViTModel(config, add_pooling_layer=False))


# ----------------------------------------------------------------------------------------- pixel metrics
def test_identical_images():
    a = torch.rand(2, 3, 24, 24)
    assert torch.isinf(psnr(a, a)).all() and (psnr(a, a) > 0).all()
    assert (mse(a, a) == 0).all()
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-6)


def test_psnr_mse_constant_offset():
    a = torch.full((1, 3, 16, 16), 0.4)
    b = a + 0.1  # MSE 0.01 -> PSNR 20 dB at data range 1
    assert mse(a, b).item() == pytest.approx(0.01, rel=1e-5)
    assert psnr(a, b).item() == pytest.approx(20.0, abs=1e-4)
    c = a.clone()
    c[0, 0, :4, :4] += 0.5  # 16 of 768 values off by 0.5
    assert mse(a, c).item() == pytest.approx(16 * 0.25 / 768, rel=1e-5)


def test_ssim_analytic_cases():
    c1, c2 = (0.01) ** 2, (0.03) ** 2
    a, b = torch.full((1, 1, 20, 20), 0.3), torch.full((1, 1, 20, 20), 0.5)
    expected = (2 * 0.3 * 0.5 + c1) / (0.3 ** 2 + 0.5 ** 2 + c1)  # zero variances: the contrast term is 1
    for crop in (True, False):
        assert ssim(a, b, crop=crop).item() == pytest.approx(expected, rel=1e-5)
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert ssim(x, y).item() == pytest.approx(ssim(y, x).item(), abs=1e-6)  # symmetric
    assert ssim(x, y).item() < 0.2 and ssim(x, x * 0.75).item() < 1


def test_gaussian_window():
    w = pixel.gaussian_window(11, 1.5)
    assert w.shape == (11, 11) and w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert w[5, 5] == w.max() and torch.allclose(w, w.T)
    assert (w[5, 6] / w[5, 5]).item() == pytest.approx(math.exp(-1 / (2 * 1.5 ** 2)), rel=1e-5)


def test_rle_hand_made():
    mask = decode_rle([2, 3, 14, 5], (4, 4), border=False)  # run 14..18 is cut at the end (16 pixels)
    expected = np.zeros(16)
    expected[[2, 3, 4, 14, 15]] = 1
    assert (mask.ravel() == expected).all()
    bordered = decode_rle([5, 1], (4, 4))
    assert bordered[1, 1] == 1 and bordered[2, 2] == 0 and bordered[0].all() and bordered[:, -1].all()
    m = np.zeros((9, 7), dtype=bool)
    m[3:6, 2:5] = True
    m[8, 6] = True
    assert (decode_rle(encode_rle(m), m.shape, border=False) == m).all()


def test_unedited_part_ignores_the_edited_region():
    source = rand_image(1)
    mask = np.zeros((32, 32))
    mask[8:20, 10:24] = 1
    edited = np.asarray(source).copy()
    edited[8:20, 10:24] = 0  # only inside the mask
    out = piebench.unedited_part(source, Image.fromarray(edited), mask)
    assert math.isinf(out["psnr"]) and out["mse"] == 0 and out["ssim"] == pytest.approx(1.0, abs=1e-6)
    edited[0, 0] = 255 - edited[0, 0]  # outside the mask: counted
    assert piebench.unedited_part(source, Image.fromarray(edited), mask)["mse"] > 0
    full = piebench.unedited_part(source, Image.fromarray(edited), np.ones((32, 32)))
    assert all(math.isnan(v) for v in full.values())


# ----------------------------------------------------------------------------------------- LPIPS
@pytest.mark.parametrize("net", ["vgg", "squeeze"])
def test_lpips_invariants(net):
    torch.manual_seed(0)
    model = lpips.LPIPS(net, div=8)
    for p in model.lins.parameters():
        p.data = p.data.abs()  # the published heads are non-negative
    x, y = torch.rand(2, 3, 48, 48) * 2 - 1, torch.rand(2, 3, 48, 48) * 2 - 1
    assert torch.equal(model(x, x), torch.zeros(2))
    d = model(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(d, model(y, x), atol=1e-6) and torch.equal(d, model(x, y))


def test_lpips_weights_from_files(tmp_path, monkeypatch):
    """torchvision's trunk file and lpips' heads file load into the plain-torch network key for key."""
    torch.manual_seed(1)
    source = lpips.LPIPS("squeeze")
    trunk = {f"features.{k}": v for k, v in source.features.state_dict().items()}
    trunk["classifier.1.weight"] = torch.zeros(1000, 512, 1, 1)  # present in torchvision's file, unused
    heads = {f"lin{i}.model.1.weight": lin.weight for i, lin in enumerate(source.lins)}
    torch.save(trunk, tmp_path / "squeezenet1_1-b8a52dec.pth")
    torch.save(heads, tmp_path / "squeeze.pth")
    loaded = lpips.load_lpips("squeeze", str(tmp_path))
    x, y = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40)
    assert torch.equal(lpips.lpips_distance(loaded, x, y), lpips.lpips_distance(source, x, y))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(lpips, "_package_dir", lambda *a: None)
    with pytest.raises(ModelError, match="vgg16-397923af.pth and vgg.pth"):
        lpips.find_weights("vgg", tmp_path / "nothing")


# ----------------------------------------------------------------------------------------- CLIP / DINO
def test_clip_embeddings(clip):
    images = [rand_image(2, 40), rand_image(3, 50)]
    e = clip.image_embeds(images)
    assert e.shape == (2, 32) and torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.equal(e, clip.image_embeds(images))  # deterministic
    t = clip.text_embeds(["a red circle", "a blue square " * 40])  # the long caption is truncated, not an error
    assert t.shape == (2, 32)
    whole, part = piebench.clip_scores(clip, images[0], "a red circle", np.ones((40, 40)))
    assert whole == pytest.approx(part, abs=1e-4)  # the whole mask: the same image
    assert math.isnan(piebench.clip_scores(clip, images[0], "a red circle", np.zeros((40, 40)))[1])
    assert tficon.clip_image(clip, images[0], images[0]) == pytest.approx(100.0, abs=1e-3)
    cos = float(e[0] @ clip.text_embeds(["a cat_gen."])[0])  # MIP's caption of "a cat"
    assert mip.clip_t(clip, images[0], "a cat") == pytest.approx(2.5 * max(cos, 0.0), abs=1e-5)


class HandClip:
    """A stand-in for models.Clip whose embeddings are set by hand: an image's by its width, a text's by itself."""

    def __init__(self, images: dict, texts: dict):
        self.images, self.texts = images, texts

    @staticmethod
    def _unit(vectors):
        return torch.nn.functional.normalize(torch.tensor(vectors, dtype=torch.float32), dim=-1)

    def image_embeds(self, images):
        return self._unit([self.images[im.width] for im in images])

    def text_embeds(self, texts):
        return self._unit([self.texts[t] for t in texts])


def test_clip_scores_on_hand_made_embeddings():
    """Each protocol's formula on known cosines: 1 (identical), 0 (orthogonal), -1 (opposite), 0.6."""
    clip = HandClip({10: [1, 0], 20: [0, 1], 30: [-1, 0], 40: [3, 4]}, {"a cat": [1, 0], "a cat_gen.": [0, 1]})
    image = lambda width: Image.new("RGB", (width, 8))  # noqa: E731
    assert mip.clip_t(clip, image(20), "a cat") == pytest.approx(2.5)  # scored against "a cat_gen."
    assert mip.clip_t(clip, image(10), "a cat") == 0.0 and mip.clip_t(clip, image(40), "a cat") == pytest.approx(2.0)
    assert tficon.clip_text(clip, image(40), "a cat") == pytest.approx(60.0)
    assert tficon.clip_image(clip, image(10), image(20)) == pytest.approx(0.0, abs=1e-6)
    assert tficon.clip_image(clip, image(10), image(30)) == pytest.approx(-100.0)  # TF-ICON does not clamp
    assert piebench.clip_scores(clip, image(40), "a cat", np.ones((8, 40))) == pytest.approx((60.0, 60.0))
    assert piebench.clip_scores(clip, image(30), "a cat", np.ones((8, 30))) == (0.0, 0.0)  # max(100 · cos, 0)
    assert mip.clip_i(clip, image(10), [[image(10), image(20)], [image(40)]]) == pytest.approx((0.5 + 0.6) / 2)


def test_unit_tensor_is_the_plain_division():
    """tficon's LPIPS input: every 8-bit value v becomes float32(v) / 255, as before zeroedit.images was reused."""
    image = Image.fromarray(np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3))
    expected = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    assert torch.equal(tficon._unit(image), expected) and torch.equal(tficon._unit(image.convert("L")), expected)


def test_preprocessing_sizes():
    im = rand_image(4, 64).resize((80, 50))
    assert models.resize_short(im, 32).size == (51, 32)  # int(32 · 80 / 50)
    assert models.center_crop(Image.new("RGB", (51, 32)), 32, "round").getbbox() is None
    left = [models.center_crop(Image.fromarray(np.arange(51, dtype=np.uint8)[None].repeat(32, 0)), 32, r)
            for r in ("round", "floor")]
    assert np.asarray(left[0])[0, 0] == 10 and np.asarray(left[1])[0, 0] == 9  # round(9.5) vs 19 // 2


def test_mip_caption_quirk():
    assert mip.caption("a cat and a dog on the beach") == "a cat and a dog on the beach_gen."
    assert mip.caption("a cat. a dog") == "a cat."


def test_structure_distance(dino):
    a, b = rand_image(5, 40), rand_image(6, 40)
    assert piebench.structure_distance(dino, a, a) == 0
    d = piebench.structure_distance(dino, a, b)
    assert d > 0 and d == pytest.approx(piebench.structure_distance(dino, b, a), rel=1e-6)
    keys = dino.keys(torch.rand(1, 3, 32, 32))
    assert keys.shape == (1, 17, 32)  # 4 × 4 patches + CLS, heads concatenated
    sim = piebench.self_similarity(keys[0])
    assert torch.allclose(sim.diagonal(), torch.ones(17), atol=1e-5)
    e = dino.cls_embeds([a, b])
    assert e.shape == (2, 32) and mip.dino(dino, a, [[a], [a, a]]) == pytest.approx(1.0, abs=1e-5)


def test_missing_model_is_a_model_error():
    with pytest.raises(ModelError, match="hf download nobody/no-such-clip"):
        models.load_clip("nobody/no-such-clip")
    with pytest.raises(ModelError, match="facebook/dino-vitb8"):
        models.load_dino("facebook/dino-vitb8")


def test_tficon_regions(tmp_path):
    background, composite, reference = rand_image(7, 48), np.asarray(rand_image(8, 48)).copy(), rand_image(9, 20)
    region = tficon.region_mask((10, 12, 30, 40), (48, 48))
    assert region.sum() == 20 * 28 and region[12, 10] and not region[11, 10]
    torch.manual_seed(0)
    model = lpips.LPIPS("squeeze", div=8)
    before = tficon.lpips_bg(model, background, Image.fromarray(composite), region)
    composite[12:40, 10:30] = 0  # only inside the region
    assert tficon.lpips_bg(model, background, Image.fromarray(composite), region) == pytest.approx(before, abs=1e-6)
    crop = tficon.foreground(Image.fromarray(composite), region, reference.size)
    assert crop.size == reference.size and np.asarray(crop).max() == 0
    Image.fromarray(region.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    with Image.open(tmp_path / "mask.png") as mask:
        assert (tficon.region_mask(mask, (48, 48)) == region).all()


def test_clip_preprocessing_equals_transformers_processor():
    """torchmetrics' CLIPScore preprocesses with transformers' CLIP image processor (PIL backend): the same pixels."""
    import transformers
    processor_class = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
    processor = processor_class(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    image = rand_image(10, 64).resize((77, 45))
    expected = processor(images=[image], return_tensors="pt")["pixel_values"]
    mine = models.normalized([models.center_crop(models.resize_short(image, 32), 32, "floor")],
                             models.CLIP_MEAN, models.CLIP_STD)
    assert torch.allclose(mine, expected, atol=1e-6)
