"""Masks and boxes from words: open-vocabulary detection, then SAM prompted by the detected box
("Grounded-SAM"), through transformers.

    mask = ze.masks.segment(image, "the panda")   # bool H×W of the image's size: detector box -> SAM mask
    mask = ze.masks.segment(image)                # the salient object (heuristic, see `salient`)
    x0, y0, x1, y1 = ze.masks.box(image, "the table")   # the best detection, in the image's pixels

Models are loaded with `from_pretrained` from the user's Hugging Face cache like any model (with
HF_HUB_OFFLINE=1 nothing is downloaded), once per process and per (model, device, dtype), thread-safe:
- segmenter: SAM (`SamModel` + `SamProcessor`), default "facebook/sam-vit-base"; any SAM checkpoint or folder
  (sam-vit-large/-huge, SlimSAM).
- detector: OWLv2 (`AutoModelForZeroShotObjectDetection`), default "google/owlv2-base-patch16-ensemble"; Grounding
  DINO ("IDEA-Research/grounding-dino-tiny", short name "grounding-dino") and OWL-ViT by argument.
  Short names: "owlv2", "grounding-dino". Score threshold (None = the transformers post-processing default of
  the family): OWLv2/OWL-ViT 0.1, Grounding DINO 0.25.
Placement: `device=`/`dtype=`, or `like=pipe` (the pipeline's execution device and dtype; float32 on CPU).
Default: CUDA if available, float32. `register(name, model, processor)` puts an already built model under a name
(tests use tiny random models; a user can plug a fine-tune); `set_defaults(...)` changes the process-wide
default models (what compose/translate/personalize use for phrases and "auto").

Steps of `segment(image, phrase)`: (1) the detector scores every query box against the phrase (sigmoid of
its logit, max over the phrase's tokens); the best box is kept if its score reaches the threshold, else
MaskError with the best score; (2) SAM is prompted by that box with multimask output, and the mask with the
highest predicted IoU is returned, upsampled to the image's size and thresholded at logit 0.

Values the methods accept wherever a mask is expected (`resolve_mask`, `resolve_region`): "auto" (the salient
object), a phrase (any string that is not an existing file and has no image suffix), a box (x0, y0, x1, y1), or
a mask image/path as before.
"""
from __future__ import annotations

import collections
import copy
import logging
import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .devices import execution_device
from .errors import MaskError, ModelError, ParameterError, shorten
from .images import load_image, load_mask

logger = logging.getLogger(__name__)

DEFAULT_SEGMENTER = "facebook/sam-vit-base"
DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
SHORT_NAMES = {"owlv2": DEFAULT_DETECTOR, "grounding-dino": "IDEA-Research/grounding-dino-tiny",
               "sam": DEFAULT_SEGMENTER}
THRESHOLDS = {"owlv2": 0.1, "owlvit": 0.1, "grounding-dino": 0.25}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
SALIENT_GRID = 3  # salient object: SAM prompted by a 3×3 grid of points
SALIENT_AREA = (0.01, 0.85)  # … keeping masks that cover 1 %–85 % of the image

_defaults = {"segmenter": DEFAULT_SEGMENTER, "detector": DEFAULT_DETECTOR}
_registered: dict[str, tuple] = {}  # name -> (model, processor)
_cache: dict[tuple, tuple] = {}  # (kind, name, device, dtype) -> (model, processor)
_lock = threading.Lock()
loads = collections.Counter()  # (kind, name) -> how many times a model was built/loaded in this process


# ----------------------------------------------------------------------------------------- models
def register(name: str, model, processor) -> None:
    """Use `model` + `processor` (already built) whenever `name` is asked for; clears cached placements of it.
    The model is moved to the asked device/dtype in place (a copy for a second placement)."""
    if not isinstance(name, str) or not name.strip():
        raise ParameterError(f"register needs a model name, got {shorten(name)}.")
    with _lock:
        _registered[name] = (model.eval(), processor)
        for key in [k for k in _cache if k[1] == name]:
            del _cache[key]


def set_defaults(segmenter: str | None = None, detector: str | None = None) -> dict:
    """Change the process-wide default models (names, short names or folders); returns the defaults now."""
    for kind, value in (("segmenter", segmenter), ("detector", detector)):
        if value is not None:
            _defaults[kind] = _name(value, kind)
    return dict(_defaults)


def clear_cache() -> None:
    """Forget every loaded model (registered ones stay registered)."""
    with _lock:
        _cache.clear()


def _name(value, kind: str) -> str:
    if value is None:
        return _defaults[kind]
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ParameterError(f"{kind} must be a model name or folder, got {shorten(value)}.")
    value = os.fspath(value)
    return SHORT_NAMES.get(value, value)


def placement(device=None, dtype=None, like=None) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of the mask models: explicit arguments, else the pipeline `like`'s execution device (where
    its work runs under offloading, zeroedit/devices.py) and dtype (float32 on CPU), else CUDA if available and
    float32."""
    if like is not None:
        device = device or execution_device(like)
        dtype = dtype or like.dtype
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        raise ParameterError(f"device must be a torch device or a name such as 'cuda', got {shorten(device)}.") from None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ParameterError("dtype must be a torch dtype or a name such as 'float16'.")
    dtype = dtype or torch.float32
    return device, (torch.float32 if device.type == "cpu" else dtype)


def _load(kind: str, name: str, device, dtype):
    """(model, processor) for `kind` ("segmenter"/"detector"), loaded once per (name, device, dtype)."""
    key = (kind, name, str(device), str(dtype))
    with _lock:
        if key not in _cache:
            if name in _registered:  # a copy for each further placement: .to() moves a module in place
                model, processor = _registered[name]
                model = copy.deepcopy(model) if any(k[:2] == (kind, name) for k in _cache) else model
            else:
                model, processor = _from_pretrained(kind, name)
            loads[(kind, name)] += 1
            _cache[key] = (model.to(device=device, dtype=dtype).eval(), processor)
        return _cache[key]


def _from_pretrained(kind: str, name: str):
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel, SamProcessor
    try:
        if kind == "segmenter":
            return SamModel.from_pretrained(name), SamProcessor.from_pretrained(name)
        return AutoModelForZeroShotObjectDetection.from_pretrained(name), AutoProcessor.from_pretrained(name)
    except (OSError, ValueError, KeyError) as error:
        what = "SAM segmenter" if kind == "segmenter" else "open-vocabulary detector"
        raise ModelError(f"the {what} {name!r} could not be loaded ({str(error).splitlines()[0][:200]}). Download it "
                         f"once with `hf download {name}` (huggingface_hub's CLI; HF_HUB_OFFLINE=1 only reads the "
                         f"cache), or pass a local folder as {kind}=.") from None


def _family(model) -> str:
    family = getattr(model.config, "model_type", "").replace("_", "-")
    if family not in THRESHOLDS:
        raise ModelError(f"the detector is a {family!r} model; masks supports OWLv2, OWL-ViT and Grounding DINO.")
    return family


# ----------------------------------------------------------------------------------------- checks
def _check_phrase(phrase) -> str:
    if not isinstance(phrase, str) or not phrase.strip():
        raise ParameterError("the phrase must be a non-empty string naming an object, e.g. 'the panda', got "
                             f"{shorten(phrase)}.")
    return phrase.strip()


def _check_threshold(threshold):
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ParameterError(f"threshold must be a score in [0, 1] or None, got {shorten(threshold)}.")
    return float(threshold)


def is_phrase(value, base: Path | None = None) -> bool:
    """True for "auto" and for a string that names no existing file (relative to `base`) and has no image
    suffix: such strings are phrases, everything else a path."""
    if not isinstance(value, str) or not value.strip():
        return False
    if value == "auto":
        return True
    path = Path(os.path.expanduser(value))
    if base is not None and not path.is_absolute():
        path = base / path
    return not path.exists() and path.suffix.lower() not in IMAGE_SUFFIXES


# ----------------------------------------------------------------------------------------- detection
@torch.no_grad()
def detect(image, phrase: str, detector=None, threshold: float | None = None, device=None, dtype=None,
           like=None) -> tuple[tuple[float, float, float, float], float]:
    """The detector's best box for `phrase` and its score: ((x0, y0, x1, y1) in pixels, score). MaskError when
    the best score is under the threshold (the message gives both)."""
    phrase, threshold = _check_phrase(phrase), _check_threshold(threshold)
    picture = load_image(image, "image")
    name = _name(detector, "detector")
    model, processor = _load("detector", name, *placement(device, dtype, like))
    family = _family(model)
    threshold = THRESHOLDS[family] if threshold is None else threshold
    # Grounding DINO's text format: lower case, ending with "."
    text = (phrase.lower() if phrase.endswith(".") else phrase.lower() + ".") if family == "grounding-dino" else phrase
    _check_length(phrase, text, model, processor, family, name)
    try:
        if family == "grounding-dino":
            inputs = processor(images=picture, text=text, return_tensors="pt")
        else:
            inputs = processor(text=[[phrase]], images=picture, return_tensors="pt", truncation=True)
    except ImportError as error:  # OWLv2's PIL image processor resizes with scipy
        raise ModelError(f"the detector's image processor needs a package: {str(error).strip().splitlines()[0]} "
                         "(pip install 'zeroedit[masks]').") from None
    out = model(**_to(inputs, model))
    scores = out.logits[0].float().sigmoid().amax(-1)  # per query: max over the phrase's tokens / the one query
    best = int(scores.argmax())
    score = float(scores[best])
    if score < threshold:
        raise MaskError(f"{shorten(phrase)} was not found in the image: best detection score {score:.3f} is under the "
                        f"threshold {threshold:.3f} (detector {name}). Rephrase, lower threshold=, or give a box/mask.")
    cx, cy, w, h = out.pred_boxes[0, best].float().tolist()
    width, height = picture.size
    sx, sy = (max(width, height),) * 2 if family == "owlv2" else (width, height)  # OWLv2 pads to a square
    box = (max(0.0, (cx - w / 2) * sx), max(0.0, (cy - h / 2) * sy),
           min(float(width), (cx + w / 2) * sx), min(float(height), (cy + h / 2) * sy))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise MaskError(f"the best detection of {shorten(phrase)} (score {score:.3f}) lies outside the image.")
    return box, score


def token_limit(model, processor, family: str) -> int | None:
    """The most tokens (special ones included) of a phrase the detector reads: Grounding DINO's max_text_len
    (its forward cuts the rest), OWL's text positions (its processor truncates), or the tokenizer's own limit
    when smaller; None when the model does not say (a stand-in model)."""
    config = model.config
    limit = getattr(config, "max_text_len", None) if family == "grounding-dino" else \
        getattr(getattr(config, "text_config", None), "max_position_embeddings", None)
    own = getattr(getattr(processor, "tokenizer", None), "model_max_length", None)
    return min(v for v in (limit, own) if v) if limit or own else None


def _check_length(phrase: str, text: str, model, processor, family: str, name: str) -> None:
    """Refuse (MaskError) a phrase longer than the detector's token limit: it would be cut silently, often
    dropping the noun at its end."""
    limit = token_limit(model, processor, family)
    if limit is None or getattr(processor, "tokenizer", None) is None:
        return
    count = len(processor.tokenizer(text)["input_ids"])
    if count > limit:
        raise MaskError(f"the phrase {shorten(phrase)} is {count} tokens long, over the limit of {limit} tokens of "
                        f"the detector {name} (the words past it would be cut off): use a shorter phrase naming the "
                        "object, e.g. 'the red car'.")


def box(image, phrase: str, detector=None, threshold: float | None = None, device=None, dtype=None,
        like=None) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in the image's pixels of the best detection of `phrase` (see `detect`)."""
    return detect(image, phrase, detector, threshold, device, dtype, like)[0]


def _to(inputs, model) -> dict:
    weight = next(model.parameters())
    device, dtype = weight.device, weight.dtype
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()
            if isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------------------- segmentation
@torch.no_grad()
def _sam(picture: Image.Image, model, processor, **prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's masks (prompts, 3, H, W) bool at the image's size and predicted IoUs (prompts, 3)."""
    inputs = processor(images=picture, return_tensors="pt", **prompts)
    sizes, reshaped = inputs.pop("original_sizes"), inputs.pop("reshaped_input_sizes")
    out = model(**_to(inputs, model), multimask_output=True)
    masks = processor.post_process_masks(out.pred_masks.float().cpu(), sizes, reshaped)[0]
    return masks, out.iou_scores[0].float().cpu()


def segment(image, phrase: str | None = None, segmenter=None, detector=None, threshold: float | None = None,
            device=None, dtype=None, like=None) -> np.ndarray:
    """A boolean mask (H × W, the image's size) of the object named by `phrase` (detector box -> SAM, the
    highest predicted-IoU mask), or of the salient object when `phrase` is None or "auto" (see `salient`)."""
    if phrase is not None and phrase != "auto":
        phrase = _check_phrase(phrase)
    threshold = _check_threshold(threshold)
    picture = load_image(image, "image")
    seg_name = _name(segmenter, "segmenter")
    if phrase is None or phrase == "auto":
        return salient(picture, seg_name, device, dtype, like)
    found, _ = detect(picture, phrase, detector, threshold, device, dtype, like)
    model, processor = _load("segmenter", seg_name, *placement(device, dtype, like))
    masks, scores = _sam(picture, model, processor, input_boxes=[[list(found)]])
    mask = masks[0, int(scores[0].argmax())].numpy()
    if not mask.any():
        raise MaskError(f"SAM returned an empty mask for {shorten(phrase)} in its box {tuple(round(v) for v in found)}.")
    return mask


def salient(image, segmenter=None, device=None, dtype=None, like=None) -> np.ndarray:
    """The salient object (a documented heuristic, not a saliency model): SAM prompted by each point of a
    3×3 grid (at 1/4, 1/2, 3/4 of each side), three masks per point; among the masks covering 1–85 % of the
    image, the one with the highest predicted IoU minus the share of the image border it covers (an object
    seldom touches the border, the background does)."""
    picture = load_image(image, "image")
    model, processor = _load("segmenter", _name(segmenter, "segmenter"), *placement(device, dtype, like))
    width, height = picture.size
    steps = [(i + 1) / (SALIENT_GRID + 1) for i in range(SALIENT_GRID)]
    points = [[[x * width, y * height]] for y in steps for x in steps]
    masks, scores = _sam(picture, model, processor, input_points=[points], input_labels=[[[1]] * len(points)])
    masks = masks.flatten(0, 1)
    area = masks.float().mean(dim=(-1, -2))
    border = torch.cat([masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1]], dim=-1).float().mean(-1)
    ranking = scores.flatten() - border
    ranking[(area < SALIENT_AREA[0]) | (area > SALIENT_AREA[1])] = -float("inf")
    best = int(ranking.argmax())
    if ranking[best] == -float("inf"):
        raise MaskError("no salient object found (no SAM mask covers 1–85 % of the image); give a phrase or a mask.")
    return masks[best].numpy()


# ----------------------------------------------------------------------------------------- method inputs
def _is_box(value) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 4 and \
        all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value)


def resolve_mask(image, value, what: str = "mask", like=None) -> np.ndarray | None:
    """A method's mask argument on `image` -> bool array of the image's size: "auto" (salient object), a
    phrase (segment), a box (x0, y0, x1, y1) in pixels, or a mask image (resized, nearest). None stays None."""
    if value is None:
        return None
    picture = load_image(image, "image")
    if is_phrase(value):
        return segment(picture, value, like=like)
    if _is_box(value):
        x0, y0, x1, y1 = (float(v) for v in value)
        if x1 <= x0 or y1 <= y0:
            raise MaskError(f"{what} box {tuple(value)} is empty: give (x0, y0, x1, y1) with x1 > x0 and y1 > y0.")
        xs, ys = np.arange(picture.width) + 0.5, np.arange(picture.height) + 0.5
        return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return load_mask(value, what, size=picture.size)


def resolve_region(image, value, like=None):
    """A region argument: a phrase becomes the box of that object in `image`; anything else is returned as is."""
    if isinstance(value, str) and is_phrase(value) and value != "auto":
        return box(image, value, like=like)
    return value
