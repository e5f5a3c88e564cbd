"""Bad inputs that slipped through (issue 26): YAML alias bombs, in-memory images of ambiguous range, PNG chunk
bombs, jobs files that are not UTF-8 or start with a BOM, a negative prompt on FLUX, a mask phrase past the
detector's token limit. Each: the typed error through the API (before any model work), and through the CLI exit
code 2 with one line. (The jobs-file pre-check is in test_batch.py, eval's field checks in test_eval.py.)"""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import zeroedit as ze
from zeroedit import batch, cli, masks, runner
from zeroedit.errors import MESSAGE_LIMIT, ImageError, MaskError, ParameterError, shorten
from zeroedit.images import FLOAT_TOLERANCE, load_image, load_mask

from conftest import make_image, processors_snapshot

CAT = str(cli.asset("cat.png"))


def run(argv, capsys):
    """`zeroedit ARGV` in this process: (exit code, the non-empty stderr lines)."""
    code = cli.main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def assert_one_line_error(code, lines, word):
    assert code == 2, (code, lines)
    assert len(lines) == 1 and lines[0].startswith("zeroedit: error") and word in lines[0], lines


# ----------------------------------------------------------------------------------------- 1. alias bombs
def alias_bomb(key: str, depth: int = 9) -> str:
    """A YAML config whose `key` holds 9**depth leaves written with `depth` aliases (a few hundred bytes)."""
    lines = [f"{key}:", "  - &b0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  - &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("key", ["size", "prompt", "compile"])
def test_a_config_alias_bomb_is_refused_at_once(tmp_path, capsys, key):
    config = tmp_path / "bomb.yaml"
    config.write_text("steps: 2\n" + alias_bomb(key))
    assert config.stat().st_size < 1000
    with pytest.raises(ParameterError, match="aliases"):
        runner.read_config(str(config))
    code, lines = run(["translate", "--config", str(config), "--image", CAT, "--model", "tiny"], capsys)
    assert_one_line_error(code, lines, "aliases")


def test_harmless_aliases_still_work_and_self_reference_is_refused(tmp_path):
    config = tmp_path / "ok.yaml"
    config.write_text('prompt: &p "a dog"\nsource_prompt: *p\nsize: [64, 64]\n')
    assert runner.read_config(str(config))[0] == {"prompt": "a dog", "source_prompt": "a dog", "size": [64, 64]}
    config.write_text("size: &a [1, *a]\n")
    with pytest.raises(ParameterError, match="contains itself"):
        runner.read_config(str(config))


def test_error_messages_echo_values_in_bounded_form(tiny_pipe):
    nested = ["x"] * 9
    for _ in range(9):
        nested = [nested] * 9  # 9**10 leaves if expanded
    assert len(shorten(nested)) <= 120 and len(shorten("y" * 10**6)) <= 120
    assert "\n" not in shorten(np.zeros((50, 50)))
    for value in (dict(prompt=[nested]), dict(prompt="a dog", size=nested)):  # the checks echo the value
        with pytest.raises(ParameterError) as raised:
            ze.translate(tiny_pipe, CAT, **value)
        assert len(str(raised.value)) < 300
    assert len(str(ParameterError("z" * 10**6))) <= MESSAGE_LIMIT + 40


# ----------------------------------------------------------------------------------------- 2. pixel values
BASE = np.random.default_rng(0).random((16, 24, 3)).astype(np.float32)
EXPECTED = (BASE * 255 + 0.5).astype(np.uint8)


def chw(array):
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def test_floats_within_the_tolerance_are_clipped_the_same_for_numpy_and_torch():
    noisy = BASE.copy()
    noisy[0, 0, 0], noisy[1, 1, 1] = -0.002, 1 + 0.9 * FLOAT_TOLERANCE
    clipped = np.clip(noisy, 0, 1)
    expected = (clipped * 255 + 0.5).astype(np.uint8)
    outs = [np.asarray(load_image(x)) for x in (noisy, chw(noisy), chw(noisy)[None], noisy[None],
                                                chw(noisy).to(torch.bfloat16).float(), Image.fromarray(noisy[..., 0]))]
    for out in outs[:4]:
        assert np.array_equal(out, expected)  # not washed out: mean stays, every path agrees
    assert np.abs(outs[4].astype(int) - expected).max() <= 2  # bfloat16 rounding
    assert np.array_equal(outs[5][..., 0], expected[..., 0])  # PIL mode F, same rule


@pytest.mark.parametrize("value, word", [
    (BASE * 255, "divide by 255"),
    (chw(BASE * 255)[None], "divide by 255"),
    (BASE * 2 - 1, "(x + 1) / 2"),
    (chw(BASE * 2 - 1), "(x + 1) / 2"),
    (BASE * 40000, "divide by 65535"),
    (np.where(BASE > 0.5, np.nan, BASE), "NaN"),
    (chw(np.where(BASE > 0.5, np.inf, BASE)), "infinite"),
    (BASE.astype(np.complex64), "complex64"),
    (np.array([[None] * 4] * 4), "object"),
    (torch.empty(1, 3, 8, 8, device="meta"), "meta"),
    (torch.zeros(3, 8, 8).to_sparse(), "dense"),
    (torch.zeros(2, 3, 8, 8), "batch 2"),
    (np.full((8, 8), 300, np.int32), "uint16"),
    (np.full((8, 8), -1, np.int8), "0–255"),
])
def test_pixel_values_far_outside_the_convention_are_image_errors(value, word):
    with pytest.raises(ImageError, match=None) as raised:
        load_image(value)
    assert word in str(raised.value), str(raised.value)
    with pytest.raises(MaskError):  # masks read the same values
        load_mask(value)


def test_the_dtype_sets_the_scale_never_the_values(tmp_path):
    dark = np.full((8, 8), 200 * 257, np.uint16)  # a dark 16-bit image: 200 of 255
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert Image.open(tmp_path / "dark16.png").mode.startswith("I;16")
    assert np.asarray(load_image(str(tmp_path / "dark16.png"))).max() == 200  # not stretched to white
    assert np.asarray(load_image(dark)).max() == 200
    small = np.full((8, 8), 200, np.uint16)
    assert np.asarray(load_image(small)).max() == 1  # a uint16 array is 16-bit, whatever its values
    (tmp_path / "deep.pgm").write_bytes(b"P5\n4 4\n65535\n" + np.full(16, 40000, ">u2").tobytes())
    assert Image.open(tmp_path / "deep.pgm").mode == "I"  # PIL's 16-bit mode for PGM
    assert np.asarray(load_image(str(tmp_path / "deep.pgm"))).max() == round(40000 / 257)
    assert np.asarray(load_image(np.full((8, 8), 200, np.int64))).max() == 200  # other integers: 8-bit
    assert np.asarray(load_image(np.eye(8, dtype=bool))).max() == 255
    wide = Image.fromarray(np.full((8, 8), 70000, np.int32))
    with pytest.raises(ImageError, match="mode I"):
        load_image(wide)


def test_a_float_tiff_of_0_255_values_is_refused_not_white(tmp_path, capsys):
    path = tmp_path / "float.tif"
    Image.fromarray((BASE[..., 0] * 255).astype(np.float32)).save(path)
    assert Image.open(path).mode == "F"
    with pytest.raises(ImageError, match="divide by 255"):
        load_image(str(path))
    code, lines = run(["invert", "--image", str(path), "--model", "tiny", "--steps", "2", "--out",
                       str(tmp_path / "out")], capsys)
    assert_one_line_error(code, lines, "divide by 255")
    assert not (tmp_path / "out" / "invert.png").exists()
    Image.fromarray(BASE[..., 0]).save(tmp_path / "unit.tif")  # the same file in [0, 1] is read
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "unit.tif")))[..., 0], EXPECTED[..., 0])


# ----------------------------------------------------------------------------------------- 3. PNG chunk bombs
def png_with_chunk(kind: bytes, payload: bytes, after_data: bool = False) -> bytes:
    """A valid 8×8 PNG with one extra chunk before (or after) its image data."""
    def chunk(name: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + name + data + struct.pack(">I", zlib.crc32(name + data) & 0xFFFFFFFF)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, "PNG")
    data = buffer.getvalue()
    at = data.index(b"IEND" if after_data else b"IDAT") - 4
    return data[:at] + chunk(kind, payload) + data[at:]


@pytest.fixture(scope="module")
def expanding():
    """zlib data of 200 MB of zeros (~200 KB), compressed a megabyte at a time."""
    packer, block = zlib.compressobj(9), b"\0" * (1 << 20)
    return b"".join(packer.compress(block) for _ in range(200)) + packer.flush()


@pytest.mark.parametrize("kind, header, after", [(b"zTXt", b"Comment\0\0", False), (b"zTXt", b"Comment\0\0", True),
                                                 (b"iCCP", b"icc\0\0", False)])
def test_a_png_whose_chunk_expands_to_200_mb_is_an_image_error(tmp_path, capsys, expanding, kind, header, after):
    path = tmp_path / "chunk.png"
    path.write_bytes(png_with_chunk(kind, header + expanding, after))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="metadata"):
        load_image(str(path))
    code, lines = run(["invert", "--image", str(path), "--model", "tiny", "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, lines, "metadata")


# ----------------------------------------------------------------------------------------- 4. jobs file encodings
def test_a_latin1_jobs_file_names_the_line_and_byte(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    data = (b'{"method": "invert", "id": "a", "image": "cat.png"}\n'
            b'{"method": "translate", "id": "b", "image": "cat.png", "prompt": "caf\xe9"}\n')
    jobs.write_bytes(data)
    with pytest.raises(ParameterError, match=rf"line 2, byte {data.index(0xe9)} \(0xe9\)"):
        batch.read_jobs(jobs)
    code, lines = run(["batch", str(jobs), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert_one_line_error(code, lines, "not UTF-8")
    assert not (tmp_path / "out" / batch.RESULTS).exists()


def test_a_jobs_file_with_a_byte_order_mark_keeps_its_first_id(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'\xef\xbb\xbf{"method": "invert", "id": "first"}\n{"method": "invert", "id": "second"}\n')
    assert [(job["id"], "_error" in job) for job in batch.read_jobs(jobs)] == [("first", False), ("second", False)]


# ----------------------------------------------------------------------------------------- 7. FLUX negative prompt
def test_flux_translate_refuses_a_negative_prompt_before_model_work(tiny_flux_pipe, capsys):
    before, calls = processors_snapshot(tiny_flux_pipe), []
    handle = tiny_flux_pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ParameterError, match="guidance-distilled"):
            ze.translate(tiny_flux_pipe, make_image(2, (64, 64)), "a dog", negative_prompt="blurry")
    finally:
        handle.remove()
    assert calls == [] and processors_snapshot(tiny_flux_pipe) == before
    code, lines = run(["translate", "--image", CAT, "--prompt", "a dog", "--negative-prompt", "blurry", "--model",
                       "tiny-flux"], capsys)
    assert_one_line_error(code, lines, "SD3")


def test_sd3_translate_keeps_its_negative_prompt(tiny_sd3_pipe):
    image = make_image(2, (64, 64))
    plain = ze.translate(tiny_sd3_pipe, image, "a dog", steps=2, seed=0, output_type="np").images
    negative = ze.translate(tiny_sd3_pipe, image, "a dog", steps=2, seed=0, output_type="np",
                            negative_prompt="blurry")
    assert negative.stats.params["negative_prompt"] == "blurry"
    assert not np.array_equal(plain, negative.images)  # it enters the CFG branch
    assert ze.translate(tiny_sd3_pipe, image, "a dog", steps=2, seed=0, output_type="np", negative_prompt=""
                        ).images.shape == plain.shape  # and FLUX's "leave it empty" is fine on SD3 too


def test_flux_accepts_an_empty_negative_prompt(tiny_flux_pipe):
    out = ze.translate(tiny_flux_pipe, make_image(2, (64, 64)), "a dog", steps=2, negative_prompt="  ",
                       output_type="np")
    assert out.images.shape[0] == 1


# ----------------------------------------------------------------------------------------- 8. long mask phrases
@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    from test_masks import tiny_grounding_dino, tiny_owlv2
    masks.register("long-owlv2", *tiny_owlv2())
    masks.register("long-gdino", *tiny_grounding_dino(tmp_path_factory.mktemp("gdino")))
    yield
    masks.clear_cache()


@pytest.mark.parametrize("detector, limit, words", [("long-owlv2", 16, 10), ("long-gdino", 64, 40)])
def test_a_phrase_past_the_detector_token_limit_is_a_mask_error(detectors, detector, limit, words):
    image = make_image(3, (96, 64))
    model, processor = masks._load("detector", detector, *masks.placement("cpu"))
    assert masks.token_limit(model, processor, masks._family(model)) == limit
    forwards = []
    handle = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        with pytest.raises(MaskError, match=f"over the limit of {limit} tokens") as raised:
            masks.detect(image, " ".join(["the red"] * words) + " panda", detector=detector, device="cpu")
        assert "shorter phrase" in str(raised.value) and forwards == []  # refused before the detector runs
        box, score = masks.detect(image, "the panda", detector=detector, device="cpu", threshold=0.0)
    finally:
        handle.remove()
    assert forwards == [1] and 0 <= box[0] < box[2] <= 96
