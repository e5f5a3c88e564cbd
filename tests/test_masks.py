"""masks: open-vocabulary box -> SAM mask on tiny random-weight SAM / OWLv2 built here (no weights can be
downloaded); shapes, binarity, caching, errors, and the methods' phrase / "auto" / region options."""
import json
import types

import numpy as np
import pytest
import torch
from PIL import Image

import zeroedit as ze
from zeroedit import masks
from zeroedit.errors import ImageError, MaskError, ModelError, ParameterError

from conftest import make_image


def tiny_sam(seed: int = 0):
    """A random SAM (64 px input, 2 ViT layers, 32 channels) and its PIL-backend processor."""
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil
    torch.manual_seed(seed)
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=16,
                           mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32))
    processor = SamProcessor(image_processor=SamImageProcessorPil(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16}))
    return SamModel(config).eval(), processor


def tiny_owlv2(shift: float = 2.0, seed: int = 0):
    """A random OWLv2 (64 px, 8 px patches: 64 query boxes) with the tiny CLIP tokenizer of zeroedit.tiny.
    The class head's logit shift is set to `shift` (scale 1), so every score is sigmoid(cos + shift):
    0.73–0.95 for shift 2 (found at the 0.1 threshold), ≤ 0.02 for shift −5 (never found)."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil
    from zeroedit.tiny import tiny_tokenizer
    torch.manual_seed(seed)
    text = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                  patch_size=8)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)).eval()
    with torch.no_grad():
        for layer, bias in ((model.class_head.logit_shift, shift), (model.class_head.logit_scale, 0.0)):
            layer.weight.zero_()
            layer.bias.fill_(bias)
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 16
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 64, "width": 64}),
                               tokenizer=tokenizer)
    return model, processor


def tiny_grounding_dino(folder):
    """A random Grounding DINO (Swin 8 channels, 1+2 layers, 10 queries) with a 37-word BERT vocabulary."""
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoProcessor, SwinConfig)
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + list("abcdefghijklmnopqrstuvwxyz") + [
        "the", "panda", "table", "red", "circle"]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    torch.manual_seed(0)
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64)
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, num_queries=10, encoder_layers=1,
                                 decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                                 decoder_attention_heads=2, d_model=32, encoder_n_points=2, decoder_n_points=2,
                                 max_text_len=64)
    processor = GroundingDinoProcessor(tokenizer=BertTokenizer(str(folder / "vocab.txt")),
                                       image_processor=GroundingDinoImageProcessorPil(
                                           size={"shortest_edge": 64, "longest_edge": 96}))
    return GroundingDinoForObjectDetection(config).eval(), processor


@pytest.fixture(scope="module", autouse=True)
def tiny_models():
    masks.register("tiny-sam", *tiny_sam())
    masks.register("tiny-owlv2", *tiny_owlv2())
    masks.register("tiny-owlv2-blind", *tiny_owlv2(shift=-5.0))
    before = masks.set_defaults()
    masks.set_defaults(segmenter="tiny-sam", detector="tiny-owlv2")
    yield
    masks.set_defaults(**before)
    masks.clear_cache()


IMAGE = make_image(3, (96, 64))  # non-square: 96 wide, 64 high


# ----------------------------------------------------------------------------------------- the API
def test_segment_a_phrase_gives_a_binary_mask_of_the_image_size():
    mask = masks.segment(IMAGE, "the panda")
    assert mask.dtype == np.bool_ and mask.shape == (64, 96) and mask.any()
    square = masks.segment(make_image(4, (80, 80)), "the panda")
    assert square.shape == (80, 80) and square.dtype == np.bool_


def test_salient_object_gives_a_binary_mask_of_reasonable_area():
    mask = masks.segment(IMAGE)
    assert mask.dtype == np.bool_ and mask.shape == (64, 96)
    assert masks.SALIENT_AREA[0] <= mask.mean() <= masks.SALIENT_AREA[1]
    assert np.array_equal(mask, masks.segment(IMAGE, "auto"))


def test_box_lies_in_the_image_and_the_mask_follows_the_box_prompt():
    x0, y0, x1, y1 = masks.box(IMAGE, "the table")
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 64
    (found, score) = masks.detect(IMAGE, "the table")
    assert found == (x0, y0, x1, y1) and 0.7 < score < 0.96  # sigmoid(cos + 2) of the rigged head


def test_grounding_dino_detector(tmp_path):
    masks.register("tiny-gdino", *tiny_grounding_dino(tmp_path))
    (x0, y0, x1, y1), score = masks.detect(IMAGE, "the panda", detector="tiny-gdino", threshold=0.0)
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 64 and 0 < score <= 1
    mask = masks.segment(IMAGE, "the panda", detector="tiny-gdino", threshold=0.0)
    assert mask.shape == (64, 96) and mask.dtype == np.bool_
    assert masks.set_defaults(detector="grounding-dino")["detector"] == "IDEA-Research/grounding-dino-tiny"
    masks.set_defaults(detector="tiny-owlv2")


def test_owlv2_boxes_are_relative_to_the_padded_square():
    """OWLv2 pads the image at the bottom/right to a square: normalised boxes scale by the long side."""
    class Out:
        logits = torch.tensor([[[-3.0], [4.0]]])
        pred_boxes = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.5, 0.25, 0.5, 0.5]]])

    class Model(torch.nn.Module):
        config = type("C", (), {"model_type": "owlv2"})()

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, **kw):
            return Out()

    class Processor:
        def __call__(self, **kw):
            return {"pixel_values": torch.zeros(1, 3, 4, 4)}

    masks.register("fake-owlv2", Model(), Processor())
    assert masks.box(make_image(0, (80, 48)), "x", detector="fake-owlv2") == (20.0, 0.0, 60.0, 40.0)


def test_models_are_loaded_once_per_process(tmp_path):
    model, processor = tiny_sam(seed=1)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    name = str(tmp_path)
    first = masks.segment(IMAGE, "the panda", segmenter=name)
    second = masks.segment(IMAGE, "the panda", segmenter=name)
    assert masks.loads[("segmenter", name)] == 1 and np.array_equal(first, second)
    assert masks._load("segmenter", name, *masks.placement())[0] is masks._load("segmenter", name, *masks.placement())[0]


def test_a_phrase_that_is_not_found_names_the_best_score():
    with pytest.raises(MaskError, match=r"best detection score 0\.0\d+ is under the threshold 0\.100"):
        masks.segment(IMAGE, "the panda", detector="tiny-owlv2-blind")
    with pytest.raises(MaskError, match="under the threshold 0.990"):
        masks.box(IMAGE, "the panda", threshold=0.99)


def test_a_missing_model_is_a_model_error_with_the_download_command(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelError, match="hf download .*no-such-model"):
        masks.box(IMAGE, "the panda", detector=missing)
    with pytest.raises(ModelError, match="SAM segmenter 'zeroedit-tests/no-sam'.*hf download zeroedit-tests/no-sam"):
        masks.segment(IMAGE, segmenter="zeroedit-tests/no-sam")  # a hub id in no cache
    assert masks.set_defaults(segmenter="sam")["segmenter"] == "facebook/sam-vit-base"
    masks.set_defaults(segmenter="tiny-sam")


@pytest.mark.parametrize("call, error", [
    (lambda: masks.segment(IMAGE, "   "), ParameterError),
    (lambda: masks.box(IMAGE, ""), ParameterError),
    (lambda: masks.box(IMAGE, 3), ParameterError),
    (lambda: masks.segment("no/such/file.png", "a cat"), ImageError),
    (lambda: masks.segment(object(), "a cat"), ImageError),
    (lambda: masks.box(IMAGE, "a cat", threshold=2.0), ParameterError),
    (lambda: masks.segment(IMAGE, "a cat", segmenter=""), ParameterError),
    (lambda: masks.segment(IMAGE, "a cat", device="gpu7"), ParameterError),
    (lambda: masks.segment(IMAGE, "a cat", dtype="float17"), ParameterError),
])
def test_bad_inputs_are_refused_before_model_work(call, error, monkeypatch):
    """Refused before any model is even fetched (cached or not): masks._load is never reached."""
    fetched = []
    monkeypatch.setattr(masks, "_load", lambda *args: fetched.append(args) or pytest.fail("a model was fetched"))
    with pytest.raises(error):
        call()
    assert fetched == []


def test_method_values_are_resolved():
    assert masks.is_phrase("auto") and masks.is_phrase("the red circle")
    assert not masks.is_phrase("mask.png") and not masks.is_phrase("") and not masks.is_phrase((1, 2, 3, 4))
    boxed = masks.resolve_mask(IMAGE, (10, 20, 30, 40), "mask")
    assert boxed.shape == (64, 96) and boxed.sum() == 20 * 20 and boxed[20:40, 10:30].all()
    assert masks.resolve_region(IMAGE, (1, 2, 3, 4)) == (1, 2, 3, 4)
    assert masks.resolve_region(IMAGE, "the table") == masks.box(IMAGE, "the table")
    with pytest.raises(MaskError, match="file not found"):
        masks.resolve_mask(IMAGE, "missing.png")


# ----------------------------------------------------------------------------------------- compose
BG = make_image(0, (192, 128))
REF = make_image(1, (64, 48))


def test_compose_reference_mask_phrase_and_auto_segment_the_reference(tiny_pipe):
    """A phrase / "auto" as reference_mask gives exactly the result of passing masks.segment's mask."""
    kw = dict(region=(40, 30, 100, 90), prompt="a painting", steps=3, seed=0, output_type="latent")
    for value in ("the panda", "auto"):
        mask = masks.segment(REF, value)
        assert 0 < mask.mean() < 1  # a real segmentation, not the whole reference
        by_value = ze.compose(tiny_pipe, BG, REF, reference_mask=value, **kw)
        by_mask = ze.compose(tiny_pipe, BG, REF, reference_mask=mask, **kw)
        assert torch.equal(by_value.latents, by_mask.latents)
        assert by_value.stats.unet_calls == by_mask.stats.unet_calls == 6
    whole = ze.compose(tiny_pipe, BG, REF, reference_mask=None, **kw)
    assert not torch.equal(whole.latents, by_mask.latents)


def test_compose_region_phrase_composes_into_the_detected_box(tiny_pipe):
    found = masks.box(BG, "the table")
    kw = dict(reference_mask=None, prompt="a painting", steps=3, seed=0, output_type="latent")
    by_phrase = ze.compose(tiny_pipe, BG, REF, region="the table", **kw)
    by_box = ze.compose(tiny_pipe, BG, REF, region=found, **kw)
    assert torch.equal(by_phrase.latents, by_box.latents)
    x0, y0, x1, y1 = by_phrase.stats.extra["regions"][0]  # the pasted reference: centred on the box, its long side
    (w, h), (W, H) = by_phrase.stats.params["size"], by_phrase.stats.params["input_size"]
    found = (found[0] * w / W, found[1] * h / H, found[2] * w / W, found[3] * h / H)  # the box in the working frame
    assert abs((x0 + x1) / 2 - (found[0] + found[2]) / 2) <= 1 and abs((y0 + y1) / 2 - (found[1] + found[3]) / 2) <= 1
    assert abs(max(x1 - x0, y1 - y0) - max(found[2] - found[0], found[3] - found[1])) <= 1


def test_compose_phrase_not_found_is_a_mask_error_before_unet_work(tiny_pipe):
    masks.set_defaults(detector="tiny-owlv2-blind")
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(MaskError, match="best detection score"):
            ze.compose(tiny_pipe, BG, REF, region="the table", steps=3, seed=0)
    finally:
        handle.remove()
        masks.set_defaults(detector="tiny-owlv2")
    assert not calls


# ----------------------------------------------------------------------------------------- translate
def test_translate_mask_keeps_the_source_outside_at_the_same_cost(tiny_pipe):
    from zeroedit.backbones import Backbone
    from zeroedit.images import prepare_image, to_tensor
    image = make_image(2, (192, 128))
    kw = dict(prompt="a watercolor", steps=4, output_type="latent", size=192)  # worked at the image's own size
    box = (64, 32, 136, 96)  # pixels; at latent resolution columns 8..16, rows 4..12
    plain = ze.translate(tiny_pipe, image, **kw)
    masked = ze.translate(tiny_pipe, image, mask=box, **kw)
    assert (masked.stats.unet_calls, masked.stats.unet_evals) == (plain.stats.unet_calls, plain.stats.unet_evals)
    source = Backbone(tiny_pipe).encode_image(to_tensor(prepare_image(image))).float()
    inside = torch.zeros(16, 24, dtype=torch.bool)
    inside[4:12, 8:17] = True
    assert torch.equal(masked.latents[..., ~inside], source[..., ~inside])  # the source's own latent outside
    assert not torch.allclose(masked.latents[..., inside], source[..., inside], atol=1e-2)
    # pixels: the VAE reconstruction of the source outside. The tiny random VAE's decoder mixes globally (its
    # mid-block attention), so far from the mask they are only closer to it than inside (a trained VAE is local).
    pixels = ze.translate(tiny_pipe, image, mask=box, steps=4, prompt="a watercolor", output_type="np",
                          size=192).images[0]
    reconstruction = ((Backbone(tiny_pipe).decode(source).clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0).numpy()
    far = np.ones((128, 192), bool)
    far[16:112, 48:152] = False  # two latent cells away from the mask
    difference = np.abs(pixels - reconstruction).mean(-1)
    assert difference[far].mean() < 0.5 * difference[32:96, 64:136].mean()


def test_translate_mask_phrase_is_segmented(tiny_pipe):
    image = make_image(2, (128, 128))
    kw = dict(prompt="a watercolor", steps=3, output_type="latent")
    by_phrase = ze.translate(tiny_pipe, image, mask="the panda", **kw)
    by_mask = ze.translate(tiny_pipe, image, mask=masks.segment(image, "the panda"), **kw)
    assert torch.equal(by_phrase.latents, by_mask.latents) and by_phrase.stats.params["masked"]
    with pytest.raises(MaskError, match="empty"):
        ze.translate(tiny_pipe, image, mask=np.zeros((128, 128), bool), **kw)


# ----------------------------------------------------------------------------------------- personalize
@pytest.fixture(scope="module")
def ip_pipe():
    return ze.load("tiny", ip_adapter=True)


REFS = {"cat": make_image(0), "dog": make_image(1)}


def test_personalize_regions_confine_each_object_and_keep_the_budget(ip_pipe):
    kw = dict(steps=4, seed=0, output_type="latent")
    free = ze.personalize(ip_pipe, "a cat and a dog", REFS, **kw)
    split = ze.personalize(ip_pipe, "a cat and a dog", REFS, regions={"cat": (0, 0, 64, 128), "dog": (64, 0, 128, 128)}, **kw)
    assert (split.stats.unet_calls, split.stats.unet_evals) == (free.stats.unet_calls, free.stats.unet_evals) == (4, 8)
    maps = split.relevance_maps  # merge weights of the cond branch, averaged over layers and steps (bilinear to 16×16)
    assert (maps[0][:, 12:] == 0).all() and (maps[1][:, :4] == 0).all()  # zero beyond the coarsest grid's reach
    assert torch.allclose(maps[0][:, :4], torch.ones(16, 4)) and torch.allclose(maps[1][:, 12:], torch.ones(16, 4))
    assert not torch.equal(split.latents, free.latents)
    whole = ze.personalize(ip_pipe, "a cat and a dog", REFS, regions={"cat": (0, 0, 128, 128)}, **kw)
    assert torch.equal(whole.latents, free.latents)  # a region covering everything changes nothing


def test_personalize_region_weights_are_zero_outside_at_every_grid():
    """The merge rule's weights on a layer grid: object 0 only on the tokens its region touches; object 1
    (no region) everywhere; uniform weighting: the region masks themselves."""
    import types
    from zeroedit.methods.mip import MultiObjectMerge
    region = torch.zeros(1, 1, 16, 24)
    region[..., 2:6, 3:9] = 1.0
    rule = MultiObjectMerge([], [], [[0], [1]], 1.0, "uniform", regions=[region, None])
    for grid in ((16, 24), (8, 12), (4, 6), (2, 3)):
        weights = rule.weights(types.SimpleNamespace(grid=grid), torch.zeros(1))
        inside = torch.nn.functional.adaptive_max_pool2d(region, grid).flatten().bool()
        assert weights.shape == (2, 1, grid[0] * grid[1]) and (weights[0, 0, ~inside] == 0).all()
        assert (weights[0, 0, inside] == 1).all() and (weights[1] == 1).all()


def test_personalize_phrase_regions_are_found_in_the_layout(ip_pipe):
    layout = make_image(5, (128, 128))
    kw = dict(steps=3, seed=0, output_type="latent")
    found = masks.box(layout, "the cat")
    by_phrase = ze.personalize(ip_pipe, "a cat and a dog", REFS, regions={"cat": "the cat"}, layout=layout, **kw)
    by_box = ze.personalize(ip_pipe, "a cat and a dog", REFS, regions={"cat": found}, **kw)
    assert torch.equal(by_phrase.latents, by_box.latents) and by_phrase.stats.params["regions"] == ["cat"]


@pytest.mark.parametrize("kwargs, error", [
    (dict(regions={"bird": (0, 0, 10, 10)}), ParameterError),
    (dict(regions=[(0, 0, 10, 10)]), ParameterError),
    (dict(regions={"cat": "the cat"}), ParameterError),  # a phrase needs layout=
    (dict(regions={"cat": (10, 10, 5, 5)}), MaskError),
    (dict(regions={"cat": (200, 200, 300, 300)}), MaskError),
])
def test_personalize_bad_regions_are_refused_before_model_work(ip_pipe, kwargs, error):
    calls = []
    handle = ip_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(error):
            ze.personalize(ip_pipe, "a cat and a dog", REFS, steps=2, **kwargs)
    finally:
        handle.remove()
    assert not calls


# ----------------------------------------------------------------------------------------- CLI
def test_cli_passes_phrases_boxes_and_paths(tmp_path):
    from zeroedit import cli
    (tmp_path / "m.png").write_bytes(b"")
    assert cli.parse_value("reference_mask", "auto", tmp_path) == "auto"
    assert cli.parse_value("reference_mask", "the panda", tmp_path) == "the panda"
    assert cli.parse_value("reference_mask", "m.png", tmp_path) == str(tmp_path / "m.png")
    assert cli.parse_value("reference_mask", "typo.png", tmp_path) == str(tmp_path / "typo.png")  # a file, not words
    assert cli.parse_value("reference_mask", ["auto", "m.png"], tmp_path) == ["auto", str(tmp_path / "m.png")]
    assert cli.parse_value("region", "40,30,100,90") == (40.0, 30.0, 100.0, 90.0)
    assert cli.parse_value("region", "the table") == "the table"
    assert cli.parse_value("mask", "1,2,3,4") == (1.0, 2.0, 3.0, 4.0) and cli.parse_value("mask", [1, 2, 3, 4]) == (1, 2, 3, 4)
    assert cli.parse_value("mask", "the cat") == "the cat"
    assert cli.parse_value("regions", ["cat=0,0,64,128", "dog=the dog"]) == {"cat": (0.0, 0.0, 64.0, 128.0),
                                                                             "dog": "the dog"}
    assert cli.parse_value("regions", {"cat": [0, 0, 64, 128], "dog": "m.png"}, tmp_path) == {
        "cat": (0, 0, 64, 128), "dog": str(tmp_path / "m.png")}
    with pytest.raises(cli.UserError, match="phrase="):
        cli.parse_value("regions", ["cat"])
    args = cli.build_parser().parse_args(["personalize", "--prompt", "a cat and a dog", "--references", "cat=a.png",
                                          "--regions", "cat=0,0,64,128", "dog=the dog"])
    assert args.regions == ["cat=0,0,64,128", "dog=the dog"]


def test_cli_compose_with_auto_mask_and_region_phrase(tmp_path, capsys):
    from zeroedit import cli
    Image.fromarray(BG).save(tmp_path / "bg.png")
    Image.fromarray(REF).save(tmp_path / "ref.png")
    code = cli.main(["compose", "--background", str(tmp_path / "bg.png"), "--reference", str(tmp_path / "ref.png"),
                     "--reference-mask", "auto", "--region", "the table", "--prompt", "a ball", "--steps", "2",
                     "--seed", "0", "--model", "tiny", "--quiet", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    sidecar = json.loads((tmp_path / "out" / "compose.json").read_text())
    assert sidecar["args"]["reference_mask"] == "auto" and sidecar["args"]["region"] == "the table"


def test_a_registered_model_keeps_its_first_placement():
    model, processor = tiny_sam(seed=2)
    masks.register("tiny-sam-2", model, processor)
    on_float = masks._load("segmenter", "tiny-sam-2", torch.device("cpu"), torch.float32)[0]
    on_double = masks._load("segmenter", "tiny-sam-2", torch.device("cpu"), torch.float64)[0]
    assert on_float is model and on_double is not model
    assert on_float.dtype == torch.float32 and on_double.dtype == torch.float64
    assert masks.placement(like=types.SimpleNamespace(device=torch.device("cpu"), dtype=torch.float16)) == \
        (torch.device("cpu"), torch.float32)  # a CPU pipeline in half precision: the mask models stay float32
