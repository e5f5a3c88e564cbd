"""CLI: every subcommand on tiny, sidecars reproduce bit for bit, user errors exit 2 with one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zeroedit import cli

ASSETS = Path(cli.asset("cat.png")).parent
# Subprocesses keep this process's thread settings: a bit-for-bit comparison between a subprocess run and an
# in-process one needs the same number of intra-op threads (float sums depend on it).
ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), HF_HUB_OFFLINE="1")


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def run(argv, capsys):
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_invert_from_the_shell_and_sidecar_reproduces(tmp_path):
    """A real subprocess: outputs + sidecar written; the sidecar alone reproduces the image bit for bit."""
    cmd = [sys.executable, "-m", "zeroedit.cli", "invert", "--image", str(ASSETS / "cat.png"), "--steps", "3",
           "--model", "tiny", "--quiet", "--out", str(tmp_path / "a")]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((tmp_path / "a" / "invert.json").read_text())
    assert sidecar["model"] == "tiny" and sidecar["stats"]["unet_calls"] == 3 and "torch" in sidecar["versions"]
    bad = subprocess.run([sys.executable, "-m", "zeroedit.cli", "invert", "--image", str(tmp_path / "no.png"),
                          "--model", "tiny"], env=ENV, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len([l for l in bad.stderr.splitlines() if l.startswith("zeroedit: error")]) == 1


@pytest.mark.parametrize("method,argv", [
    ("compose", ["--background", "background.png", "--reference", "reference.png", "--reference-mask",
                 "reference_mask.png", "--region", "40,40,100,100", "--prompt", "a ball", "--steps", "2"]),
    ("translate", ["--image", "cat.png", "--prompt", "a dog", "--steps", "2"]),
    ("edit", ["--image", "cat.png", "--caption", "a cat", "--steps", "2", "--reg-steps", "1"]),
    ("personalize", ["--prompt", "a cat and a ball", "--references", "cat=cat.png", "ball=reference.png",
                     "--steps", "2"]),
])
def test_method_sidecar_reproduces_bit_for_bit(method, argv, tmp_path, capsys, monkeypatch):
    """Each subcommand (relative paths from the working directory; the shell entry itself is exercised by the
    subprocess test above); then its sidecar alone, from another directory, reproduces the image bit for bit."""
    monkeypatch.chdir(ASSETS)
    code, err = run([method, *argv, "--model", "tiny", "--quiet", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    sidecar = json.loads((tmp_path / "a" / f"{method}.json").read_text())
    assert isinstance(sidecar["seed"], int) and sidecar["args"]["seed"] == sidecar["seed"]
    assert sidecar["stats"]["unet_calls"] > 0 and sidecar["stats"]["params"]
    monkeypatch.chdir(tmp_path)  # the sidecar's paths work from anywhere
    code, err = run([method, "--config", str(tmp_path / "a" / f"{method}.json"), "--quiet", "--out", "b"], capsys)
    assert code == 0, err
    assert np.array_equal(pixels(tmp_path / "a" / f"{method}.png"), pixels(tmp_path / "b" / f"{method}.png"))


def test_flags_override_config(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"image: {ASSETS / 'cat.png'}\nsteps: 4\nmodel: tiny\n")
    code, err = run(["invert", "--config", str(config), "--steps", "2", "--quiet", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "invert.json").read_text())["stats"]["unet_calls"] == 2


def test_direction_subcommand(tmp_path, capsys):
    out = tmp_path / "c2d.safetensors"
    code, err = run(["direction", "--source", "cat", "--target", "dog", "--model", "tiny", "--quiet",
                     "--out", str(out)], capsys)
    assert code == 0, err and out.is_file()
    from zeroedit import directions
    assert directions.load(out).ndim >= 1


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    text = tmp_path / "not_image.png"
    text.write_text("hello")
    small = tmp_path / "small_mask.png"
    Image.new("L", (32, 48), 255).save(small)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("steps: [1, 2\n")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text("image: x.png\nstepz: 3\n")
    cat = str(ASSETS / "cat.png")
    compose = ["compose", "--background", str(ASSETS / "background.png"), "--reference", str(ASSETS / "reference.png"),
               "--region", "40,40,100,100", "--model", "tiny", "--steps", "2"]
    cases = [
        ["invert", "--image", str(tmp_path / "missing.png"), "--model", "tiny"],    # missing file
        ["invert", "--image", str(text), "--model", "tiny"],                        # not an image
        compose + ["--reference-mask", str(small)],                                  # mask of another size
        ["frobnicate"],                                                              # unknown method
        ["invert", "--config", str(bad_yaml)],                                       # bad YAML
        ["invert", "--image", cat, "--steps", "-3", "--model", "tiny"],             # negative steps
        ["invert", "--image", cat, "--bogus", "1"],                                  # unknown flag
        ["invert", "--config", str(listing)],                                        # config not a mapping
        ["invert", "--config", str(unknown_key)],                                    # unknown key
        ["invert", "--config", str(tmp_path / "nope.yaml")],                         # missing config
        ["translate", "--image", cat, "--model", "tiny"],                            # missing --prompt
        compose[:6] + ["--region", "1,2,x,4", "--model", "tiny"],                    # bad region
        ["personalize", "--prompt", "a cat", "--references", cat, "--model", "tiny"],  # references without =
        compose + ["--domain", "sideways"],                                          # bad choice
        ["invert", "--image", cat, "--method", "euler", "--model", "tiny"],          # bad inversion method
        [],                                                                           # no subcommand
    ]
    for argv in cases:
        code, err = run(argv, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (argv, code, err)
        assert len(lines) == 1 and lines[0].startswith("zeroedit: error") and "Traceback" not in err, (argv, err)


def test_internal_error_exits_1(capsys, monkeypatch):
    monkeypatch.setattr(cli, "run_method", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    code, err = run(["invert", "--image", str(ASSETS / "cat.png"), "--model", "tiny"], capsys)
    assert code == 1 and "internal error" in err and "Traceback" not in err


def test_offline_hub_model_says_how_to_use_a_local_folder(capsys, tmp_path):
    """The CLI user is told --model DIR (not the API's load('DIR')), the README's `hf download`, and every offline
    model; the API user gets the same advice worded for Python, as a typed error."""
    code, err = run(["invert", "--image", str(ASSETS / "cat.png")], capsys)  # default: the paper's hub model
    assert code == 2 and len([line for line in err.splitlines() if line.startswith("zeroedit")]) == 1, err
    assert "--model DIR" in err and "load(" not in err and "hf download stabilityai/stable-diffusion-2-1-base" in err
    assert all(name in err for name in ("tiny", "tiny-xl", "toy", "toy-flow", "tiny-sd3", "tiny-flux")), err
    import zeroedit as ze
    from zeroedit.errors import ModelError, ModelNotFound
    with pytest.raises(ModelNotFound) as raised:
        ze.load("no-such-owner/no-such-model")
    assert isinstance(raised.value, ModelError) and raised.value.model == "no-such-owner/no-such-model"
    assert "load('DIR')" in str(raised.value) and "--model" not in str(raised.value)
    code, err = run(["demo", "--model", "no-such-owner/no-such-model", "--out", str(tmp_path / "demo")], capsys)
    assert code == 2 and "--model DIR" in err and not (tmp_path / "demo").exists(), err  # before any run


def test_demo_writes_every_method_and_a_gallery(tmp_path, capsys, monkeypatch):
    from zeroedit import demo
    import torch
    monkeypatch.setattr(demo, "TOY_STEPS", 4)  # the gallery's shape does not depend on the steps
    threads = torch.get_num_threads()
    code, err = run(["demo", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    assert torch.get_num_threads() == threads  # the toy demo runs on one thread, then restores torch's count
    page = (tmp_path / "index.html").read_text()
    for name in ("invert", "compose", "translate", "edit", "personalize"):
        assert (tmp_path / f"{name}.png").is_file() and (tmp_path / f"{name}.json").is_file()
        assert f'src="{name}.png"' in page
    assert "steps" in page and "inputs/cat.png" in page and "CPU time (1 torch thread(s)" in page
    assert str(tmp_path) not in page and str(ASSETS) not in page  # inputs named inside the demo folder
    sidecar = json.loads((tmp_path / "invert.json").read_text())
    assert sidecar["args"]["image"] == "inputs/cat.png" and (tmp_path / "inputs" / "cat.png").is_file()
    assert json.loads((tmp_path / "edit.json").read_text())["args"]["direction"] == "inputs/red2blue.safetensors"


def test_demo_with_a_failed_run_exits_3(tmp_path, capsys, monkeypatch):
    """A run that fails is shown in the gallery with its error, and the demo exits 3 (as a batch does)."""
    from zeroedit import demo
    monkeypatch.setattr(demo, "toy_jobs", lambda out, steps: [
        {"method": "invert", "id": "invert", "image": "inputs/missing.png", "steps": 2}])
    code, err = run(["demo", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 3, err
    assert 'class="err"' in (tmp_path / "index.html").read_text() and not (tmp_path / "invert.png").exists()


# ----------------------------------------------------------------------------------------- issue 15 §2
def _unchanged(out: Path, before):
    """Nothing written: the --out path is as it was (absent, or the same file)."""
    if before is None:
        return not out.exists() or (out.is_dir() and not any(out.iterdir()))
    return out.is_file() and out.read_bytes() == before


def _bad_cases():
    cat, bg, ref = (str(ASSETS / n) for n in ("cat.png", "background.png", "reference.png"))
    compose = ["compose", "--background", bg, "--reference", ref, "--prompt", "a ball", "--model", "tiny", "--steps", "2"]
    invert = ["invert", "--image", cat, "--model", "tiny", "--steps", "2"]
    translate = ["translate", "--image", cat, "--model", "tiny", "--steps", "2"]
    cuda = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
    return [  # (id, argv without --out, where --out points: "dir" | "file" | "under-file" | "/proc/...")
        ("out-is-a-file", invert, "file"),
        ("out-under-a-file", invert, "under-file"),
        ("out-not-writable", invert, "/proc/zeroedit-cannot-write-here"),
        pytest.param("device-cuda-without-cuda", invert + ["--device", "cuda"], "dir", marks=cuda),
        ("device-not-a-device", invert + ["--device", "banana"], "dir"),
        ("dtype-unknown", invert + ["--dtype", "float8"], "dir"),
        ("unquoted-multi-word-prompt", ["translate", "--image", cat, "--prompt", "a", "red", "cat", "--model", "tiny"], "dir"),
        ("unquoted-prompt-single-prompt-method", compose[:5] + ["--region", "40,40,100,100", "--prompt", "a", "ball"], "dir"),
        ("prompt-mixing-a-single-word", translate + ["--prompt", "a red cat", "dog"], "dir"),
        ("caption-given-twice", ["edit", "--image", cat, "--caption", "a cat", "--caption", "a dog", "--model", "tiny"], "dir"),
        ("region-three-numbers", compose + ["--region", "1", "2", "3"], "dir"),
        ("region-not-numbers", compose + ["--region", "1,2,x,4"], "dir"),
        ("steps-zero", invert[:-1] + ["0"], "dir"),
        ("steps-not-a-number", invert[:-1] + ["many"], "dir"),
        ("missing-prompt", translate, "dir"),
        ("missing-image-file", ["invert", "--image", str(ASSETS / "nope.png"), "--model", "tiny"], "dir"),
        ("quiet-not-a-bool-in-config", ["invert", "--config", "QUIET_CONFIG"], "dir"),
        ("negative-region-as-flag-typo", compose + ["--region", "-20,-20,40"], "dir"),
    ]


@pytest.mark.parametrize("name,argv,where", _bad_cases())
def test_bad_input_exits_2_one_line_nothing_written(name, argv, where, tmp_path, capsys):
    """Each bad command line: exit 2, one `zeroedit: error` line, no traceback, nothing written in --out."""
    before = None
    if where == "dir":
        out = tmp_path / "out"
    elif where == "file":
        out = tmp_path / "taken.txt"
        out.write_text("not a folder")
        before = out.read_bytes()
    elif where == "under-file":
        (tmp_path / "taken.txt").write_text("not a folder")
        out = tmp_path / "taken.txt" / "out"
    else:
        out = Path(where)
    config = tmp_path / "quiet.yaml"
    config.write_text(f"image: {ASSETS / 'cat.png'}\nmodel: tiny\nquiet: 'yes please'\n")
    argv = [str(config) if a == "QUIET_CONFIG" else a for a in argv]
    code, err = run(argv + ["--out", str(out)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (name, code, err)
    assert len(lines) == 1 and lines[0].startswith("zeroedit: error: ") and "Traceback" not in err, (name, err)
    assert _unchanged(out, before), name


def test_bad_out_fails_before_loading_a_model(tmp_path, capsys, monkeypatch):
    """--out is checked first: a model that does not exist is never even looked at."""
    from zeroedit import runner
    loads = []
    monkeypatch.setattr(runner, "load_pipeline", lambda *a, **k: loads.append(a))
    (tmp_path / "f").write_text("x")
    code, err = run(["invert", "--image", str(ASSETS / "cat.png"), "--model", "no/such-model", "--out",
                     str(tmp_path / "f" / "out")], capsys)
    assert code == 2 and "is a file" in err and loads == []


@pytest.mark.parametrize("region,box", [(["-20,-20,40,40"], [-20, -20, 40, 40]), (["32", "32", "96", "96"], [32, 32, 96, 96]),
                                        (["-20", "-20", "40", "40"], [-20, -20, 40, 40])])
def test_region_negative_and_space_separated(region, box, tmp_path, capsys):
    argv = ["compose", "--background", str(ASSETS / "background.png"), "--reference", str(ASSETS / "reference.png"),
            "--region", *region, "--prompt", "a ball", "--steps", "2", "--model", "tiny", "--quiet", "--out", str(tmp_path)]
    code, err = run(argv, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "compose.json").read_text())["args"]["region"] == box


def test_quiet_true_in_config_is_quiet(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"image: {ASSETS / 'cat.png'}\nsteps: 2\nmodel: tiny\nquiet: true\n")
    assert cli.main(["invert", "--config", str(config), "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out == ""
    config.write_text(f"image: {ASSETS / 'cat.png'}\nsteps: 2\nmodel: tiny\n")
    assert cli.main(["invert", "--config", str(config), "--out", str(tmp_path / "b")]) == 0
    assert "invert: wrote" in capsys.readouterr().out


def test_several_prompts_quoted_or_repeated(tmp_path, capsys):
    """`--prompt "a" "b"` (each with a space) and `--prompt x --prompt y` give several prompts; one image each,
    named translate~0.png, translate~1.png; the help says how."""
    base = ["translate", "--image", str(ASSETS / "cat.png"), "--steps", "2", "--model", "tiny", "--quiet"]
    for argv, prompts in ((["--prompt", "a red cat", "a blue dog"], ["a red cat", "a blue dog"]),
                          (["--prompt", "red", "--prompt", "blue"], ["red", "blue"])):
        out = tmp_path / prompts[0].replace(" ", "_")
        code, err = run(base + argv + ["--out", str(out)], capsys)
        assert code == 0, err
        sidecar = json.loads((out / "translate.json").read_text())
        assert sidecar["args"]["prompt"] == prompts
        assert sidecar["outputs"] == ["translate~0.png", "translate~1.png"]
        assert all((out / name).is_file() for name in sidecar["outputs"])
    helptext = cli.build_parser()._subparsers._group_actions[0].choices["translate"].format_help()
    assert "repeat --prompt" in " ".join(helptext.split())


def test_no_import_cycle_through_the_entry_points():
    """runner (and everything under it) never imports an entry point, not even inside a function."""
    import ast
    src = Path(cli.__file__).parent
    entry = {"cli", "batch", "demo", "app"}
    for file in [src / "runner.py"]:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[-1]} | {a.name for a in node.names}
                assert not (names & entry and node.level >= 1), (file.name, ast.dump(node))


# ----------------------------------------------------------------------------------------- issue 26: help
def _parsers():
    """(name, parser) of the main parser and every subcommand's."""
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0]
    return [("zeroedit", parser)] + list(commands.choices.items())


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1, "[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def test_every_flag_has_a_whole_sentence_help():
    """Every flag, positional and subcommand has a help text: a whole sentence (ends with a full stop, balanced
    parentheses), none of the old docstring fragments; every --help renders."""
    seen = set()
    for name, parser in _parsers():
        assert parser.format_help().startswith("usage: "), name
        actions = list(parser._actions)
        actions += [a for action in parser._actions for a in getattr(action, "_choices_actions", [])]
        for action in actions:
            text = " ".join((action.help or "").split())
            where = (name, action.dest)
            assert text.endswith(".") and _balanced(text), where
            assert "(API:" not in text and "(None:" not in text and "%" not in text, where
            seen.add(where)
    assert ("translate", "layers") in seen and ("batch", "jobs") in seen and ("eval", "results") in seen
    assert len(seen) > 150


def test_method_flags_mirror_the_api():
    """Each method's flags are its API parameters, in order; on/off switches are exactly the bool parameters;
    each help names the parameter's plain default; --model names the command's default model."""
    from zeroedit import cli_flags, loading, runner
    from zeroedit.metrics.published import COLUMNS
    helps = dict(_parsers())
    for method in runner.METHODS:
        params = runner.parameters(method)
        assert list(cli_flags.METHOD_FLAGS[method]) == list(params), method
        switches = {n for n, p in params.items() if isinstance(p.default, bool)}
        assert switches == {n for n in params if n in cli.SWITCHES}, method
        for name, param in params.items():
            default = param.default
            if isinstance(default, (int, float, str)) and not isinstance(default, bool) and default != "":
                assert f"default: {default}" in cli_flags.METHOD_FLAGS[method][name], (method, name, default)
    for command, model in runner.DEFAULT_MODELS.items():
        assert model in cli_flags.model_help(command)
        assert model in " ".join(helps[command].format_help().replace("-\n", "-").split()).replace("- ", "-")
    assert cli_flags.OFFLINE_MODELS == loading.OFFLINE_MODELS and cli_flags.BENCHMARKS == tuple(COLUMNS)


def test_help_imports_no_torch():
    """`zeroedit --help` and every `zeroedit COMMAND --help` answer without importing torch, diffusers,
    transformers or gradio; `ze.invert` stays the function once its submodule is imported."""
    commands = [name for name, _ in _parsers()[1:]]
    script = f"""
import json, runpy, sys
heavy = ("torch", "diffusers", "transformers", "gradio")
report = {{}}
for argv in [["--help"]] + [[c, "--help"] for c in {commands!r}]:
    sys.argv = ["zeroedit", *argv]
    try:
        runpy.run_module("zeroedit.cli", run_name="__main__")
    except SystemExit as done:
        report[" ".join(argv)] = [done.code, sorted(m for m in heavy if m in sys.modules)]
import zeroedit as ze
from zeroedit.invert import METHODS
report["invert"] = [callable(ze.invert) and ze.invert.__module__ == "zeroedit.invert", len(METHODS)]
print(json.dumps(report))
"""
    done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert len(report) == len(commands) + 2 and report.pop("invert") == [True, 5]
    assert all(value == [0, []] for value in report.values()), report


def test_personalize_load_prints_no_empty_float32_notice():
    """diffusers' "modules ... should be kept in float32: []" notice (an empty list, on every dtype cast) is gone
    from loading an IP-Adapter; the same cast outside `load` still shows it, so the check can fail."""
    import logging

    import torch

    import zeroedit as ze
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)
    handler = Keep()
    modeling = logging.getLogger("diffusers.models.modeling_utils")
    modeling.addHandler(handler)
    try:
        pipe = ze.load("tiny", ip_adapter=True)
        assert not [r for r in records if "kept in float32" in r.getMessage()]
        pipe.unet.to(dtype=torch.float32)
        assert [r for r in records if "should be kept in float32: []" in r.getMessage()]
        assert not [f for f in modeling.filters if "Fp32" in type(f).__name__]  # load removes its filter
    finally:
        modeling.removeHandler(handler)
