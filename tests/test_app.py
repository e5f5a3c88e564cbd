"""The web app (issues 18, 26) through `gradio_client` against a server started here, on the tiny model, few steps:
every tab once, the downloaded sidecar reproduces the image through the CLI, bad input is a message in the status
line with the other outputs empty (the server goes on), Stop cancels a run and leaves the pipeline restored, a
client that leaves stops its run, two users share the queue; and, called directly, the progress's totals, the
run's own peak memory, the run folders' limits."""
import json
import logging
import re
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app needs gradio: pip install 'zeroedit[app]'")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from zeroedit import app as zapp, cli, runner  # noqa: E402

from conftest import processors_snapshot  # noqa: E402

ASSETS = Path(runner.asset("cat.png")).parent


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def editor(path, painted=None):
    """An ImageEditor value: the image and, optionally, one layer painted (alpha 255) inside box `painted`."""
    layers = []
    if painted is not None:
        width, height = Image.open(path).size
        layer = np.zeros((height, width, 4), np.uint8)
        x0, y0, x1, y1 = painted
        layer[y0:y1, x0:x1] = (255, 48, 48, 255)
        file = Path(path).with_name(f"layer-{x0}-{y0}-{x1}-{y1}.png")
        Image.fromarray(layer).save(file)
        layers = [handle_file(str(file))]
    return dict(background=handle_file(str(path)), layers=layers, composite=None, id=None)


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    for name in ("background.png", "reference.png", "reference_mask.png", "cat.png"):
        Image.open(ASSETS / name).save(folder / name)
    return folder


def compose_args(inputs, steps=3, seed=7, **change):
    args = dict(model="tiny", background=editor(inputs / "background.png", (60, 60, 180, 180)),
                reference=editor(inputs / "reference.png", (40, 40, 200, 200)), reference_mask_file=None, box="",
                prompt="a ball on a table", domain="cross", steps=steps, seed=seed, preset=False, order=2, tau_a=0.4,
                tau_b=0.8, guidance_scale=None)
    args.update(change)
    return list(args.values())


def test_compose_tab_and_its_download_reproduces_through_the_cli(client, inputs, tmp_path, capsys):
    status, gallery, stats, files = client.predict(*compose_args(inputs), api_name="/compose")
    assert status.startswith("**Done**") and len(gallery) == 1 and Image.open(gallery[0]["image"]).size == (256, 256)
    assert "UNet calls" in stats and "peak memory" in stats and " s**" in stats and "output **256×256 px**" in stats
    names = sorted(Path(f).name for f in files)
    assert len(names) == 3 and {"compose.json", "compose.png"} < set(names) and names[0].endswith(".zip")
    sidecar = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert sidecar["args"]["region"] == "region.png" and sidecar["args"]["reference_mask"] == "reference_mask.png"
    assert sidecar["args"]["background"] == "background.png" and sidecar["args"]["reference"] == "reference.png"
    assert sidecar["stats"]["unet_calls"] == 6 and sidecar["seed"] == 7
    folder = tmp_path / "download"
    zipfile.ZipFile(next(f for f in files if f.endswith(".zip"))).extractall(folder)
    assert {"background.png", "reference.png", "region.png", "reference_mask.png"} < {p.name for p in folder.iterdir()}
    assert cli.main(["compose", "--config", str(folder / "compose.json"), "--out", str(tmp_path / "again"),
                     "--quiet"]) == 0, capsys.readouterr().err
    assert np.array_equal(pixels(gallery[0]["image"]), pixels(tmp_path / "again" / "compose.png"))


def test_translate_tab_two_prompts_and_pca(client, inputs):
    _, gallery, stats, files, pca = client.predict(
        "tiny", handle_file(str(inputs / "cat.png")), "a red cat\na blue cat", "", 3, 7.5, 0, False, "", None, 0.8,
        0.5, "memory", True, api_name="/translate")
    assert len(gallery) == 2 and {Path(g["image"]).name for g in gallery} == {"translate~0.png", "translate~1.png"}
    assert "**6 UNet calls**" in stats
    assert Image.open(pca).size == Image.open(gallery[0]["image"]).size


def test_edit_tab(client, inputs):
    _, gallery, stats, files = client.predict(
        "tiny", handle_file(str(inputs / "cat.png")), "cat", "dog", "", 2, 3, False, None, 5.0, 1, 20.0, 20.0,
        api_name="/edit")
    assert len(gallery) == 1 and "backward" in stats
    assert json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["args"]["caption"] is None


def test_personalize_tab_with_relevance_picture(client, inputs):
    _, gallery, stats, files, relevance = client.predict(
        "tiny", "a cat and a ball", "cat", handle_file(str(inputs / "cat.png")), "ball",
        handle_file(str(inputs / "reference.png")), "", None, 2, 0.75, 1, "relevance", "alone", 5.0, "", None, None,
        api_name="/personalize")
    image = Image.open(gallery[0]["image"])
    assert Image.open(relevance).size == (2 * image.width, image.height)  # one heatmap per object
    sidecar = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert set(sidecar["args"]["references"]) == {"cat", "ball"}


def test_invert_tab(client, inputs):
    _, gallery, stats, files = client.predict("tiny", handle_file(str(inputs / "cat.png")), "ddim", "", 3, 2,
                                              api_name="/invert")
    assert "**6 UNet calls**" in stats and "PSNR" in stats  # 3 inversion + 3 reconstruction calls


def bomb_png(path, side=15_000):
    """A PNG whose header announces side×side pixels (225 MP by default) over a few bytes of data: a
    decompression bomb that PIL's header check (images.load_image) refuses without decoding it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                           + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("case,message", [
    ("no-image", "upload an image"),
    ("mask-of-another-size", "mask"),
    ("steps-0", "steps must be"),
    ("no-region", "region"),
    ("auto-field-not-a-number", "guidance scale: write a number"),
    ("box-of-three-numbers", "four numbers"),
    ("text-file-named-png", "'notes.png' is not a readable image"),
    ("225-megapixel-png", "decompression"),  # PIL refuses it at open (over twice its limit)
])
def test_bad_input_is_a_message_and_the_server_goes_on(case, message, client, inputs, tmp_path):
    """zeroedit's message in the status line (a text file named .png, a 225-megapixel PNG: zeroedit's reader, not
    Gradio's "upstream app raised an exception"), every other output empty, no run folder left; the server goes
    on."""
    translate = ("tiny", None, "a dog", "", 3, 7.5, 0, False, "", None, 0.8, 0.5, "memory", False)
    if case in ("no-image", "text-file-named-png", "225-megapixel-png"):
        upload = None
        if case == "text-file-named-png":
            (tmp_path / "notes.png").write_text("not a picture\n")
            upload = handle_file(str(tmp_path / "notes.png"))
        elif case == "225-megapixel-png":
            upload = handle_file(str(bomb_png(tmp_path / "bomb.png")))
        status, *outputs = client.predict(translate[0], upload, *translate[2:], api_name="/translate")
    else:
        change = {"steps-0": dict(steps=0), "no-region": dict(background=editor(inputs / "background.png")),
                  "auto-field-not-a-number": dict(guidance_scale="strong"),
                  "box-of-three-numbers": dict(box="10, 10, 50")}.get(case, {})
        if case == "mask-of-another-size":
            Image.new("L", (32, 48), 255).save(tmp_path / "small.png")
            change = dict(reference=editor(inputs / "reference.png"), reference_mask_file=handle_file(str(tmp_path / "small.png")))
        status, *outputs = client.predict(*compose_args(inputs, **change), api_name="/compose")
    assert status.startswith("**Input error**") and message in status.lower() and "Traceback" not in status
    assert outputs[0] in (None, []) and outputs[1] == "" and all(o is None for o in outputs[2:])
    _, gallery, stats, _ = client.predict("tiny", handle_file(str(inputs / "cat.png")), "ddim", "", 2, 2,
                                          api_name="/invert")
    assert len(gallery) == 1  # still serving


def wait_for(job, reached, what: str):
    """Poll a submitted job's progress until `reached(unit)` (a gradio_client ProgressUnit) holds."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = job.status().progress_data
        if progress and reached(progress[0]):
            return progress[0]
        assert not job.done(), job.result()
        time.sleep(0.05)
    pytest.fail(f"the run never reached its {what}")


@pytest.mark.parametrize("phase,steps", [("inversion", 400), ("sampling", 40)])
def test_stop_cancels_and_the_pipeline_comes_back_restored(phase, steps, app_url, inputs):
    """Stop during the inversion (no step callback there: the progress counts UNet calls against the inversion's
    total and the UNet pre-hook raises) or during sampling (the step callback raises): the run answers where it
    stopped, with every other output empty; the processors are as before, the app goes on."""
    client = Client(app_url, verbose=False)  # its own session: Stop stops only this session's run
    client.predict("tiny", handle_file(str(inputs / "cat.png")), "ddim", "", 2, 2, api_name="/invert")
    pipe = runner._PIPES[("tiny", False, None, None, None)]
    before = processors_snapshot(pipe)
    job = client.submit("tiny", handle_file(str(inputs / "cat.png")), "a dog", "", steps, 7.5, 0, False, "", None,
                        0.8, 0.5, "memory", False, api_name="/translate")  # `steps` inversion + sampling steps
    if phase == "inversion":
        unit = wait_for(job, lambda unit: unit.unit == "UNet calls", phase)
        assert unit.length == steps and unit.desc == "translate: inversion"  # its total, before sampling starts
    else:
        unit = wait_for(job, lambda unit: unit.unit == "steps" and (unit.index or 0) >= 2, phase)
        assert unit.length == steps and unit.desc == "translate: step"
    client.predict(api_name="/stop_translate")
    status, gallery, stats, files, pca = job.result(timeout=60)
    assert re.match(rf"\*\*Cancelled at step \d+ of {steps}", status) and "nothing was saved" in status
    step = int(re.search(r"step (\d+) of", status).group(1))
    assert step == 0 if phase == "inversion" else 2 <= step < steps
    assert ("inversion: UNet call" in status) == (phase == "inversion")
    assert gallery in (None, []) and stats == "" and files is None and pca is None
    assert processors_snapshot(pipe) == before
    _, gallery, _, _ = client.predict("tiny", handle_file(str(inputs / "cat.png")), "ddim", "", 2, 2,
                                      api_name="/invert")
    assert len(gallery) == 1


def test_a_client_that_leaves_stops_its_run(app_url, inputs, caplog):
    """gradio_client's job.cancel() mid-run (Gradio's queue drops the event and starts the next one): the run
    stops at its next UNet call, in its inversion, instead of going on through its 300 + 300 steps, so the next
    user's run is not held up behind it."""
    caplog.set_level(logging.INFO, logger="zeroedit.app")
    leaving, staying = Client(app_url, verbose=False), Client(app_url, verbose=False)
    job = leaving.submit("tiny", handle_file(str(inputs / "cat.png")), "a dog", "", 300, 7.5, 0, False, "", None,
                         0.8, 0.5, "memory", False, api_name="/translate")
    wait_for(job, lambda unit: unit.unit == "UNet calls" and (unit.index or 0) >= 3, "inversion")
    job.cancel()
    _, gallery, stats, _ = staying.predict("tiny", handle_file(str(inputs / "cat.png")), "ddim", "", 2, 2,
                                           api_name="/invert")
    assert len(gallery) == 1
    stopped = [r.getMessage() for r in caplog.records if "its client left" in r.getMessage()]
    assert len(stopped) == 1, stopped
    assert re.search(r"translate cancelled at step 0 of 300 \(inversion: UNet call \d+ of 300\)", stopped[0])


def test_two_users_share_the_queue_and_get_their_own_results(app_url, inputs):
    """Two sessions submit at once; the queue runs them one after the other; each equals its solo run."""
    users = [Client(app_url, verbose=False) for _ in range(2)]
    jobs = [user.submit(*compose_args(inputs, seed=seed), api_name="/compose") for user, seed in zip(users, (1, 2))]
    together = [pixels(job.result(timeout=120)[1][0]["image"]) for job in jobs]
    alone = [pixels(users[0].predict(*compose_args(inputs, seed=seed), api_name="/compose")[1][0]["image"])
             for seed in (1, 2)]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))
    assert not np.array_equal(together[0], together[1])


def test_zeroedit_app_command(monkeypatch, capsys):
    """`zeroedit app` passes model/host/port/share to serve(); share is off and the host local by default; a
    device the machine lacks is refused before anything starts."""
    calls = []
    monkeypatch.setattr(zapp, "serve", lambda **kwargs: calls.append(kwargs))
    assert cli.main(["app"]) == 0
    assert calls[-1] == dict(model=None, host="127.0.0.1", port=7860, share=False, device=None, dtype=None,
                             memory=None)
    assert cli.main(["app", "--model", "tiny", "--host", "0.0.0.0", "--port", "8080", "--share", "--memory",
                     "24GB"]) == 0
    assert calls[-1]["model"] == "tiny" and calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 8080
    assert calls[-1]["share"] is True and calls[-1]["memory"] == "24GB"
    assert cli.main(["app", "--memory", "lots"]) == 2 and len(calls) == 2  # refused before anything starts
    if not __import__("torch").cuda.is_available():
        assert cli.main(["app", "--device", "cuda"]) == 2 and len(calls) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_a_memory_budget_plans_the_apps_runs(inputs):
    """`zeroedit app --memory 100GB`: each run loads its model under the memory plan of its method, recorded in the
    run's sidecar."""
    app = zapp.App("tiny", memory="100GB")
    try:
        status, gallery, stats, files = app.invert("tiny", str(inputs / "cat.png"), "ddim", "", 2, 2, progress=None)
        sidecar = json.loads(next(Path(f) for f in files if f.endswith(".json")).read_text())
        assert len(gallery) == 1 and sidecar["memory"]["method"] == "invert"
        assert sidecar["memory"]["budget_bytes"] == 100 * 10**9
    finally:
        app.close()


def form_defaults(api_name: str) -> list:
    """The initial values of a tab's form (what a user who changes nothing submits)."""
    demo, _ = zapp.build("tiny")
    fn = next(fn for fn in demo.fns.values() if fn.api_name == api_name)
    return [component.value for component in fn.inputs]


def test_no_slider_or_number_starts_empty():
    """A method default of None ("resolved per model family") is an empty `auto` field, never a Slider/Number
    that would show it as empty or as its minimum (0: no injection)."""
    demo, _ = zapp.build("tiny")
    for fn in demo.fns.values():
        for component in fn.inputs:
            if isinstance(component, (zapp.gr.Slider, zapp.gr.Number)):
                assert component.value is not None, (fn.api_name, component.label)


def test_translate_form_as_it_starts_runs_with_the_methods_defaults(client, inputs):
    """The translate form with its initial values (only an image and a prompt given) runs and injects: steps,
    guidance, both windows and the negative prompt are the method's resolved defaults (UNet: 50, 7.5, 0.8, 0.5,
    the reference negative), not 0 or ''."""
    from zeroedit.methods.pnp import REFERENCE_NEGATIVE
    values = form_defaults("translate")
    values[1], values[2] = handle_file(str(inputs / "cat.png")), "a dog"
    assert values[4] in (None, "") and values[10] in (None, "") and values[11] in (None, "")
    _, gallery, stats, files, pca = client.predict(*values, api_name="/translate")
    params = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["stats"]["params"]
    assert (params["steps"], params["guidance_scale"]) == (50, 7.5)
    assert (params["feature_steps"], params["attention_steps"]) == (40, 25)  # 0.8 and 0.5 of 50 steps
    assert params["negative_prompt"] == REFERENCE_NEGATIVE
    assert Image.open(pca).size == Image.open(gallery[0]["image"]).size


def test_translate_windows_as_fraction_or_step_count(client, inputs):
    values = form_defaults("translate")
    values[1], values[2], values[4], values[10], values[11] = handle_file(str(inputs / "cat.png")), "a dog", "4", \
        "0.5", "3"
    values[-1] = False  # no PCA picture
    _, _, _, files, _ = client.predict(*values, api_name="/translate")
    params = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["stats"]["params"]
    assert (params["steps"], params["feature_steps"], params["attention_steps"]) == (4, 2, 3)


def test_personalize_scale_and_guidance_default_to_the_methods(client, inputs):
    """Empty scale / guidance fields: the method's defaults (UNet 0.75 / 5.0)."""
    values = form_defaults("personalize")
    values[1:5] = ["a cat and a ball", "cat", handle_file(str(inputs / "cat.png")), ""]
    values[8] = 2  # steps
    assert values[9] in (None, "") and values[13] in (None, "")  # scale, guidance: auto
    _, _, _, files, _ = client.predict(*values, api_name="/personalize")
    params = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["stats"]["params"]
    assert (params["scale"], params["guidance_scale"]) == (0.75, 5.0)


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_flow_models_translate_invert_personalize(model, client, inputs):
    """The flow models of the picker run (the Stop hook sits on their transformer): translate (no PCA picture:
    it reads a UNet layer), invert (its default inversion for the family), personalize on FLUX (its own
    defaults: scale 1.0, guidance 3.5)."""
    size = Image.open(inputs / "cat.png").size
    values = form_defaults("translate")
    values[0], values[1], values[2], values[4] = model, handle_file(str(inputs / "cat.png")), "a dog", "2"
    _, gallery, stats, files, pca = client.predict(*values, api_name="/translate")
    assert len(gallery) == 1 and Image.open(gallery[0]["image"]).size == size and pca is None
    params = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["stats"]["params"]
    assert params["steps"] == 2 and params["attention_steps"] == 1  # the flow preset's window
    _, gallery, stats, files = client.predict(model, handle_file(str(inputs / "cat.png")), None, "", 2, 2,
                                              api_name="/invert")
    assert Image.open(gallery[0]["image"]).size == size and "PSNR" in stats
    assert json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["stats"]["params"][
        "method"] == "fireflow"
    if model == "tiny-flux":
        values = form_defaults("personalize")
        values[0:5] = [model, "a cat and a ball", "cat", handle_file(str(inputs / "cat.png")), ""]
        values[8] = 2
        _, gallery, _, files, relevance = client.predict(*values, api_name="/personalize")
        params = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["stats"]["params"]
        assert (params["scale"], params["guidance_scale"]) == (1.0, 3.5) and relevance is not None


def test_stop_on_a_flow_model(app_url, inputs):
    """Stop during a flow translate's inversion: the pre-hook on the transformer raises, the transformer's
    processors and hooks are as before."""
    client = Client(app_url, verbose=False)
    client.predict("tiny-flux", handle_file(str(inputs / "cat.png")), None, "", 2, 2, api_name="/invert")
    pipe = runner._PIPES[("tiny-flux", False, None, None, None)]
    before = processors_snapshot(pipe)
    job = client.submit("tiny-flux", handle_file(str(inputs / "cat.png")), "a dog", "", 400, "", 0, False, "", "",
                        "", "", "memory", False, api_name="/translate")
    unit = wait_for(job, lambda unit: unit.unit == "UNet calls", "inversion")
    assert unit.length == 401  # FireFlow: steps + 1 calls
    client.predict(api_name="/stop_translate")
    status, *_ = job.result(timeout=60)
    assert status.startswith("**Cancelled at step 0 of 400 (inversion: UNet call")
    assert processors_snapshot(pipe) == before


# ----------------------------------------------------------------------------------------- called directly
class Recorder:
    """A stand-in for gr.Progress: records (done, total, desc, unit) of every update."""

    def __init__(self):
        self.updates = []

    def __call__(self, progress, desc=None, total=None, unit="steps"):
        done, total = progress if isinstance(progress, tuple) else (progress, total)
        self.updates.append((done, total, desc, unit))

    def phase(self, desc):
        return [(done, total) for done, total, d, _ in self.updates if d == desc]


def test_progress_totals_with_auto_steps_and_the_sizes_in_the_stats(tmp_path):
    """translate with steps on "auto" (the form's start) on a 517×389 upload: every phase shows its total from
    the start (inversion 50 UNet calls, 50 steps, PCA picture 50 steps, resolved for the loaded model) and reaches
    it, sampling reaches its "finishing" phase; the PCA picture is drawn at the working size and returned at
    517×389; the stats line gives the output size and the working size, labelled."""
    from zeroedit.backbones import Backbone
    from zeroedit.images import working_size
    from conftest import make_image
    Image.fromarray(make_image(3, (517, 389))).save(tmp_path / "photo.png")
    app, progress = zapp.App("tiny", workdir=str(tmp_path / "runs")), Recorder()
    status, gallery, stats, files, pca = app.translate("tiny", str(tmp_path / "photo.png"), "a dog", "", "", "", 0,
                                                       False, "", "", "", "", "memory", True, progress=progress)
    assert status.startswith("**Done**"), status
    inversion, steps = progress.phase("translate: inversion"), progress.phase("translate: step")
    assert inversion[-1] == (50, 50) and {total for _, total in inversion} == {50}
    assert {total for _, total in steps} == {50} and [done for done, _ in steps] == list(range(1, 50))
    assert progress.phase("translate: finishing") == [(50, 50)]
    pictured = progress.phase("translate: PCA picture")
    assert pictured[0] == (0, 50) and pictured[-1] == (50, 50)
    backbone = Backbone(runner.load_pipeline("tiny", "translate"))
    width, height = working_size((517, 389), backbone.native_size, backbone.size_multiple)
    assert f"output **517×389 px** (working size {width}×{height} px)" in stats
    assert Image.open(pca).size == (517, 389) == Image.open(gallery[0]).size


def test_invert_progress_shows_the_inversion_then_the_reconstruction(tmp_path):
    """invert on a flow model with RF-Solver (2 calls a step): the inversion counts its 3 steps, the
    reconstruction its 6 calls back down, each against its total."""
    app, progress = zapp.App("tiny-flux", workdir=str(tmp_path / "runs")), Recorder()
    status, *_ = app.invert("tiny-flux", str(runner.asset("cat.png")), "rf-solver", "", 3, 2, progress=progress)
    assert status.startswith("**Done**"), status
    assert progress.phase("invert: inversion") == [(0, 3), (1, 3), (2, 3)]
    reconstruction = progress.phase("invert: reconstruction")
    assert reconstruction[-1] == (6, 6) and {total for _, total in reconstruction} == {6}


PHASE_RUNS = [  # (model, method, config): each method's inversion and sampling, defaults and presets
    ("tiny", "translate", dict(steps=3)), ("tiny", "translate", dict(steps=2, inversion_steps=4)),
    ("tiny", "compose", dict(steps=3)), ("tiny", "edit", dict(steps=3)),
    ("tiny", "edit", dict(steps=3, preset="reference")), ("tiny", "personalize", dict(steps=3)),
    ("tiny", "invert", dict(steps=3, method="dpmpp")),
    ("tiny-flux", "translate", dict(steps=3)), ("tiny-flux", "translate", dict(steps=3, preset="reference")),
    ("tiny-flux", "compose", dict(steps=3)), ("tiny-flux", "edit", dict(steps=3)),
    ("tiny-flux", "invert", dict(steps=3, method="fireflow")),
    ("tiny-flux2", "translate", dict(steps=3)), ("tiny-flux2", "personalize", dict(steps=3)),
    ("tiny-qwen-image", "compose", dict(steps=3)), ("tiny-z-image", "edit", dict(steps=3)),
]


@pytest.mark.parametrize("model,method,config", PHASE_RUNS)
def test_phases_are_the_runs_own(model, method, config):
    """`_phases` (the progress's totals, known before the run) against a real run: the step callback comes once
    per sampling step, and the denoiser calls before the first of them are the inversion's plus the first step's
    own (1 or 2); invert: its callback comes once per inversion step."""
    from zeroedit.backbones import check_pipe
    cat = str(runner.asset("cat.png"))
    inputs = {"translate": dict(image=cat, prompt="a dog"), "edit": dict(image=cat, source="cat", target="dog"),
              "compose": dict(background=str(runner.asset("background.png")),
                              reference=str(runner.asset("reference.png")), region=(60, 60, 180, 180), prompt="a ball"),
              "personalize": dict(prompt="a cat", references={"cat": cat}), "invert": dict(image=cat)}[method]
    pipe = runner.load_pipeline(model, method)
    values = runner.resolve_arguments(method, {}, dict(inputs, **config), None)
    steps, inversion = zapp._phases(method, values, pipe)
    calls, firsts = [0], []
    handle = check_pipe(pipe).register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    try:
        runner.execute(method, values, pipe, lambda p, i, t, kwargs: firsts.append(calls[0]) or kwargs)
    finally:
        handle.remove()
    assert steps == config["steps"] and len(firsts) == steps
    if method != "invert":
        assert 1 <= firsts[0] - inversion <= 2, (firsts[0], inversion)


def test_peak_memory_is_this_runs_own():
    """On CPU the stats line's peak is the process's RSS sampled during the run, not its peak over every run
    (ru_maxrss): a run after one that held 64 MiB more does not report those 64 MiB."""
    with zapp._Peak() as big:
        held = np.ones(64 * 2**20, np.uint8)  # touched: resident
        assert held[-1] == 1
    if big.cuda:
        pytest.skip("on CUDA the peak is the allocator's, reset at the run's start")
    del held
    with zapp._Peak() as small:
        pass
    assert big.peak - big.start >= 60 * 2**20 and small.peak - small.start < 60 * 2**20
    assert "process RSS during this run" in small.text()


def test_whole_images_and_no_emoji_in_the_form():
    """The result galleries show whole images (object-fit contain, no square crop); no button needs an emoji
    font (the seed's button says "New seed"); building the app writes nothing beside its source."""
    demo, _ = zapp.build("tiny")
    blocks = list(demo.blocks.values())
    galleries = [b for b in blocks if isinstance(b, zapp.gr.Gallery)]
    assert len(galleries) == 5 and all(g.object_fit == "contain" for g in galleries)
    labels = [b.value for b in blocks if isinstance(b, zapp.gr.Button)]
    assert "New seed" in labels and all(label.isascii() for label in labels)
    assert not Path(zapp.__file__).with_suffix(".pyi").exists()  # no Gradio subclass: no stub written beside app.py


def test_stop_reaches_a_queued_run_and_a_failed_run_leaves_no_folder(tmp_path):
    """Run's instant first event empties the outputs and makes the tab's Stop flag, so Stop pressed while the run
    still waits in the queue cancels it when it starts; a cancelled or failed run leaves no run folder."""
    from types import SimpleNamespace
    app, request = zapp.App("tiny", workdir=str(tmp_path / "runs")), SimpleNamespace(session_hash="user-1")
    assert app.start("invert", request)[1:] == (None, "", None, None)
    app.stop("invert", request)
    status, gallery, stats, files = app.invert("tiny", str(runner.asset("cat.png")), "ddim", "", 3, 2,
                                               request=request)
    assert status.startswith("**Cancelled before it started**") and gallery is None and files is None
    status, *_ = app.invert("tiny", str(tmp_path / "missing.png"), "ddim", "", 3, 2, request=request)
    assert status.startswith("**Input error**") and "file not found" in status
    assert list(app.workdir.iterdir()) == [] and app.flags == {}


def test_run_folders_are_limited_and_the_workdir_removed(monkeypatch, tmp_path):
    """The newest max_runs run folders are kept within max_bytes; each holds the outputs, the sidecar and the zip,
    the upload only inside the zip; the workdir the app made is removed on close (registered with atexit), a
    workdir given to it is kept."""
    registered = []
    monkeypatch.setattr(zapp.atexit, "register", registered.append)
    app = zapp.App("tiny", max_runs=2)
    assert registered == [app.close]
    for _ in range(3):
        status, *_ = app.invert("tiny", str(runner.asset("cat.png")), "ddim", "", 2, 2)
        assert status.startswith("**Done**")
    runs = list(app.workdir.iterdir())
    assert len(runs) == 2
    for run in runs:
        assert {p.name for p in run.iterdir()} == {"invert.png", "invert.json", f"{run.name}.zip"}
        assert "image.png" in zipfile.ZipFile(run / f"{run.name}.zip").namelist()
    app.max_bytes = 1  # every older run is over the limit: only the new one stays
    app.invert("tiny", str(runner.asset("cat.png")), "ddim", "", 2, 2)
    assert len(list(app.workdir.iterdir())) == 1
    app.close()
    assert not app.workdir.exists()
    mine = zapp.App("tiny", workdir=str(tmp_path / "mine"))
    mine.close()
    assert mine.workdir.is_dir()
