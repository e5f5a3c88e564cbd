"""zeroedit next to the implementations users compare it with, in one process, on the same random-weight
model, image and step counts: wall time, sequential UNet calls and peak memory, and the ratio.

    python benchmarks/peers.py                         # tiny model on CPU
    python benchmarks/peers.py --device cuda           # SD-1.5-sized (edit) / SD-2.1-sized (translate), 512² fp16

- diffusers' StableDiffusionPix2PixZeroPipeline (invert + edit, 50 steps each) vs `ze.edit` (50 steps);
- plain StableDiffusionPipeline generation (50 steps, CFG) vs `ze.translate` (50 steps): the floor.
UNet calls of the diffusers pipelines are counted with a forward pre-hook on the UNet.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import zeroedit as ze  # noqa: E402
from zeroedit.backbones import Backbone  # noqa: E402
from zeroedit.cli import asset  # noqa: E402


class _Measure:
    """Wall time, UNet forward calls and peak memory of a block."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, 0

    def _count(self, *args):
        self.calls += 1

    def __enter__(self):
        self.handle = self.pipe.unet.register_forward_pre_hook(self._count)
        if torch.cuda.is_available() and self.pipe.unet.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        cuda = self.pipe.unet.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.peak = torch.cuda.max_memory_allocated() if cuda else 0
        self.handle.remove()
        return False

    def row(self, name):
        return dict(case=name, seconds=round(self.seconds, 2), unet_calls=self.calls,
                    peak_gib=round(self.peak / 2**30, 2))


def pix2pix_zero_diffusers(pipe, image, size, steps=50):
    """diffusers' Pix2PixZero: caption given, direction from two short sentence sets (as its docs)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionPix2PixZeroPipeline
    p2p = StableDiffusionPix2PixZeroPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config),
        inverse_scheduler=DDIMInverseScheduler.from_config(pipe.scheduler.config), feature_extractor=None,
        safety_checker=None, caption_generator=None, caption_processor=None, requires_safety_checker=False)
    p2p.set_progress_bar_config(disable=True)
    backbone = Backbone(pipe)
    source = backbone.encode_prompt(["a cat", "a photo of a cat"]).embeds.mean(0, keepdim=True)
    target = backbone.encode_prompt(["a dog", "a photo of a dog"]).embeds.mean(0, keepdim=True)
    generator = torch.Generator(pipe.unet.device).manual_seed(0)
    latents = p2p.invert(prompt="a photo of a cat", image=image, num_inference_steps=steps, generator=generator).latents
    p2p(prompt="a photo of a cat", source_embeds=source, target_embeds=target, num_inference_steps=steps,
        latents=latents, generator=generator, cross_attention_guidance_amount=0.1, height=size, width=size)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    from PIL import Image
    size = 512 if args.device != "cpu" else 128
    image = Image.open(asset("cat.png")).convert("RGB").resize((size, size))
    rows = []

    def pipe_for(kind):
        if args.device == "cpu":
            return ze.load("tiny")
        from benchmarks.sized import build_sized
        torch.cuda.empty_cache()
        return build_sized(kind, args.device)

    pipe = pipe_for("sd15")
    for label, run in (("diffusers Pix2PixZero (invert + edit)", lambda: pix2pix_zero_diffusers(pipe, image, size, args.steps)),
                       ("ze.edit", lambda: ze.edit(pipe, image, source="cat", target="dog", caption="a photo of a cat",
                                                   steps=args.steps, seed=0))):
        run()  # warm-up
        with _Measure(pipe) as m:
            run()
        rows.append(m.row(label) | {"model": "sd15" if args.device != "cpu" else "tiny"})
        print(json.dumps(rows[-1]), flush=True)
    del pipe
    pipe = pipe_for("sd21")
    generate = lambda: pipe("a painting of a dog", num_inference_steps=args.steps, height=size, width=size,  # noqa: E731
                            generator=torch.Generator(pipe.unet.device).manual_seed(0), output_type="pil")
    for label, run in (("diffusers StableDiffusionPipeline (generation)", generate),
                       ("ze.translate", lambda: ze.translate(pipe, image, "a painting of a dog", steps=args.steps, seed=0))):
        run()
        with _Measure(pipe) as m:
            run()
        rows.append(m.row(label) | {"model": "sd21" if args.device != "cpu" else "tiny"})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| case | model | seconds | unet calls | peak GiB |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['case']} | {r['model']} | {r['seconds']} | {r['unet_calls']} | {r['peak_gib']} |")
    print(f"\nedit speed-up vs diffusers Pix2PixZero: {rows[0]['seconds'] / rows[1]['seconds']:.1f}×; "
          f"translate / plain generation: {rows[3]['seconds'] / rows[2]['seconds']:.2f}×")


if __name__ == "__main__":
    main()
