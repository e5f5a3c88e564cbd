"""The toy world as a PIE-Bench-layout data set, so `zeroedit batch` + `zeroedit eval` run end to end offline:
`mapping_file.json` + `annotation_images/`, one entry per `zeroedit.toy.quality.edit_cases` case (a one-object
scene, its colour or style changed), the edited region as PIE-Bench's RLE mask (the object, grown by one pixel,
for a colour edit; the whole image for a style edit) and a "toy" key naming the case. The toy detectors
(`quality.score_edit`) are the ground-truth metric: "target" (the new colour/style is detected, the old one gone)
and "iou" (the edited object's detected mask against the source's exact mask).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from .pixel import encode_rle


def _grow(mask: np.ndarray) -> np.ndarray:
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


@functools.lru_cache(maxsize=4)
def _cases(n: int, kinds: tuple, seed: int):
    from ..toy.quality import edit_cases
    return edit_cases(n, kinds, seed)


def write_dataset(root, n: int = 24, kinds=("color", "style"), seed: int = 0) -> Path:
    """Write n toy edit cases under `root` in PIE-Bench's layout; returns the mapping file."""
    root = Path(root)
    mapping = {}
    for index, case in enumerate(_cases(n, tuple(kinds), seed)):
        key = f"toy{index:04d}"
        path = f"{case.kind}/{key}.png"
        (root / "annotation_images" / case.kind).mkdir(parents=True, exist_ok=True)
        case.image.save(root / "annotation_images" / path)
        edited = _grow(case.mask) if case.kind != "style" else np.ones_like(case.mask)
        mapping[key] = {"image_path": path, "original_prompt": case.source_prompt,
                        "editing_prompt": case.target_prompt, "editing_type_id": case.kind,
                        "mask": encode_rle(edited), "toy": {"index": index, "n": n, "kinds": list(kinds), "seed": seed}}
    file = root / "mapping_file.json"
    file.write_text(json.dumps(mapping, indent=1), encoding="utf-8")
    return file


def score(entry: dict, edited) -> dict:
    """The toy detectors' verdict on an edit of the entry's case: {"target": 0/1, "iou": float}."""
    from ..toy.quality import score_edit
    toy = entry["toy"]
    case = _cases(toy["n"], tuple(toy["kinds"]), toy["seed"])[toy["index"]]
    verdict = score_edit(case, edited.convert("RGB"))
    return {"target": float(verdict["target"]), "iou": verdict["iou"]}
