"""Edit directions for pix2pix-zero (Parmar et al. 2023, Sec. 3.1): Δ = mean embedding of sentences with the
target concept − mean embedding of sentences with the source concept, for the pipeline's text encoder.

    d = ze.directions.build(pipe, "cat", "dog")                      # built-in offline templates
    d = ze.directions.build(pipe, "cat", "dog", sentences="s.txt")   # lines with "{}" for the concept
    d = ze.directions.build(pipe, "cat", "dog", sentences={"cat": [...], "dog": [...]})
    d = ze.directions.build(pipe, "cat", "dog", sentences=ze.directions.generate("path/to/local-lm", n=200))
    ze.directions.save(d, "cat2dog.safetensors", pipe, "cat", "dog"); d = ze.directions.load("cat2dog.safetensors")

Sentences are encoded as the pipeline encodes prompts (`text_encoder(ids)[0]`, 77 tokens) and averaged per
concept; the direction has shape (1, 77, d). Built directions are cached in memory (and in `cache_dir` when
given), keyed by the text encoder's weights, the concepts and the sentences.

SD3 / FLUX pipelines: the direction is a `Cond` of two differences, one per text space the transformer reads —
the token sequence (FLUX: T5 states (1, L, 4096); SD3: CLIP-L+G states zero-padded ⊕ T5 states along the
sequence) and the pooled CLIP vector (FLUX: CLIP-L's; SD3: CLIP-L ⊕ CLIP-G's). `save`/`load` keep both
("direction" and "pooled"), and the fingerprint covers every text encoder of the pipeline.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import jobs
from .backbones import Cond, backbone_for, check_pipe, is_flow
from .devices import stored_values
from .errors import CheckpointError, ParameterError

TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a close-up photo of a {}",
             "a blurry photo of a {}", "a bright photo of a {}", "a dark photo of a {}", "a painting of a {}",
             "a drawing of a {}", "a cropped photo of a {}", "a good photo of a {}", "a photo of the {}",
             "a {} in the wild", "a {} on the grass", "a {} in a room", "a {} on the street", "a {} at the beach",
             "a {} in the snow", "a {} in a garden", "a {} sitting on a sofa", "a {} lying on the floor",
             "a {} looking at the camera", "a small {}", "a large {}", "a cute {}", "a {} in the sunlight")
STYLES = ("", ", high resolution", ", studio lighting", ", in the evening", ", black and white", ", 35mm film")
_CACHE: dict[str, torch.Tensor] = {}


def template_sentences(concept: str) -> list[str]:
    """Hundreds of varied sentences about `concept`, made offline from templates × styles (156)."""
    return [template.format(concept) + style for template, style in itertools.product(TEMPLATES, STYLES)]


def generate(model: str, concept: str | None = None, n: int = 100, seed: int = 0):
    """Sentences from a local transformers text-generation model (a folder; nothing is downloaded).
    Returns a function concept -> sentences when `concept` is None (pass it as `sentences=`)."""
    from transformers import pipeline, set_seed

    def sentences_for(name: str) -> list[str]:
        set_seed(seed)
        generator = pipeline("text-generation", model=model)
        outputs = generator(f"a photo of a {name}", max_new_tokens=16, num_return_sequences=n, do_sample=True)
        return [f"a photo of a {name} " + o["generated_text"].split(f"a photo of a {name}", 1)[-1].strip()
                for o in outputs]

    return sentences_for if concept is None else sentences_for(concept)


def _sentences(sentences, concept: str) -> list[str]:
    if sentences is None:
        return template_sentences(concept)
    if callable(sentences):
        result = list(sentences(concept))
    elif isinstance(sentences, dict):
        if concept not in sentences:
            raise ParameterError(f"sentences has no entry for {concept!r}; give a list for each concept.")
        result = list(sentences[concept])
    elif isinstance(sentences, (str, Path)):
        path = Path(sentences)
        if not path.is_file():
            raise ParameterError(f"sentences file {str(path)!r} does not exist.")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not all("{}" in line for line in lines):
            raise ParameterError(f"every line of {path} must contain '{{}}' where the concept goes.")
        result = [line.format(concept) for line in lines]
    else:
        raise ParameterError("sentences must be None, a file path, a dict {concept: [sentences]} or a function.")
    if not result or not all(isinstance(s, str) for s in result):
        raise ParameterError(f"no sentences for {concept!r}.")
    return result


@torch.no_grad()
def mean_embedding(pipe, sentences: list[str], batch: int = 64):
    """Mean of the text encoder's embeddings (1, 77, d) over the sentences, in float32 (SD3/FLUX: a Cond of the
    mean token states and the mean pooled vector)."""
    backbone = backbone_for(pipe)
    total = count = pooled = None
    for start in range(0, len(sentences), batch):
        cond = backbone.encode_prompt(sentences[start:start + batch])
        weight = cond.token_mask().float()[..., None]  # texts with a length of their own: the mean over real tokens
        parts = [(cond.embeds.float() * weight).sum(0, keepdim=True), weight.sum(0, keepdim=True)]
        total, count = (parts if total is None else [_padded_sum(t, p) for t, p in zip((total, count), parts)])
        if cond.pooled is not None:
            pooled = cond.pooled.float().sum(0, keepdim=True) + (0 if pooled is None else pooled)
    embeds = total / count.clamp_min(1)
    if not is_flow(pipe):
        return embeds
    return Cond(embeds, None if pooled is None else pooled / len(sentences))


def _padded_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b over the token axis, the shorter zero-padded."""
    length = max(a.shape[1], b.shape[1])
    return (torch.nn.functional.pad(a, (0, 0, 0, length - a.shape[1]))
            + torch.nn.functional.pad(b, (0, 0, 0, length - b.shape[1])))


def _text_encoders(pipe) -> list:
    """The text encoders a direction depends on: SD 1.x/2.x's one; SD3's CLIP-L, CLIP-G (and T5); FLUX's CLIP-L, T5."""
    if not is_flow(pipe):
        return [pipe.text_encoder]
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    return [getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None]


def text_encoder_fingerprint(pipe) -> str:
    """A short hash of the text encoders' token-embedding tables (shape and first 4096 values of each; SD 1.x/2.x:
    the one encoder's, as before): which text encoder(s) a direction belongs to."""
    digest = None
    for encoder in _text_encoders(pipe):
        weights = stored_values(encoder.get_input_embeddings())  # also under sequential CPU offload
        if digest is None:
            digest = hashlib.sha1(str(tuple(weights.shape)).encode())
        else:
            digest.update(str(tuple(weights.shape)).encode())
        digest.update(weights.detach().float().flatten()[:4096].cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _fingerprint(pipe, source, target, src_sentences, tgt_sentences) -> str:
    digest = hashlib.sha1(json.dumps([source, target, src_sentences, tgt_sentences]).encode())
    digest.update(text_encoder_fingerprint(pipe).encode())
    return digest.hexdigest()


def check(direction, pipe) -> torch.Tensor:
    """Refuse a direction that is not a finite tensor (1, L, d) for this pipeline's text encoder (L its token
    length, d its width) with a ParameterError."""
    shape = (1, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)
    if not isinstance(direction, torch.Tensor) or tuple(direction.shape) != shape:
        got = tuple(direction.shape) if isinstance(direction, torch.Tensor) else type(direction).__name__
        raise ParameterError(f"direction must be a tensor of shape {shape} from ze.directions.build for this "
                             f"pipeline, got {got}.")
    if not direction.is_floating_point() or not torch.isfinite(direction).all():
        raise ParameterError("direction holds NaN or infinite values (or is not a float tensor); rebuild it with "
                             "ze.directions.build.")
    return direction


def build(pipe, source: str, target: str, sentences=None, cache_dir: str | None = None) -> torch.Tensor:
    """The edit direction source → target for this pipeline's text encoder (see module docstring)."""
    with jobs.exclusive(check_pipe(pipe)):  # the text encoder is the pipeline's: one call at a time
        return _build(pipe, source, target, sentences, cache_dir)


def _build(pipe, source, target, sentences, cache_dir) -> torch.Tensor:
    for name, value in (("source", source), ("target", target)):
        if not isinstance(value, str) or not value.strip():
            raise ParameterError(f"{name} must be a non-empty string, got {value!r}.")
    if getattr(pipe, "text_encoder_2", None) is not None and not is_flow(pipe):
        raise ParameterError("edit directions are built for SD 1.x/2.x, SD3 and FLUX text encoders; this is an SDXL "
                             "pipeline.")
    backbone_for(pipe)  # a pipeline without a supported model's components is a ModelError here, before any encoding
    src, tgt = _sentences(sentences, source), _sentences(sentences, target)
    key = _fingerprint(pipe, source, target, src, tgt)
    if key in _CACHE:
        return _copy(_CACHE[key])
    path = Path(cache_dir) / f"{key}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        direction = load(path)
    else:
        direction = _difference(mean_embedding(pipe, tgt), mean_embedding(pipe, src))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save(direction, path, pipe, source, target, sentences=len(src) + len(tgt))
    _CACHE[key] = _copy(direction, "cpu")
    return _copy(direction)


def _difference(target, source):
    if isinstance(target, Cond):
        pooled = None if target.pooled is None else target.pooled - source.pooled
        return Cond(_padded_sum(target.embeds, -source.embeds), pooled)
    return target - source


def _copy(direction, device=None):
    if isinstance(direction, Cond):
        return Cond(direction.embeds.to(device).clone(),
                    None if direction.pooled is None else direction.pooled.to(device).clone())
    return direction.to(device).clone()


def save(direction, path, pipe=None, source: str = "", target: str = "", **metadata) -> None:
    """Save a direction as safetensors with the model and concepts in its metadata (written atomically)."""
    model = getattr(getattr(pipe, "config", None), "_name_or_path", None) or (type(pipe).__name__ if pipe else "")
    meta = {"format": "zeroedit-direction", "model": str(model), "source": source, "target": target,
            **({"text_encoder": text_encoder_fingerprint(pipe)} if pipe is not None else {}),
            **{k: str(v) for k, v in metadata.items()}}
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tensors = {"direction": direction.embeds, "pooled": direction.pooled} if isinstance(direction, Cond) else {"direction": direction}
    tensors = {k: v for k, v in tensors.items() if v is not None}
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load(path, pipe=None) -> torch.Tensor:
    """Load a direction saved by `save` (metadata in `metadata(path)`): a tensor, or a Cond (token states,
    pooled) for SD3/FLUX. With `pipe`, refuse a direction that was built for other text encoders (its recorded
    fingerprint differs from this pipeline's)."""
    try:
        tensors = load_file(str(path))
        direction = Cond(tensors["direction"], tensors["pooled"]) if "pooled" in tensors else tensors["direction"]
        meta = metadata(path)
    except Exception as error:  # noqa: BLE001 — any unreadable file is the user's to fix
        raise CheckpointError(f"could not read a direction from {str(path)!r}: {error}") from None
    recorded = meta.get("text_encoder")
    if pipe is not None and recorded and recorded != text_encoder_fingerprint(pipe):
        raise CheckpointError(f"the direction {str(path)!r} was built for another text encoder (model "
                              f"{meta.get('model') or 'unknown'}); rebuild it for this pipeline with "
                              f"ze.directions.build(pipe, {meta.get('source')!r}, {meta.get('target')!r}).")
    return direction


def metadata(path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as handle:
        return dict(handle.metadata() or {})
