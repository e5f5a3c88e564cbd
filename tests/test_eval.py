"""`zeroedit eval`: the report writer on a fake result set, each benchmark's inputs read from batch folders (tiny
CLIP / DINO / LPIPS saved here), the errors, and the toy world end to end from a real `zeroedit batch`."""
import csv
import json
import math
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

from zeroedit import cli, datasets, runner
from zeroedit import eval as evaluation
from zeroedit.batch import run_batch
from zeroedit.errors import ImageError, ParameterError
from zeroedit.images import load_image
from zeroedit.metrics import decode_rle, encode_rle, lpips, models, piebench, toy
from zeroedit.metrics.toy import write_dataset
from zeroedit.toy.quality import edit_cases
from zeroedit.toy.world import render
from zeroedit.tiny import _text_config, tiny_tokenizer


def save(image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return str(path)


def fake_batch(folder, outputs: dict, args: dict):
    """A folder as `zeroedit batch` leaves it: <id>.png, <id>.json sidecars, results.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for job_id, image in outputs.items():
        save(image, folder / f"{job_id}.png")
        (folder / f"{job_id}.json").write_text(json.dumps({"args": args[job_id], "outputs": [f"{job_id}.png"]}))
        records.append({"id": job_id, "status": "ok", "outputs": [f"{job_id}.png", f"{job_id}.json"]})
    records.append({"id": "broken", "status": "error", "error": "x"})  # failed jobs are not scored
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def pie_dataset(tmp_path, n=3):
    """A PIE-Bench-layout data set of n random 32 px images, each with a square edited region."""
    rng = np.random.default_rng(0)
    mapping, sources = {}, {}
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:20, 8:20] = True
    for i in range(n):
        key, folder = f"{i:012d}", ["0_random_140", "1_change_object_80"][i % 2]
        sources[key] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        save(sources[key], tmp_path / "data" / "annotation_images" / folder / f"{key}.jpg".replace(".jpg", ".png"))
        mapping[key] = {"image_path": f"{folder}/{key}.png", "original_prompt": "a cat",
                        "editing_prompt": "a [dog]", "editing_type_id": str(i % 2), "mask": encode_rle(mask)}
    (tmp_path / "data" / "mapping_file.json").write_text(json.dumps(mapping))
    return tmp_path / "data" / "mapping_file.json", sources, mask


def test_report_writer_on_a_fake_result_set(tmp_path):
    rows = [{"id": f"pie-{i}", "category": "change" if i % 2 else "random", "comb": None, "structure_distance": 0.03,
             "psnr": 25.0 + i, "lpips": 0.1, "mse": 0.005, "ssim": 0.8, "clip_whole": 25.0, "clip_edited": math.nan}
            for i in range(4)]
    runs = {"ours": {"rows": rows, "categories": {"random": rows[0::2], "change": rows[1::2]}}}
    metrics = [k for k in rows[0] if k not in ("id", "category", "comb")]
    runs["ours"]["summary"] = evaluation.summarize(rows, metrics, "piebench")
    paths = evaluation.write_report(tmp_path / "eval", runs, "piebench", metrics)
    table = read_csv(paths["csv"])
    assert list(table[0]) == ["run", "id", "category"] + metrics and len(table) == 4
    assert float(table[1]["psnr"]) == 26.0 and table[0]["clip_edited"] == "nan"
    md = paths["md"].read_text()
    assert "| ours | 30.00 | 26.50 | 100.00 | 50.00 | 80.00 | 25.00 | – |" in md  # the paper's units
    assert "| DDIM + PnP (published) | 28.22 | 22.28 | 113.46 | 83.64 | 79.05 | 25.41 | 22.55 |" in md
    assert "| DDIM + P2P-Zero (published) | 61.68 |" in md and "| ours | change | 2 | 30.00 | 27.00 |" in md
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == len(metrics) and "DDIM + PnP (published)" in page
    assert (tmp_path / "eval" / "plot_psnr.png").read_bytes()[:4] == b"\x89PNG"


def test_mip_summary_is_the_mean_over_combinations():
    rows = [{"comb": "a", "clip_t": 1.0}, {"comb": "a", "clip_t": 1.0}, {"comb": "a", "clip_t": 1.0},
            {"comb": "b", "clip_t": 0.0}]
    assert evaluation.summarize(rows, ["clip_t"], "mip")["clip_t"] == 0.5  # not 0.75, the mean over images


def test_piebench_pixel_metrics_from_a_batch_folder(tmp_path):
    mapping, sources, mask = pie_dataset(tmp_path)
    outputs, args = {}, {}
    for key, source in sources.items():
        edited = source.copy()
        edited[mask] = 255 - edited[mask]  # the edit stays inside the mask
        outputs[f"pie-{key}"] = edited
        args[f"pie-{key}"] = {"image": str(mapping.parent / "annotation_images" /
                                           json.loads(mapping.read_text())[key]["image_path"]), "prompt": "a dog"}
    fake_batch(tmp_path / "run", outputs, args)
    code = cli.main(["eval", str(tmp_path / "run"), "--benchmark", "piebench", "--data", str(mapping),
                     "--metrics", "psnr,mse,ssim", "--quiet"])
    assert code == 0
    table = read_csv(tmp_path / "run" / "eval" / "eval.csv")
    assert len(table) == 3 and {r["category"] for r in table} == {"0_random_140", "1_change_object_80"}
    assert all(r["psnr"] == "inf" and float(r["mse"]) == 0 and float(r["ssim"]) == pytest.approx(1) for r in table)
    assert "| 0_random_140 | 2 |" in (tmp_path / "run" / "eval" / "eval.md").read_text()


def test_errors_before_any_model_work(tmp_path, capsys):
    mapping, sources, _ = pie_dataset(tmp_path, n=1)
    key = next(iter(sources))
    fake_batch(tmp_path / "run", {f"pie-{key}": sources[key]}, {f"pie-{key}": {}})
    run = str(tmp_path / "run")
    assert cli.main(["eval", str(tmp_path), "--benchmark", "piebench", "--data", str(mapping)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err
    assert cli.main(["eval", run, "--benchmark", "piebench"]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert cli.main(["eval", run, "--benchmark", "mip", "--metrics", "psnr"]) == 2
    assert "not in mip's" in capsys.readouterr().err
    assert cli.main(["eval", run, "--benchmark", "piebench", "--data", str(mapping), "--quiet"]) == 2
    assert "hf download openai/clip-vit-large-patch14" in capsys.readouterr().err  # no weights here
    assert not (tmp_path / "run" / "eval").exists()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny random CLIP and DINO saved as model folders, random LPIPS-squeeze weight files."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, projection_dim=32)
    CLIPModel(CLIPConfig(text_config=_text_config().to_dict(), vision_config=vision, projection_dim=32)
              ).save_pretrained(root / "clip")
    tiny_tokenizer().save_pretrained(root / "clip")
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                       image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(root / "dino")
    net = lpips.LPIPS("squeeze")
    torch.save({f"features.{k}": v for k, v in net.features.state_dict().items()},
               root / "squeezenet1_1-b8a52dec.pth")
    torch.save({f"lin{i}.model.1.weight": lin.weight.abs() for i, lin in enumerate(net.lins)}, root / "squeeze.pth")
    return ["--clip-model", str(root / "clip"), "--dino-model", str(root / "dino"), "--lpips-net", "squeeze",
            "--lpips-weights", str(root), "--device", "cpu", "--quiet"]


def test_tficon_and_mip_from_batch_folders(tmp_path, tiny_models):
    rng = np.random.default_rng(1)
    background, reference = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    region = np.zeros((48, 48), dtype=np.uint8)
    region[10:30, 12:28] = 255
    composite = background.copy()
    composite[10:30, 12:28] = 0  # the object, inside the region only
    inputs = {"background": save(background, tmp_path / "in" / "bg.png"),
              "reference": save(reference, tmp_path / "in" / "fg.png"),
              "region": save(region, tmp_path / "in" / "mask_bg_fg.png"), "prompt": "a photo of a dog", "domain": "same"}
    fake_batch(tmp_path / "tficon", {"same_dog": composite}, {"same_dog": inputs})
    assert cli.main(["eval", str(tmp_path / "tficon"), "--benchmark", "tficon", *tiny_models]) == 0
    row = read_csv(tmp_path / "tficon" / "eval" / "eval.csv")[0]
    assert row["category"] == "same" and float(row["lpips_bg"]) == 0.0  # identical outside the region
    clip = models.load_clip(tiny_models[1], "cpu", True, "round")  # the instance eval used (cached)
    image_text = clip.image_embeds([Image.fromarray(composite)])[0] @ clip.text_embeds(["a photo of a dog"])[0]
    assert float(row["lpips_fg"]) > 0 and float(row["clip_text"]) == pytest.approx(100 * float(image_text), abs=1e-4)

    cat, dog = (save(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), tmp_path / "in" / f"{n}.png") for n in "ab")
    with Image.open(cat) as image:
        generated = np.asarray(image).copy()
    fake_batch(tmp_path / "mip", {"c0": generated, "c1": generated},
               {"c0": {"prompt": "a cat and a dog", "references": {"cat": cat, "dog": [cat]}},
                "c1": {"prompt": "a cat and a dog", "references": {"cat": cat, "dog": [dog, cat]}}})
    assert cli.main(["eval", str(tmp_path / "mip"), "--benchmark", "mip", *tiny_models]) == 0
    rows = read_csv(tmp_path / "mip" / "eval" / "eval.csv")
    assert float(rows[0]["clip_i"]) == pytest.approx(1.0, abs=1e-5) and float(rows[0]["dino"]) == pytest.approx(1.0, abs=1e-5)
    cos = float(clip.image_embeds([Image.fromarray(generated)])[0] @ clip.text_embeds(["a cat and a dog_gen."])[0])
    assert float(rows[1]["clip_i"]) < 1 and float(rows[1]["clip_t"]) == pytest.approx(2.5 * max(cos, 0), abs=1e-5)
    assert rows[0]["category"] == "cat + dog"


def test_toy_world_end_to_end(tmp_path):
    """write_dataset -> PIE-Bench reader -> `zeroedit batch` on the toy model -> `zeroedit eval --benchmark toy`."""
    mapping = write_dataset(tmp_path / "data", n=2)
    jobs = datasets.piebench_jobs(mapping, model="toy", steps=3, guidance_scale=5.0, negative_prompt="")
    assert run_batch(datasets.write_jobs(jobs, tmp_path / "jobs.jsonl"), tmp_path / "run") == 0
    assert cli.main(["eval", str(tmp_path / "run"), "--benchmark", "toy", "--data", str(mapping), "--quiet"]) == 0
    rows = {r["category"]: r for r in read_csv(tmp_path / "run" / "eval" / "eval.csv")}
    assert set(rows) == {"color", "style"}
    entries = json.loads(mapping.read_text())
    for key, entry in entries.items():  # the toy detectors' verdict on the batch's own output
        row = rows[entry["editing_type_id"]]
        verdict = toy.score(entry, load_image(tmp_path / "run" / f"pie-{key}.png"))
        assert (float(row["target"]), float(row["iou"])) == pytest.approx((verdict["target"], verdict["iou"]))
    assert 5 < float(rows["color"]["psnr"]) < 60 and rows["style"]["psnr"] == "nan"  # style: the whole image is edited
    assert "edit detected %" in (tmp_path / "run" / "eval" / "eval.md").read_text()


def test_arguments_match_the_module_api():
    parser = cli.build_parser()
    args = parser.parse_args(["eval", "a", "b", "--benchmark", "toy", "--label", "x", "y"])
    assert args.func is cli.run_eval and args.results == ["a", "b"] and args.label == ["x", "y"]
    read = {"results", "benchmark", "data", "out", "metrics", "label", "clip_model", "dino_model", "lpips_net",
            "lpips_weights", "allow_download", "device", "quiet"}  # what run, _check and Models read
    assert read <= set(vars(args)) and args.metrics is None and args.allow_download is False
    assert cli.main(["eval", "a", "--benchmark", "coco"]) == 2  # only the four protocols


def test_mip_reader(tmp_path):
    """datasets.mip_jobs on MIP-Adapter's data_root layout: one personalize job per prompt line, every concept image."""
    for concept, count in (("cat_1", 2), ("dog_3", 1), ("dog_4", 1)):
        for i in range(count):
            save(np.zeros((8, 8, 3), dtype=np.uint8), tmp_path / "benchmark_dataset" / concept / f"{i:02d}.jpg")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "p.txt").write_text("a {0} and a {1} on the beach\n\na {0} next to a {1}\n")
    combos = [[{"instance_data_dir": "data/cat_1", "class_prompt": "cat"},
               {"instance_data_dir": "data/dog_3", "class_prompt": "dog"}, {"prompt_filename_compose": "prompts/p.txt"}],
              [{"instance_data_dir": "data/dog_3", "class_prompt": "dog"},
               {"instance_data_dir": "data/dog_4", "class_prompt": "dog"}, {"prompt_filename_compose": "prompts/p.txt"}]]
    (tmp_path / "dataset_multiconcept.json").write_text(json.dumps(combos))
    jobs = datasets.mip_jobs(tmp_path, steps=2)
    assert [j["id"] for j in jobs] == ["mip-000-000", "mip-000-001"] and jobs[1]["prompt"] == "a cat next to a dog"
    assert jobs[0]["references"] == {"cat": [str((tmp_path / "benchmark_dataset/cat_1" / f).resolve())
                                             for f in ("00.jpg", "01.jpg")],
                                     "dog": [str((tmp_path / "benchmark_dataset/dog_3/00.jpg").resolve())]}
    values = cli.resolve_arguments("personalize", {}, {k: v for k, v in jobs[0].items() if k not in ("method", "id")},
                                   tmp_path)
    assert values["references"] == jobs[0]["references"] and values["prompt"] == "a cat and a dog on the beach"
    assert values["steps"] == 2


def test_toy_output_of_another_size_is_scored_at_the_source_size(tmp_path):
    """Ideal edits rendered at 128 px against 64 px sources: detectors and pixel metrics see the resized output."""
    mapping = write_dataset(tmp_path / "data", n=2)  # a colour and a style case
    entries = json.loads(mapping.read_text())
    outputs, args = {}, {}
    for (key, entry), case in zip(entries.items(), edit_cases(2)):
        obj = case.scene.objects[0]
        scene = dataclasses.replace(case.scene, objects=(dataclasses.replace(obj, color=case.new),)) \
            if case.kind == "color" else dataclasses.replace(case.scene, style=case.new)
        outputs[f"pie-{key}"] = np.asarray(render(scene, 128)[0])
        args[f"pie-{key}"] = {"prompt": entry["editing_prompt"]}
    fake_batch(tmp_path / "run", outputs, args)
    assert cli.main(["eval", str(tmp_path / "run"), "--benchmark", "toy", "--data", str(mapping), "--quiet"]) == 0
    rows = {r["category"]: r for r in read_csv(tmp_path / "run" / "eval" / "eval.csv")}
    for key, entry in entries.items():
        resized = Image.fromarray(outputs[f"pie-{key}"]).resize((64, 64), Image.BICUBIC)
        verdict = toy.score(entry, resized)
        row = rows[entry["editing_type_id"]]
        assert verdict["target"] == 1.0 and float(row["target"]) == 1.0  # the ideal edit is detected
        assert float(row["iou"]) == pytest.approx(verdict["iou"])
    assert float(rows["color"]["iou"]) > 0.5 and float(rows["color"]["psnr"]) > 20  # background kept


def pie_batch(tmp_path):
    """A one-job PIE-Bench batch whose sidecar points at its source image; returns (run folder, mapping, job id)."""
    mapping, sources, _ = pie_dataset(tmp_path, n=1)
    key = next(iter(sources))
    source = mapping.parent / "annotation_images" / json.loads(mapping.read_text())[key]["image_path"]
    fake_batch(tmp_path / "run", {f"pie-{key}": sources[key]}, {f"pie-{key}": {"image": str(source)}})
    return tmp_path / "run", mapping, f"pie-{key}"


@pytest.mark.parametrize("damage, error, message", [
    ("missing image", ImageError, "file not found"),
    ("missing output", ImageError, "edited image of job"),
    ("corrupt sidecar", ParameterError, "is not valid JSON"),
    ("no sidecar", ParameterError, "sidecar"),
    ("missing key", ParameterError, "is not in --data's mapping file"),
    ("corrupt results", ParameterError, "line 1, is not JSON"),
    ("no png output", ParameterError, "has no PNG"),
    ("corrupt mapping", ParameterError, "--data .* is not valid JSON"),
])
def test_bad_inputs_are_typed_errors_before_any_model_loads(tmp_path, monkeypatch, damage, error, message):
    run, mapping, job = pie_batch(tmp_path)
    if damage == "missing image":
        (mapping.parent / json.loads((run / f"{job}.json").read_text())["args"]["image"]).unlink()
    elif damage == "missing output":
        (run / f"{job}.png").unlink()
    elif damage == "corrupt sidecar":
        (run / f"{job}.json").write_text('{"args": {"image": ')
    elif damage == "no sidecar":
        (run / f"{job}.json").unlink()
    elif damage == "missing key":
        mapping.write_text(json.dumps({"999999999999": json.loads(mapping.read_text())[job[4:]]}))
    elif damage == "corrupt results":
        (run / "results.jsonl").write_text('{"id": "' + job + '", "status": "ok", "outp\n')
    elif damage == "no png output":
        (run / "results.jsonl").write_text(json.dumps({"id": job, "status": "ok", "outputs": [f"{job}.json"]}) + "\n")
    else:
        mapping.write_text(mapping.read_text()[:-5])
    loads = []
    monkeypatch.setattr(evaluation.Models, "load", lambda self, kind: loads.append(kind))
    args = cli.build_parser().parse_args(["eval", str(run), "--benchmark", "piebench", "--data", str(mapping)])
    with pytest.raises(error, match=message):
        evaluation.run(args)  # default metrics: CLIP, DINO and LPIPS would load next
    assert loads == [] and not (run / "eval").exists()


def test_sidecar_paths_relative_to_the_results_folder(tmp_path, monkeypatch):
    """runner.save records files inside the output folder relative to it, others absolute: eval finds both from
    any working directory (and with the results folder given relative to it)."""
    mapping, sources, mask = pie_dataset(tmp_path, n=2)
    run, inside = tmp_path / "results" / "run", tmp_path / "results" / "run" / "inputs"
    records = []
    for i, (key, source) in enumerate(sources.items()):
        given = save(source, inside / f"{key}.png") if i == 0 else \
            str(mapping.parent / "annotation_images" / json.loads(mapping.read_text())[key]["image_path"])
        edited = source.copy()
        edited[~mask] = 255 - edited[~mask]  # outside the mask: every pixel of the unedited part differs
        sidecar = runner.save([Image.fromarray(edited)], {}, "translate", {"image": given, "prompt": "a dog"}, "tiny",
                              run, f"pie-{key}")
        assert Path(sidecar["args"]["image"]).is_absolute() == (i == 1)  # what runner.save really writes
        records.append({"id": f"pie-{key}", "status": "ok", "outputs": sidecar["outputs"] + [f"pie-{key}.json"]})
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["eval", "../results/run", "--benchmark", "piebench", "--data", str(mapping),
                     "--metrics", "mse", "--quiet"]) == 0
    table = read_csv(run / "eval" / "eval.csv")
    rle = next(iter(json.loads(mapping.read_text()).values()))["mask"]
    expected = [piebench.unedited_part(Image.fromarray(source), load_image(run / f"pie-{key}.png"),
                                       decode_rle(rle, (32, 32)))["mse"] for key, source in sources.items()]
    assert [r["id"] for r in table] == [f"pie-{key}" for key in sources]
    assert [float(r["mse"]) for r in table] == pytest.approx(expected, rel=1e-6) and min(expected) > 0.1


def _rewrite(path, change):
    """Apply `change` to the JSON of `path` in place."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _damaged(tmp_path, damage):
    """A one-job batch of the benchmark the damage is about, damaged: (argv of eval, job id, file named)."""
    if damage in ("toy without its key", "toy index past n"):
        mapping = write_dataset(tmp_path / "data", n=1)
        key = next(iter(json.loads(mapping.read_text())))
        fake_batch(tmp_path / "run", {f"pie-{key}": np.zeros((64, 64, 3), np.uint8)}, {f"pie-{key}": {}})
        _rewrite(mapping, (lambda d: d[key].pop("toy")) if damage == "toy without its key" else
                 (lambda d: d[key]["toy"].update(index=5)))
        return ["--benchmark", "toy", "--data", str(mapping)], f"pie-{key}", "mapping_file.json"
    if damage in ("references of a number", "region of words"):
        fake_batch(tmp_path / "run", {"j": np.zeros((8, 8, 3), np.uint8)}, {"j": {
            "prompt": "a cat", "references": {"cat": 5}, "background": "b.png", "reference": "r.png",
            "region": "x" if damage == "references of a number" else {"box": 1}}})
        benchmark = "mip" if damage == "references of a number" else "tficon"
        return ["--benchmark", benchmark, "--metrics", "clip_t" if benchmark == "mip" else "clip_text"], "j", "j.json"
    run, mapping, job = pie_batch(tmp_path)
    if damage == "outputs a number":
        (run / "results.jsonl").write_text(json.dumps({"id": job, "status": "ok", "outputs": 5}) + "\n")
        named = "results.jsonl"
    elif damage == "image a list":
        _rewrite(run / f"{job}.json", lambda d: d["args"].update(image=["a.png", "b.png"]))
        named = f"{job}.json"
    elif damage == "image_path a number":
        _rewrite(mapping, lambda d: d[job[4:]].update(image_path=7))
        named = "mapping_file.json"
    elif damage == "mask not pairs":
        _rewrite(mapping, lambda d: d[job[4:]].update(mask=[1, 2, 3]))
        named = "mapping_file.json"
    elif damage == "results not UTF-8":
        (run / "results.jsonl").write_bytes(b'{"id": "' + job.encode() + b'", "status": "ok", "note": "\xe9"}\n')
        named = "results.jsonl"
    else:  # "id a number"
        (run / "results.jsonl").write_text(json.dumps({"id": 5, "status": "ok", "outputs": ["5.png"]}) + "\n")
        named = "results.jsonl"
    return ["--benchmark", "piebench", "--data", str(mapping)], job, named


@pytest.mark.parametrize("damage", ["outputs a number", "image a list", "image_path a number", "mask not pairs",
                                    "results not UTF-8", "id a number", "toy without its key", "toy index past n",
                                    "references of a number", "region of words"])
def test_valid_json_of_the_wrong_shape_names_the_job_and_the_file(tmp_path, monkeypatch, capsys, damage):
    """Issue 26 §5: every field eval reads is checked before any metric model loads; the message names the job
    (where the line has one) and the file; the CLI exits 2 with one line."""
    argv, job, named = _damaged(tmp_path, damage)
    loads = []
    monkeypatch.setattr(evaluation.Models, "load", lambda self, kind: loads.append(kind))
    args = cli.build_parser().parse_args(["eval", str(tmp_path / "run"), *argv])
    with pytest.raises(ParameterError) as raised:
        evaluation.run(args)
    message = str(raised.value)
    assert named in message and (damage in ("results not UTF-8", "id a number") or repr(job) in message), message
    assert loads == [] and not (tmp_path / "run" / "eval").exists()
    assert cli.main(["eval", str(tmp_path / "run"), *argv, "--quiet"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("zeroedit: error") and "internal" not in lines[0], lines
