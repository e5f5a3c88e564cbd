"""Every bad input a new user hits through the API (issue 15 §1–2): the exact error type, a word of the message,
and the pipeline exactly as given (processors, hooks, no UNet call). The CLI's cases live in test_cli.py."""
import struct
import zlib

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

import zeroedit as ze
from zeroedit.errors import ImageError, MaskError, ModelError, ParameterError

from conftest import make_image, processors_snapshot

NAN, INF = float("nan"), float("inf")
BG, REF, IMG = make_image(0, (160, 96)), make_image(1, (48, 48)), make_image(2, (128, 96))


def bomb_png(path, side: int = 12000):
    """A ~17 KB PNG that announces side × side pixels (1-bit, all black), written chunk by chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row, packer = b"\0" * (1 + side // 8), zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")
    assert path.stat().st_size < 40_000
    return str(path)


@pytest.fixture(scope="module")
def ip_pipe():
    return ze.load("tiny", ip_adapter=True)


@pytest.fixture(scope="module")
def ddpm_pipe():
    """A real diffusers pipeline that is not Stable Diffusion (no VAE, no text encoder)."""
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8,), layers_per_block=1,
                       down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), norm_num_groups=8)
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler())


@pytest.fixture(scope="module")
def inversion(tiny_pipe):
    return ze.invert(tiny_pipe, IMG, steps=2)


def _call(which, pipes, **override):
    """Call method `which` with good defaults, overridden by `override` (special values name fixtures)."""
    tiny = pipes["tiny"]
    defaults = {
        "compose": (ze.compose, dict(pipe=tiny, background=BG, reference=REF, region=(40, 20, 100, 80), steps=2,
                                     seed=0)),
        "translate": (ze.translate, dict(pipe=tiny, image=IMG, prompt="a dog", steps=2)),
        "edit": (ze.edit, dict(pipe=tiny, image=IMG, steps=2, reg_steps=1, seed=0)),
        "personalize": (ze.personalize, dict(pipe=pipes["ip"], prompt="a cat", references={"cat": REF}, steps=2)),
        "invert": (ze.invert, dict(pipe=tiny, image=IMG, steps=2)),
        "reconstruct": (ze.reconstruct, dict(pipe=tiny, inversion=pipes["inversion"])),
        "build": (ze.directions.build, dict(pipe=tiny, source="cat", target="dog")),
        "load": (ze.load, dict(model="tiny")),
    }
    function, args = defaults[which]
    args = dict(args)
    for key, value in override.items():
        args[key] = pipes[value[1:]] if isinstance(value, str) and value.startswith("@") else value
    return function(**args)


CASES = [
    # compose
    ("compose", dict(region=(NAN, 0, 10, 10)), MaskError, "NaN"),
    ("compose", dict(region=(0, 0, INF, 10)), MaskError, "infinite"),
    ("compose", dict(region=(0, 0, 1e12, 1e12)), MaskError, "background"),
    ("compose", dict(guidance_scale=NAN), ParameterError, "finite"),
    ("compose", dict(tau_b=INF), ParameterError, "tau_b"),
    ("compose", dict(seed=-1), ParameterError, "2**64"),
    ("compose", dict(seed=2 ** 64), ParameterError, "2**64"),
    ("compose", dict(steps=1000), ParameterError, "999"),
    ("compose", dict(callback_on_step_end="print"), ParameterError, "callback"),
    ("compose", dict(size=4096), ParameterError, "allow_large"),
    ("compose", dict(size=(0, 64)), ParameterError, "size"),
    ("compose", dict(background="@bomb"), ImageError, "bomb"),
    ("compose", dict(pipe=None), ModelError, "ze.load"),
    ("compose", dict(pipe="tiny"), ModelError, "ze.load"),
    ("compose", dict(pipe="@unet"), ModelError, "whole"),
    ("compose", dict(pipe="@ddpm"), ModelError, "vae"),
    ("compose", dict(paste_background="yes"), ParameterError, "paste_background"),
    # translate
    ("translate", dict(steps=1000), ParameterError, "999"),
    ("translate", dict(steps=10 ** 6), ParameterError, "999"),
    ("translate", dict(inversion_steps=1000), ParameterError, "inversion_steps must be"),
    ("translate", dict(inversion_steps=3), ParameterError, "inversion_steps=3"),
    ("translate", dict(guidance_scale=INF), ParameterError, "guidance_scale"),
    ("translate", dict(seed=-5), ParameterError, "seed"),
    ("translate", dict(seed="1"), ParameterError, "seed"),
    ("translate", dict(feature_steps=NAN), ParameterError, "feature_steps"),
    ("translate", dict(callback_on_step_end=3), ParameterError, "callback"),
    ("translate", dict(pipe="@ddpm"), ModelError, "Stable Diffusion"),
    ("translate", dict(size="big"), ParameterError, "size"),
    # edit
    ("edit", dict(xa_guidance=NAN), ParameterError, "xa_guidance"),
    ("edit", dict(lambda_ac=INF), ParameterError, "lambda_ac"),
    ("edit", dict(direction=torch.zeros(1, 10, 32)), ParameterError, "shape"),
    ("edit", dict(direction=torch.full((1, 77, 32), NAN)), ParameterError, "NaN"),
    ("edit", dict(source="  "), ParameterError, "source"),
    ("edit", dict(target=""), ParameterError, "target"),
    ("edit", dict(steps=1000), ParameterError, "999"),
    ("edit", dict(seed=1.5), ParameterError, "seed"),
    ("edit", dict(pipe="runwayml/stable-diffusion-v1-5"), ModelError, "ze.load"),
    ("edit", dict(captioner="blip"), ParameterError, "captioner"),
    # personalize
    ("personalize", dict(references={"  ": REF}), ParameterError, "non-blank"),
    ("personalize", dict(scale=NAN), ParameterError, "scale"),
    ("personalize", dict(guidance_scale=-INF), ParameterError, "guidance_scale"),
    ("personalize", dict(size=4096), ParameterError, "allow_large"),
    ("personalize", dict(size=(96, 64), width=96), ParameterError, "either"),
    ("personalize", dict(steps=1000), ParameterError, "999"),
    ("personalize", dict(pipe=None), ModelError, "ze.load"),
    # invert / reconstruct
    ("invert", dict(steps=1000), ParameterError, "999"),
    ("invert", dict(method="dpmpp", steps=5000), ParameterError, "999"),
    ("invert", dict(image="@bomb"), ImageError, "MAX_IMAGE_PIXELS"),
    ("invert", dict(size=(64, NAN)), ParameterError, "size"),
    ("invert", dict(callback="x"), ParameterError, "callback"),
    ("invert", dict(pipe="@unet"), ModelError, "whole"),
    ("reconstruct", dict(inversion="latents.pt"), ParameterError, "ze.invert"),
    ("reconstruct", dict(output_type="gif"), ParameterError, "output_type"),
    # directions.build
    ("build", dict(pipe=None), ModelError, "ze.load"),
    ("build", dict(pipe="tiny"), ModelError, "ze.load"),
    ("build", dict(pipe="@ddpm"), ModelError, "vae"),
    ("build", dict(source=" "), ParameterError, "source"),
    # load
    ("load", dict(device="nonsense"), ParameterError, "device"),
    ("load", dict(device="cuda"), ParameterError, "cuda"),
]


@pytest.mark.parametrize("method, override, error, word", CASES,
                         ids=[f"{m}-{'-'.join(o)}-{i}" for i, (m, o, _, _) in enumerate(CASES)])
def test_bad_input_is_refused_before_model_work(tiny_pipe, ip_pipe, ddpm_pipe, inversion, bomb, method, override,
                                                error, word):
    if override.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    pipes = dict(tiny=tiny_pipe, ip=ip_pipe, ddpm=ddpm_pipe, unet=tiny_pipe.unet, inversion=inversion, bomb=bomb)
    before = {name: processors_snapshot(pipes[name]) for name in ("tiny", "ip")}
    calls = []
    components = ("unet", "vae", "text_encoder", "image_encoder")  # any model work, not only the UNet's
    handles = [module.register_forward_pre_hook(lambda *a, c=component: calls.append(c))
               for name in ("tiny", "ip") for component in components
               if (module := getattr(pipes[name], component, None)) is not None]
    try:
        with pytest.raises(error) as raised:
            _call(method, pipes, **override)
    finally:
        for handle in handles:
            handle.remove()
    assert word.lower() in str(raised.value).lower(), str(raised.value)
    assert not calls  # refused before any model work
    assert {name: processors_snapshot(pipes[name]) for name in ("tiny", "ip")} == before

