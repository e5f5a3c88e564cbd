"""The web app (issue 18) through `gradio_client` against a server started here, on the tiny model, few steps:
every tab once, the downloaded sidecar reproduces the image through the CLI, bad input is a message (the
server goes on), Stop cancels a run and leaves the pipeline restored, two users share the queue."""
import json
import re
import time
import zipfile
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
    gallery, stats, files = client.predict(*compose_args(inputs), api_name="/compose")
    assert len(gallery) == 1 and Image.open(gallery[0]["image"]).size == (256, 256)
    assert "UNet calls" in stats and "peak memory" in stats and " s**" in stats
    names = sorted(Path(f).name for f in files)
    assert len(names) == 3 and {"compose.json", "compose.png"} < set(names) and names[0].endswith(".zip")
    sidecar = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert sidecar["args"]["region"] == "region.png" and sidecar["args"]["reference_mask"] == "reference_mask.png"
    assert sidecar["stats"]["unet_calls"] == 6 and sidecar["seed"] == 7
    folder = tmp_path / "download"
    zipfile.ZipFile(next(f for f in files if f.endswith(".zip"))).extractall(folder)
    assert cli.main(["compose", "--config", str(folder / "compose.json"), "--out", str(tmp_path / "again"),
                     "--quiet"]) == 0, capsys.readouterr().err
    assert np.array_equal(pixels(gallery[0]["image"]), pixels(tmp_path / "again" / "compose.png"))


def test_translate_tab_two_prompts_and_pca(client, inputs):
    gallery, stats, files, pca = client.predict(
        "tiny", handle_file(str(inputs / "cat.png")), "a red cat\na blue cat", "", 3, 7.5, 0, False, "", None, 0.8,
        0.5, "memory", True, api_name="/translate")
    assert len(gallery) == 2 and {Path(g["image"]).name for g in gallery} == {"translate~0.png", "translate~1.png"}
    assert "**6 UNet calls**" in stats
    assert Image.open(pca).size == Image.open(gallery[0]["image"]).size


def test_edit_tab(client, inputs):
    gallery, stats, files = client.predict(
        "tiny", handle_file(str(inputs / "cat.png")), "cat", "dog", "", 2, 3, False, None, 5.0, 1, 20.0, 20.0,
        api_name="/edit")
    assert len(gallery) == 1 and "backward" in stats
    assert json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["args"]["caption"] is None


def test_personalize_tab_with_relevance_picture(client, inputs):
    gallery, stats, files, relevance = client.predict(
        "tiny", "a cat and a ball", "cat", handle_file(str(inputs / "cat.png")), "ball",
        handle_file(str(inputs / "reference.png")), "", None, 2, 0.75, 1, "relevance", "alone", 5.0, "", None, None,
        api_name="/personalize")
    image = Image.open(gallery[0]["image"])
    assert Image.open(relevance).size == (2 * image.width, image.height)  # one heatmap per object
    sidecar = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert set(sidecar["args"]["references"]) == {"cat", "ball"}


def test_invert_tab(client, inputs):
    gallery, stats, files = client.predict("tiny", handle_file(str(inputs / "cat.png")), "ddim", "", 3, 2,
                                           api_name="/invert")
    assert "**6 UNet calls**" in stats and "PSNR" in stats  # 3 inversion + 3 reconstruction calls


@pytest.mark.parametrize("case,message", [
    ("no-image", "upload an image"),
    ("mask-of-another-size", "mask"),
    ("steps-0", "steps must be"),
    ("no-region", "region"),
    ("auto-field-not-a-number", "guidance scale: write a number"),
    ("box-of-three-numbers", "four numbers"),
])
def test_bad_input_is_a_message_and_the_server_goes_on(case, message, client, inputs, tmp_path):
    if case == "no-image":
        call = lambda: client.predict("tiny", None, "a dog", "", 3, 7.5, 0, False, "", None, 0.8, 0.5, "memory",
                                      False, api_name="/translate")
    else:
        change = {"steps-0": dict(steps=0), "no-region": dict(background=editor(inputs / "background.png")),
                  "auto-field-not-a-number": dict(guidance_scale="strong"),
                  "box-of-three-numbers": dict(box="10, 10, 50")}.get(case, {})
        if case == "mask-of-another-size":
            Image.new("L", (32, 48), 255).save(tmp_path / "small.png")
            change = dict(reference=editor(inputs / "reference.png"), reference_mask_file=handle_file(str(tmp_path / "small.png")))
        call = lambda: client.predict(*compose_args(inputs, **change), api_name="/compose")
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        call()
    assert message in str(error.value).lower() and "Traceback" not in str(error.value)
    gallery, stats, _ = client.predict("tiny", handle_file(str(inputs / "cat.png")), "ddim", "", 2, 2,
                                       api_name="/invert")
    assert len(gallery) == 1  # still serving


@pytest.mark.parametrize("phase,steps", [("inversion", 400), ("sampling", 40)])
def test_stop_cancels_and_the_pipeline_comes_back_restored(phase, steps, app_url, inputs):
    """Stop during the inversion (no step callback there: the progress counts UNet calls and the UNet pre-hook
    raises) or during sampling (the step callback raises): the run ends early with a message, the processors
    are as before, the app goes on."""
    client = Client(app_url, verbose=False)  # its own session: Stop stops only this session's run
    client.predict("tiny", handle_file(str(inputs / "cat.png")), "ddim", "", 2, 2, api_name="/invert")
    pipe = runner._PIPES[("tiny", False, None, None)]
    before = processors_snapshot(pipe)
    job = client.submit("tiny", handle_file(str(inputs / "cat.png")), "a dog", "", steps, 7.5, 0, False, "", None,
                        0.8, 0.5, "memory", False, api_name="/translate")  # `steps` inversion + sampling steps
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = job.status()
        progress = status.progress_data
        if phase == "inversion" and progress and progress[0].unit == "UNet calls":  # inverting, counted per call
            break
        if progress and progress[0].unit == "steps" and (progress[0].index or 0) >= 2:  # sampling has begun
            break
        assert not job.done(), job.result()
        time.sleep(0.05)
    else:
        pytest.fail(f"the run never reached its {phase}")
    client.predict(api_name="/stop_translate")
    with pytest.raises(gradio_client.exceptions.AppError, match=rf"Cancelled at step \d+ of {steps}") as stopped:
        job.result(timeout=60)
    step = int(re.search(r"step (\d+) of", str(stopped.value)).group(1))
    assert step == 0 if phase == "inversion" else 2 <= step < steps
    assert processors_snapshot(pipe) == before
    gallery, _, _ = client.predict("tiny", handle_file(str(inputs / "cat.png")), "ddim", "", 2, 2, api_name="/invert")
    assert len(gallery) == 1


def test_two_users_share_the_queue_and_get_their_own_results(app_url, inputs):
    """Two sessions submit at once; the queue runs them one after the other; each equals its solo run."""
    users = [Client(app_url, verbose=False) for _ in range(2)]
    jobs = [user.submit(*compose_args(inputs, seed=seed), api_name="/compose") for user, seed in zip(users, (1, 2))]
    together = [pixels(job.result(timeout=120)[0][0]["image"]) for job in jobs]
    alone = [pixels(users[0].predict(*compose_args(inputs, seed=seed), api_name="/compose")[0][0]["image"])
             for seed in (1, 2)]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))
    assert not np.array_equal(together[0], together[1])


def test_zeroedit_app_command(monkeypatch, capsys):
    """`zeroedit app` passes model/host/port/share to serve(); share is off and the host local by default; a
    device the machine lacks is refused before anything starts."""
    calls = []
    monkeypatch.setattr(zapp, "serve", lambda **kwargs: calls.append(kwargs))
    assert cli.main(["app"]) == 0
    assert calls[-1] == dict(model=None, host="127.0.0.1", port=7860, share=False, device=None, dtype=None)
    assert cli.main(["app", "--model", "tiny", "--host", "0.0.0.0", "--port", "8080", "--share"]) == 0
    assert calls[-1]["model"] == "tiny" and calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 8080
    assert calls[-1]["share"] is True
    if not __import__("torch").cuda.is_available():
        assert cli.main(["app", "--device", "cuda"]) == 2 and len(calls) == 2
        assert "CUDA is not available" in capsys.readouterr().err


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
    gallery, stats, files, pca = client.predict(*values, api_name="/translate")
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
    _, _, files, _ = client.predict(*values, api_name="/translate")
    params = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["stats"]["params"]
    assert (params["steps"], params["feature_steps"], params["attention_steps"]) == (4, 2, 3)


def test_personalize_scale_and_guidance_default_to_the_methods(client, inputs):
    """Empty scale / guidance fields: the method's defaults (UNet 0.75 / 5.0)."""
    values = form_defaults("personalize")
    values[1:5] = ["a cat and a ball", "cat", handle_file(str(inputs / "cat.png")), ""]
    values[8] = 2  # steps
    assert values[9] in (None, "") and values[13] in (None, "")  # scale, guidance: auto
    _, _, files, _ = client.predict(*values, api_name="/personalize")
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
    gallery, stats, files, pca = client.predict(*values, api_name="/translate")
    assert len(gallery) == 1 and Image.open(gallery[0]["image"]).size == size and pca is None
    params = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["stats"]["params"]
    assert params["steps"] == 2 and params["attention_steps"] == 1  # the flow preset's window
    gallery, stats, files = client.predict(model, handle_file(str(inputs / "cat.png")), None, "", 2, 2,
                                           api_name="/invert")
    assert Image.open(gallery[0]["image"]).size == size and "PSNR" in stats
    assert json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["stats"]["params"][
        "method"] == "fireflow"
    if model == "tiny-flux":
        values = form_defaults("personalize")
        values[0:5] = [model, "a cat and a ball", "cat", handle_file(str(inputs / "cat.png")), ""]
        values[8] = 2
        gallery, _, files, relevance = client.predict(*values, api_name="/personalize")
        params = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["stats"]["params"]
        assert (params["scale"], params["guidance_scale"]) == (1.0, 3.5) and relevance is not None


def test_stop_on_a_flow_model(app_url, inputs):
    """Stop during a flow translate's inversion: the pre-hook on the transformer raises, the transformer's
    processors and hooks are as before."""
    client = Client(app_url, verbose=False)
    client.predict("tiny-flux", handle_file(str(inputs / "cat.png")), None, "", 2, 2, api_name="/invert")
    pipe = runner._PIPES[("tiny-flux", False, None, None)]
    before = processors_snapshot(pipe)
    job = client.submit("tiny-flux", handle_file(str(inputs / "cat.png")), "a dog", "", 400, "", 0, False, "", "",
                        "", "", "memory", False, api_name="/translate")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = job.status().progress_data
        if progress and progress[0].unit == "UNet calls":
            break
        assert not job.done(), job.result()
        time.sleep(0.05)
    else:
        pytest.fail("the run never reached its inversion")
    client.predict(api_name="/stop_translate")
    with pytest.raises(gradio_client.exceptions.AppError, match=r"Cancelled at step 0 of 400"):
        job.result(timeout=60)
    assert processors_snapshot(pipe) == before
