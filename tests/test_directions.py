"""Edit directions: templates, user sentences, cache, save/load with metadata."""
import time

import numpy as np
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


def test_sentences_from_a_local_text_generation_model(tiny_pipe, tmp_path):
    """(c) a local transformers text-generation model: a tiny random GPT-2 written offline."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(["<|endoftext|>"] + [chr(c) for c in range(32, 127)])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = GPT2TokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    sentences = ze.directions.generate(str(tmp_path), "cat", n=4)
    assert len(sentences) == 4 and all(s.startswith("a photo of a cat") for s in sentences)
    assert sentences == ze.directions.generate(str(tmp_path), "cat", n=4)  # seeded
    d = ze.directions.build(tiny_pipe, "cat", "dog", sentences=ze.directions.generate(str(tmp_path), n=4))
    assert d.shape == (1, 77, tiny_pipe.text_encoder.config.hidden_size) and torch.isfinite(d).all()


def test_a_direction_for_another_text_encoder_is_refused(tiny_pipe, tmp_path):
    """Same width, other weights: loading it for this pipeline (or passing its path to ze.edit) raises a clear
    error before any model work; loading it for its own pipeline works."""
    other = ze.load("tiny", seed=1)
    assert other.text_encoder.config.hidden_size == tiny_pipe.text_encoder.config.hidden_size
    path = tmp_path / "c2d.safetensors"
    ze.directions.save(ze.directions.build(other, "cat", "dog"), path, other, "cat", "dog")
    assert ze.directions.load(path, other).shape == (1, 77, other.text_encoder.config.hidden_size)
    with pytest.raises(CheckpointError, match="another text encoder"):
        ze.directions.load(path, tiny_pipe)
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(CheckpointError, match="rebuild it"):
            ze.edit(tiny_pipe, np.zeros((64, 64, 3), np.uint8), direction=str(path), steps=2)
    finally:
        handle.remove()
    assert not calls
