"""`zeroedit eval RESULTS_DIR [RESULTS_DIR ...] --benchmark piebench|tficon|mip|toy`: score finished batches by
the protocol of the benchmark's paper (zeroedit.metrics) and write, into --out (default RESULTS_DIR/eval):
`eval.csv` (one row per image, raw values), `eval.md` (the summary in the paper's units, the published rows
beside ours, then the per-category means) and `eval.html` (the same tables and per-category bar plots, PNGs
embedded; the PNGs are also written beside it). Several RESULTS_DIRs give one row each (--label names them).

Where the inputs come from: a batch folder holds `results.jsonl` (records with "id", "status", "outputs") and
one sidecar `<id>.json` per job whose "args" are the job's resolved arguments (paths absolute, or relative to the
batch folder for files inside it, as runner.save writes them; eval runs from any directory). The edited image is the
record's first PNG output. Then, per benchmark (jobs built by zeroedit.datasets):
- piebench: source image = the sidecar's "image"; the mask (RLE), prompts and editing type come from PIE-Bench's
  `mapping_file.json`, given with --data, by the job id "pie-<key>";
- tficon: background, reference, region and prompt are the sidecar's; category = its "domain";
- mip: prompt and references ({concept: images}) are the sidecar's; images with the same references form one
  concept combination (the published figure is the mean over combinations);
- toy: a toy-world data set in PIE-Bench's layout (zeroedit.metrics.toy.write_dataset), --data its mapping file;
  the toy detectors' verdict beside the pixel metrics of the unedited part, no model weights needed.
Models (CLIP, DINO, LPIPS) load from the user's caches only (see --allow-download, --lpips-weights); --metrics
picks a subset (e.g. `--metrics psnr,mse,ssim` needs no weights). Every input (results.jsonl, sidecars, mapping
keys, images) is read and checked before any model loads: a bad one is a ParameterError / ImageError / MaskError.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageError, MaskError, ParameterError, shorten
from .images import load_image, load_mask
from .runner import read_text

logger = logging.getLogger(__name__)
NEEDS = {"structure_distance": "dino", "lpips": "lpips", "clip_whole": "clip", "clip_edited": "clip",
         "lpips_bg": "lpips", "lpips_fg": "lpips", "clip_image": "clip", "clip_text": "clip",
         "clip_t": "clip", "clip_i": "clip", "dino": "dino"}


# ----------------------------------------------------------------------------------------- inputs
def read_results(folder: Path) -> list[dict]:
    """The finished ("ok") records of a batch folder's results.jsonl (its presence is checked by `_check`); each
    has a string "id" and a list of output names (ParameterError naming the file and the line otherwise)."""
    file, records = folder / "results.jsonl", []
    for number, line in enumerate(read_text(file, "results file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as error:
            why = getattr(error, "msg", "nested too deeply")
            raise ParameterError(f"{file}, line {number}, is not JSON ({why}): delete or repair that line (a batch "
                                 "stopped mid-write), then run eval again.") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not record["id"]:
            raise ParameterError(f"{file}, line {number}, is not a job record with a string \"id\": give the --out "
                                 "folder of a `zeroedit batch`.")
        outputs = record.get("outputs")
        names = isinstance(outputs, list) and all(isinstance(o, str) for o in outputs)
        if record.get("status") == "ok" and not names:
            raise ParameterError(f"{file}, line {number} (job {record['id']!r}): \"outputs\" must be a list of file "
                                 f"names, got {shorten(outputs)}: repair the line or re-run the job.")
        records.append(record)
    return [r for r in records if r.get("status") == "ok"]


def _path(folder: Path, value) -> Path:
    """A path of a sidecar: absolute as written, else relative to the results folder (runner.save records the
    files inside the output folder relative to it)."""
    path = Path(value)
    return path if path.is_absolute() else folder / path


def _sidecar_args(folder: Path, job_id: str) -> tuple[dict, Path]:
    """The "args" of the job's sidecar <id>.json, and the sidecar's path (for messages)."""
    file = folder / f"{job_id}.json"
    if not file.is_file():
        raise ParameterError(f"job {job_id!r}: its sidecar {file} is missing: copy the whole batch folder, or "
                             "re-run the job.")
    try:
        data = json.loads(read_text(file, f"job {job_id!r}: its sidecar"))
    except (json.JSONDecodeError, RecursionError) as error:
        raise ParameterError(f"job {job_id!r}: its sidecar {file} is not valid JSON ({error}): restore the file "
                             "or re-run the job.") from None
    if not isinstance(data, dict) or not isinstance(data.get("args"), dict):
        raise ParameterError(f"job {job_id!r}: its sidecar {file} has no \"args\" mapping: it is not a sidecar "
                             "written by `zeroedit batch`; re-run the job.")
    return data["args"], file


def _text(value, key: str, where: str) -> str:
    """A field that must be a non-empty string (a file path or a prompt)."""
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{where}: {key!r} must be a non-empty string (a file path or a text), got "
                             f"{shorten(value)}: repair the file or re-run the job.")
    return value


def _need(args: dict, key: str, file: Path, benchmark: str, job_id: str, text: bool = True):
    """A sidecar argument --benchmark needs; `text`: a path or prompt, which must be a non-empty string."""
    if key not in args:
        raise ParameterError(f"job {job_id!r}: {file} has no {key!r} argument, which --benchmark {benchmark} needs: "
                             f"was the batch built for {benchmark} (zeroedit.datasets)?")
    return _text(args[key], key, f"job {job_id!r}, {file}") if text else args[key]


def _entry(mapping: dict, key: str, job_id: str, benchmark: str) -> dict:
    """The job's entry of --data's mapping file, its fields checked: "image_path" a string, "mask" PIE-Bench's
    run-length list (an even number of integers); piebench: "editing_prompt" a string; toy: "toy" naming the
    case (integers index < n and seed, a list of kinds)."""
    entry = mapping.get(key) if key not in ("__root__", "__file__") else None
    if not isinstance(entry, dict) or not {"image_path", "mask"} <= set(entry):
        raise ParameterError(f"job {job_id!r} is not in --data's mapping file (key {key!r}, with \"image_path\" "
                             "and \"mask\"): give the mapping_file.json the batch's jobs were built from.")
    where = f"job {job_id!r}, entry {key!r} of --data {mapping['__file__']}"
    _text(entry["image_path"], "image_path", where)
    mask = entry["mask"]
    if not isinstance(mask, list) or len(mask) % 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                              for v in mask):
        raise ParameterError(f"{where}: \"mask\" must be PIE-Bench's run-length list (pairs of non-negative "
                             f"integers start, length), got {shorten(mask)}: give the mapping_file.json the batch "
                             "was built from.")
    if benchmark == "piebench":
        _text(entry.get("editing_prompt"), "editing_prompt", where)
    if benchmark == "toy":
        toy = entry.get("toy")
        whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        if not (isinstance(toy, dict) and all(whole(toy.get(k)) for k in ("index", "n", "seed"))
                and 0 <= toy["index"] < toy["n"] and isinstance(toy.get("kinds"), list)
                and all(isinstance(k, str) for k in toy["kinds"])):
            raise ParameterError(f"{where}: --benchmark toy needs the \"toy\" key naming the case ({{\"index\", "
                                 f"\"n\", \"kinds\", \"seed\"}}), got {shorten(toy)}: give the mapping file "
                                 "zeroedit.metrics.toy.write_dataset wrote.")
    return entry


def _region(region, where: str):
    """A sidecar's region: a mask path (string) or a box of four numbers."""
    if isinstance(region, str) and region.strip():
        return region
    if isinstance(region, list) and len(region) == 4 and \
            all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in region):
        return region
    raise ParameterError(f"{where}: \"region\" must be a mask path or a box [x0, y0, x1, y1], got "
                         f"{shorten(region)}: repair the file or re-run the job.")


def _references(given, where: str) -> dict[str, list[str]]:
    """A sidecar's references: {concept: image path or non-empty list of paths}."""
    references = {k: v if isinstance(v, list) else [v] for k, v in given.items()} if isinstance(given, dict) else None
    if not references or not all(isinstance(k, str) and ps and all(isinstance(p, str) and p for p in ps)
                                 for k, ps in references.items()):
        raise ParameterError(f"{where}: \"references\" must map each concept to its image path(s), got "
                             f"{shorten(given)}: repair the file or re-run the job.")
    return references


def _plan(record: dict, folder: Path, benchmark: str, mapping: dict | None) -> dict:
    """What one scored image needs, as paths (see the module docstring): {"id", "category", "edited", ...}.
    Raises ParameterError on a missing sidecar, a sidecar without JSON or a needed argument, a record without
    a PNG output, a job absent from the mapping file, or a field of the wrong type (every message names the job
    and the file); the images themselves are read by `_load`."""
    job_id = record["id"]
    args, file = _sidecar_args(folder, job_id)
    where = f"job {job_id!r}, {file}"
    output = next((o for o in record.get("outputs") or [] if o.endswith(".png")), None)
    if output is None:
        raise ParameterError(f"job {job_id!r} has no PNG among its outputs in results.jsonl: re-run the job.")
    plan = {"id": job_id, "edited": _path(folder, output)}
    if benchmark in ("piebench", "toy"):
        key = job_id[4:] if job_id.startswith("pie-") else job_id
        entry = _entry(mapping, key, job_id, benchmark)
        source = _path(folder, _text(args["image"], "image", where)) if args.get("image") is not None else \
            Path(mapping["__root__"]) / "annotation_images" / entry["image_path"]
        parts = entry["image_path"].split("/")
        plan.update(source=source, entry=entry,
                    category=parts[0] if len(parts) > 1 else str(entry.get("editing_type_id", "all")))
    elif benchmark == "tficon":
        region = _region(_need(args, "region", file, benchmark, job_id, text=False), where)
        domain = args.get("domain")
        plan.update(background=_path(folder, _need(args, "background", file, benchmark, job_id)),
                    reference=_path(folder, _need(args, "reference", file, benchmark, job_id)),
                    region=_path(folder, region) if isinstance(region, str) else region,
                    prompt=_need(args, "prompt", file, benchmark, job_id),
                    category=_text(domain, "domain", where) if domain is not None else "all")
    else:
        references = _references(_need(args, "references", file, benchmark, job_id, text=False), where)
        plan.update(prompt=_need(args, "prompt", file, benchmark, job_id),
                    concepts=[[_path(folder, p) for p in ps] for ps in references.values()],
                    category=" + ".join(references), comb=json.dumps(references, sort_keys=True))
    return plan


def _load(plan: dict) -> dict:
    """The plan with its images read (zeroedit.images: RGB, alpha onto white, EXIF upright; the region mask as
    the methods read it). ImageError / MaskError name the job and the file."""
    sample, job = dict(plan), plan["id"]
    for key in ("edited", "source", "background", "reference"):
        if key in plan:
            sample[key] = load_image(plan[key], f"{key} image of job {job!r}")
    if isinstance(plan.get("region"), Path):
        sample["region"] = Image.fromarray(load_mask(plan["region"], f"region of job {job!r}").astype(np.uint8) * 255)
    if "concepts" in plan:
        sample["concepts"] = [[load_image(p, f"reference of job {job!r}") for p in ps] for ps in plan["concepts"]]
    return sample


def _validate(plans: list[dict]) -> None:
    """Read every image once before any model is loaded, so a missing or broken file stops eval up front."""
    for plan in plans:
        try:
            _load(plan)
        except (ImageError, MaskError) as error:
            raise type(error)(f"{error} Restore the file (a sidecar's relative paths start at the results folder), "
                              f"or drop job {plan['id']!r} from results.jsonl.") from None


# ----------------------------------------------------------------------------------------- scoring
class Models:
    """The protocol's networks, loaded on first use (once per process: zeroedit.metrics caches the loads)."""

    def __init__(self, benchmark: str, args):
        from .metrics import mip, piebench, tficon
        import torch
        protocol = {"piebench": piebench, "toy": piebench, "tficon": tficon, "mip": mip}[benchmark]
        self.clip_name = args.clip_model or getattr(protocol, "CLIP_MODEL", None)
        self.dino_name = args.dino_model or getattr(protocol, "DINO_MODEL", None)
        self.lpips_net = args.lpips_net or getattr(protocol, "LPIPS_NET", "vgg")
        self.rounding = "floor" if benchmark == "piebench" else "round"  # transformers' processor vs torchvision
        self.args = args
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def load(self, kind: str):
        from .metrics import lpips, models
        local = not self.args.allow_download
        if kind == "clip":
            return models.load_clip(self.clip_name, self.device, local, self.rounding)
        if kind == "dino":
            return models.load_dino(self.dino_name, self.device, local)
        return lpips.load_lpips(self.lpips_net, self.args.lpips_weights, self.device)


def score(sample: dict, benchmark: str, metrics: list[str], nets: dict) -> dict:
    """Every requested metric of one sample, raw values (nan where the protocol gives "nan")."""
    from .metrics import decode_rle, mip, piebench, tficon, toy
    out = {}
    if benchmark in ("piebench", "toy"):
        source, edited, entry = sample["source"], sample["edited"], sample["entry"]
        if edited.size != source.size:  # the reference asserts equal shapes; PIE-Bench's images are 512²
            logger.warning("%s: output %s resized to the source's %s", sample["id"], edited.size, source.size)
            edited = edited.resize(source.size, Image.BICUBIC)
        mask = decode_rle(entry["mask"], (source.size[1], source.size[0]))
        if {"psnr", "mse", "ssim", "lpips"} & set(metrics):
            out.update(piebench.unedited_part(source, edited, mask, nets.get("lpips")))
        if "structure_distance" in metrics:
            out["structure_distance"] = piebench.structure_distance(nets["dino"], source, edited)
        if {"clip_whole", "clip_edited"} & set(metrics):
            prompt = piebench.prompt_of(entry["editing_prompt"])
            out["clip_whole"], out["clip_edited"] = piebench.clip_scores(nets["clip"], edited, prompt, mask)
        if benchmark == "toy":
            out.update(toy.score(entry, edited))  # at the source's size, as the mask
    elif benchmark == "tficon":
        composite, reference = sample["edited"], sample["reference"]
        region = tficon.region_mask(sample["region"], composite.size)
        crop = tficon.foreground(composite, region, reference.size)
        if "lpips_bg" in metrics:
            out["lpips_bg"] = tficon.lpips_bg(nets["lpips"], sample["background"], composite, region)
        if "lpips_fg" in metrics:
            out["lpips_fg"] = tficon.lpips_fg(nets["lpips"], crop, reference)
        if "clip_image" in metrics:
            out["clip_image"] = tficon.clip_image(nets["clip"], crop, reference)
        if "clip_text" in metrics:
            out["clip_text"] = tficon.clip_text(nets["clip"], composite, sample["prompt"])
    else:
        if "clip_t" in metrics:
            out["clip_t"] = mip.clip_t(nets["clip"], sample["edited"], sample["prompt"])
        if "clip_i" in metrics:
            out["clip_i"] = mip.clip_i(nets["clip"], sample["edited"], sample["concepts"])
        if "dino" in metrics:
            out["dino"] = mip.dino(nets["dino"], sample["edited"], sample["concepts"])
    return {k: v for k, v in out.items() if k in metrics}


def _mean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def summarize(rows: list[dict], metrics: list[str], benchmark: str) -> dict:
    """{metric: mean} of one run; for mip the mean over concept combinations of their means (the reference's)."""
    if benchmark != "mip":
        return {m: _mean(r.get(m) for r in rows) for m in metrics}
    combs: dict = {}
    for row in rows:
        combs.setdefault(row["comb"], []).append(row)
    return {m: _mean(_mean(r.get(m) for r in group) for group in combs.values()) for m in metrics}


# ----------------------------------------------------------------------------------------- writing
def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "inf" if math.isinf(value) else (f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}")


def tables(runs: dict, benchmark: str, metrics: list[str]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(headers, summary rows incl. the published ones, per-category rows) in the paper's units."""
    from .metrics.published import COLUMNS, PUBLISHED
    columns = [c for c in COLUMNS[benchmark] if c[0] in metrics]
    headers = [h for _, h, _ in columns]
    summary = [[label] + [_fmt(run["summary"][k] * s) for k, _, s in columns] for label, run in runs.items()]
    index = {k: i for i, (k, _, _) in enumerate(COLUMNS[benchmark])}
    for name, values in PUBLISHED[benchmark].items():
        summary.append([name] + [_fmt(values[index[k]]) for k, _, _ in columns])
    per_category = []
    for label, run in runs.items():
        for category, rows in sorted(run["categories"].items()):
            means = summarize(rows, metrics, benchmark)
            per_category.append([label, category, str(len(rows))] + [_fmt(means[k] * s) for k, _, s in columns])
    return headers, summary, per_category


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def plots(runs: dict, benchmark: str, metrics: list[str]) -> dict[str, bytes]:
    """One PNG per metric: its per-category means, one bar per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .metrics.published import COLUMNS
    categories = sorted({c for run in runs.values() for c in run["categories"]})
    out = {}
    for key, header, scale in (c for c in COLUMNS[benchmark] if c[0] in metrics):
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(categories) * len(runs) + 1.5), 3.2))
        width = 0.8 / len(runs)
        for i, (label, run) in enumerate(runs.items()):
            values = [summarize(run["categories"].get(c, []), [key], benchmark)[key] * scale for c in categories]
            ax.bar(np.arange(len(categories)) + i * width, np.nan_to_num(values, posinf=0.0), width, label=label)
        ax.set_xticks(np.arange(len(categories)) + 0.4 - width / 2, categories, rotation=20, ha="right")
        ax.set_title(header)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        out[key] = buffer.getvalue()
    return out


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out: Path, runs: dict, benchmark: str, metrics: list[str]) -> dict[str, Path]:
    """eval.csv, eval.md, eval.html (+ plot_<metric>.png) in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "eval.csv", "md": out / "eval.md", "html": out / "eval.html"}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["run", "id", "category"] + metrics)
        for label, run in runs.items():
            for row in run["rows"]:
                writer.writerow([label, row["id"], row["category"]] + [repr(float(row.get(m, math.nan))) for m in metrics])
    headers, summary, per_category = tables(runs, benchmark, metrics)
    text = (f"# zeroedit eval — {benchmark}\n\n" + _markdown(["run"] + headers, summary) +
            "\n## Per category\n\n" + _markdown(["run", "category", "images"] + headers, per_category))
    paths["md"].write_text(text, encoding="utf-8")
    images = plots(runs, benchmark, metrics)
    figures = []
    for key, png in images.items():
        (out / f"plot_{key}.png").write_bytes(png)
        figures.append(f'<img alt="{key}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    paths["html"].write_text(
        "<!doctype html><meta charset='utf-8'><title>zeroedit eval</title><style>body{font-family:sans-serif}"
        "td,th{padding:3px 8px;border-bottom:1px solid #ccc}</style>"
        f"<h1>zeroedit eval — {html.escape(benchmark)}</h1>{_html_table(['run'] + headers, summary)}"
        f"<h2>Per category</h2>{_html_table(['run', 'category', 'images'] + headers, per_category)}"
        f"<h2>Plots</h2>{''.join(figures)}\n", encoding="utf-8")
    return paths


# ----------------------------------------------------------------------------------------- command
def _check(args) -> tuple[list[Path], list[str], dict | None, list[str]]:
    """Validate everything before any model work: folders, data file, metrics, labels."""
    from .metrics.published import COLUMNS
    folders = [Path(r) for r in args.results]
    for folder in folders:
        if not (folder / "results.jsonl").is_file():
            raise ParameterError(f"{folder} has no results.jsonl: give the --out folder of a finished `zeroedit batch`.")
    available = [k for k, _, _ in COLUMNS[args.benchmark]]
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else available
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ParameterError(f"--metrics {','.join(unknown)} not in {args.benchmark}'s: {','.join(available)}.")
    mapping = None
    if args.benchmark in ("piebench", "toy"):
        if not args.data or not Path(args.data).is_file():
            raise ParameterError(f"--benchmark {args.benchmark} needs --data MAPPING_FILE (PIE-Bench's mapping_file.json"
                                 f"{' written by zeroedit.metrics.toy.write_dataset' if args.benchmark == 'toy' else ''}).")
        try:
            mapping = json.loads(read_text(Path(args.data), "--data"))
        except (json.JSONDecodeError, RecursionError) as error:
            raise ParameterError(f"--data {args.data} is not valid JSON ({error}): give PIE-Bench's "
                                 "mapping_file.json.") from None
        if not isinstance(mapping, dict):
            raise ParameterError(f"--data {args.data} must map image keys to entries, as PIE-Bench's "
                                 "mapping_file.json does.")
        mapping["__root__"], mapping["__file__"] = str(Path(args.data).resolve().parent), args.data
    labels = args.label or [f.resolve().name for f in folders]
    if len(labels) != len(folders) or len(set(labels)) != len(labels):
        raise ParameterError("--label needs one distinct name per RESULTS_DIR.")
    return folders, metrics, mapping, labels


def run(args) -> int:
    """Score every results folder, write the report, print the summary; 0 on success."""
    from tqdm.auto import tqdm
    folders, metrics, mapping, labels = _check(args)
    work = [(label, _plan(record, folder, args.benchmark, mapping))
            for label, folder in zip(labels, folders) for record in read_results(folder)]
    if not work:
        raise ParameterError("no finished (status ok) jobs in the results folder(s).")
    _validate([plan for _, plan in work])  # every input checked: only now any model work
    models = Models(args.benchmark, args)
    nets = {kind: models.load(kind) for kind in sorted({NEEDS[m] for m in metrics if m in NEEDS})}
    runs = {label: {"rows": [], "categories": {}} for label in labels}
    for label, plan in tqdm(work, desc=f"eval {args.benchmark}", disable=args.quiet):
        sample = _load(plan)
        row = {"id": sample["id"], "category": sample["category"], "comb": sample.get("comb")}
        row.update(score(sample, args.benchmark, metrics, nets))
        runs[label]["rows"].append(row)
        runs[label]["categories"].setdefault(sample["category"], []).append(row)
    for run_ in runs.values():
        run_["summary"] = summarize(run_["rows"], metrics, args.benchmark)
    out = Path(args.out) if args.out else folders[0] / "eval"
    paths = write_report(out, runs, args.benchmark, metrics)
    if not args.quiet:
        print(paths["md"].read_text(encoding="utf-8"))
        print(f"eval: wrote {paths['csv']}, {paths['md']}, {paths['html']}")
    return 0
