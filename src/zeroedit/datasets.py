"""Readers for the community benchmarks' layouts, producing `zeroedit batch` jobs (write them with write_jobs).

- TF-ICON: root/<domain folder>/<prompt as folder name>/ with bg*.png, fg*.png, fg*_mask*.png, mask_bg_fg*.
- PIE-Bench: mapping_file.json {key: {image_path, original_prompt, editing_prompt, ...}}, images under
  annotation_images/ ("[word]" brackets marking the edit are removed from prompts).
- PnP TI2I: a yaml list of {init_img, source_prompt, target_prompts: [..]} (one job per target prompt).
- MIP-Adapter: dataset_multiconcept.json (concept combinations), benchmark_dataset/<concept>/ images, prompt files.
Paths in jobs are absolute.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp")


def _images(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXT)


def tficon_jobs(root, **defaults) -> list[dict]:
    """TF-ICON benchmark folders -> compose jobs; domain "same" when the path names same_domain, else "cross"."""
    jobs = []
    for folder in sorted({p.parent for p in Path(root).rglob("bg*")}):
        bgs = _images(folder, "bg*")
        masks = [p for p in _images(folder, "fg*") if "_mask" in p.stem]
        fgs = [p for p in _images(folder, "fg*") if "_mask" not in p.stem]
        regions = _images(folder, "mask_bg_fg*")
        if not (bgs and fgs and regions):
            continue
        domain = "same" if "same" in str(folder.relative_to(root)).lower() else "cross"
        job = {"method": "compose", "id": re.sub(r"[^A-Za-z0-9._-]", "_", str(folder.relative_to(root))),
               "background": str(bgs[0].resolve()), "reference": str(fgs[0].resolve()),
               "region": str(regions[0].resolve()), "prompt": folder.name.replace("_", " "), "domain": domain}
        if masks:
            job["reference_mask"] = str(masks[0].resolve())
        jobs.append(dict(job, **defaults))
    return jobs


def _clean(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt.replace("[", "").replace("]", "")).strip()


def piebench_jobs(mapping_file, images=None, method: str = "translate", **defaults) -> list[dict]:
    """PIE-Bench mapping_file.json -> translate jobs (prompt = editing prompt, source_prompt = original)."""
    mapping_file = Path(mapping_file)
    images = Path(images) if images else mapping_file.parent / "annotation_images"
    jobs = []
    for key, entry in sorted(json.loads(mapping_file.read_text(encoding="utf-8")).items()):
        job = {"method": method, "id": f"pie-{key}", "image": str((images / entry["image_path"]).resolve())}
        if method == "translate":
            job.update(prompt=_clean(entry["editing_prompt"]), source_prompt=_clean(entry["original_prompt"]))
        jobs.append(dict(job, **defaults))
    return jobs


def pnp_ti2i_jobs(yaml_file, **defaults) -> list[dict]:
    """PnP TI2I benchmark yaml list -> one translate job per (image, target prompt); paths relative to the yaml."""
    import yaml
    yaml_file = Path(yaml_file)
    jobs = []
    for index, entry in enumerate(yaml.safe_load(yaml_file.read_text(encoding="utf-8")) or []):
        image = Path(entry.get("init_img") or entry["image"])
        image = image if image.is_absolute() or image.exists() else yaml_file.parent / image
        targets = entry.get("target_prompts", entry.get("target_prompt", []))
        for t, prompt in enumerate([targets] if isinstance(targets, str) else targets):
            jobs.append(dict({"method": "translate", "id": f"ti2i-{index:03d}-{t:02d}", "image": str(image.resolve()),
                              "prompt": prompt, "source_prompt": entry.get("source_prompt", "")}, **defaults))
    return jobs


def mip_jobs(root, **defaults) -> list[dict]:
    """MIP-Adapter's multi-concept benchmark (the data_root of hqhQAQ/MIP-Adapter `data/concept101_dataset.py`):
    dataset_multiconcept.json lists combinations [concept, concept, {"prompt_filename_compose": file}]; each line
    of the prompt file, "{0}"/"{1}" replaced by the concepts' class_prompt, is one personalize job whose references
    are every image of benchmark_dataset/<concept>/ (those MIP's evaluation compares with). A combination of two
    concepts with the same class name is skipped (its phrases would collide)."""
    root = Path(root)
    jobs = []
    for comb, sample in enumerate(json.loads((root / "dataset_multiconcept.json").read_text(encoding="utf-8"))):
        names = [concept["class_prompt"] for concept in sample[:2]]
        if names[0] == names[1]:
            continue
        references = {name: [str(p.resolve()) for p in _images(root / "benchmark_dataset" /
                                                                 concept["instance_data_dir"].split("/")[-1], "*")]
                      for name, concept in zip(names, sample[:2])}
        lines = (root / sample[2]["prompt_filename_compose"]).read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(line for line in lines if line.strip()):
            prompt = line.replace("{0}", names[0]).replace("{1}", names[1])
            jobs.append(dict({"method": "personalize", "id": f"mip-{comb:03d}-{index:03d}", "prompt": prompt,
                              "references": references}, **defaults))
    return jobs


def write_jobs(jobs: list[dict], path) -> Path:
    """Write jobs as JSONL for `zeroedit batch`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs), encoding="utf-8")
    return path
