"""Edit directions: templates, user sentences, cache, save/load with metadata."""
import time

import pytest
import torch

import zeroedit as ze
from zeroedit.errors import CheckpointError, ParameterError


def test_templates_give_hundreds_of_sentences():
    sentences = ze.directions.template_sentences("cat")
    assert len(sentences) >= 150 and len(set(sentences)) == len(sentences) and all("cat" in s for s in sentences)


def test_build_is_the_mean_difference_and_cached(tiny_pipe):
    sentences = {"cat": ["a cat", "a photo of a cat"], "dog": ["a dog", "a photo of a dog"]}
    direction = ze.directions.build(tiny_pipe, "cat", "dog", sentences=sentences)
    expected = (ze.directions.mean_embedding(tiny_pipe, sentences["dog"])
                - ze.directions.mean_embedding(tiny_pipe, sentences["cat"]))
    assert direction.shape == (1, 77, 32) and torch.allclose(direction, expected, atol=1e-6)
    assert direction.abs().sum() > 0
    first = ze.directions.build(tiny_pipe, "cat", "dog")
    start = time.perf_counter()
    again = ze.directions.build(tiny_pipe, "cat", "dog")
    assert torch.equal(first, again) and time.perf_counter() - start < 0.5  # served from the cache
    assert not torch.allclose(first, direction)


def test_sentences_from_a_file_and_disk_cache(tiny_pipe, tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("a {} on a table\na sleeping {}\n")
    cache = tmp_path / "cache"
    direction = ze.directions.build(tiny_pipe, "cat", "fox", sentences=str(path), cache_dir=str(cache))
    assert len(list(cache.glob("*.safetensors"))) == 1
    expected = ze.directions.build(tiny_pipe, "cat", "fox", sentences={"cat": ["a cat on a table", "a sleeping cat"],
                                                                      "fox": ["a fox on a table", "a sleeping fox"]})
    assert torch.allclose(direction, expected, atol=1e-6)
    path.write_text("no placeholder here\n")
    with pytest.raises(ParameterError):
        ze.directions.build(tiny_pipe, "cat", "fox", sentences=str(path))


def test_save_and_load_with_metadata(tiny_pipe, tmp_path):
    direction = ze.directions.build(tiny_pipe, "horse", "zebra", sentences={"horse": ["a horse"], "zebra": ["a zebra"]})
    path = tmp_path / "horse2zebra.safetensors"
    ze.directions.save(direction, path, tiny_pipe, "horse", "zebra")
    assert torch.equal(ze.directions.load(path), direction)
    meta = ze.directions.metadata(path)
    assert meta["source"] == "horse" and meta["target"] == "zebra" and meta["format"] == "zeroedit-direction"
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError):
        ze.directions.load(tmp_path / "junk.safetensors")


def test_bad_arguments(tiny_pipe, tiny_xl_pipe):
    with pytest.raises(ParameterError):
        ze.directions.build(tiny_pipe, "", "dog")
    with pytest.raises(ParameterError):
        ze.directions.build(tiny_pipe, "cat", "dog", sentences={"cat": ["a cat"]})
    with pytest.raises(ParameterError):
        ze.directions.build(tiny_xl_pipe, "cat", "dog")
