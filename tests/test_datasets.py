"""Benchmark readers on small synthetic fixtures; their jobs run through `zeroedit batch`."""
import json

from PIL import Image

from zeroedit import cli, datasets


def img(path, size=(64, 64), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)
    return path


def test_tficon_folder_layout(tmp_path):
    folder = tmp_path / "cross_domain" / "an oil painting of a panda"
    bg, fg, mask, region = (img(folder / n) for n in ("bg23.png", "fg12.png", "fg12_mask.png", "mask_bg_fg.png"))
    img(tmp_path / "same_domain" / "a photo of a dog" / "bg1.png")  # incomplete folder: skipped
    jobs = datasets.tficon_jobs(tmp_path, steps=2)
    assert len(jobs) == 1
    job = jobs[0]
    assert job["method"] == "compose" and job["prompt"] == "an oil painting of a panda" and job["domain"] == "cross"
    assert (job["background"], job["reference"], job["reference_mask"], job["region"]) == tuple(
        str(p.resolve()) for p in (bg, fg, mask, region))
    assert job["steps"] == 2
    cli.resolve_arguments("compose", {}, {k: v for k, v in job.items() if k not in ("method", "id")}, tmp_path)


def test_piebench_mapping_file(tmp_path):
    img(tmp_path / "annotation_images" / "0_random_140" / "000000000000.jpg")
    mapping = {"000000000000": {"image_path": "0_random_140/000000000000.jpg",
                                "original_prompt": "a slanted mountain bicycle on the road",
                                "editing_prompt": "a slanted [rusty] mountain bicycle on the road",
                                "editing_instruction": "make it rusty", "editing_type_id": "0",
                                "blended_word": "bicycle bicycle", "mask": [0, 10]}}
    (tmp_path / "mapping_file.json").write_text(json.dumps(mapping))
    jobs = datasets.piebench_jobs(tmp_path / "mapping_file.json")
    assert jobs == [{"method": "translate", "id": "pie-000000000000",
                     "image": str((tmp_path / "annotation_images/0_random_140/000000000000.jpg").resolve()),
                     "prompt": "a slanted rusty mountain bicycle on the road",
                     "source_prompt": "a slanted mountain bicycle on the road"}]


def test_pnp_ti2i_yaml_runs_as_a_batch(tmp_path):
    img(tmp_path / "data" / "goldfish.png", (128, 128))
    (tmp_path / "ti2i.yaml").write_text(
        "- init_img: data/goldfish.png\n  source_prompt: a cartoon of a goldfish\n"
        "  target_prompts:\n    - a photo of a goldfish\n    - a sketch of a goldfish\n")
    jobs = datasets.pnp_ti2i_jobs(tmp_path / "ti2i.yaml", steps=2, model="tiny", seed=0)
    assert [j["prompt"] for j in jobs] == ["a photo of a goldfish", "a sketch of a goldfish"]
    assert all(j["source_prompt"] == "a cartoon of a goldfish" and j["image"].endswith("goldfish.png") for j in jobs)
    path = datasets.write_jobs(jobs, tmp_path / "jobs.jsonl")
    assert cli.main(["batch", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert all((tmp_path / "out" / f"{j['id']}.png").is_file() for j in jobs)
