"""zeroedit's DDIM inversion convention vs the reference implementations' (issue 15 §5), on the trained toy model.

    python benchmarks/reference_inversion.py                  # toy model (CPU): 20 scenes (999-step rows: the
                                                              # first 4; pix2pix-zero rows: the first 10), 2 cases
    python benchmarks/reference_inversion.py --no-fine        # without the 999-step rows (minutes less)
    python benchmarks/reference_inversion.py --model tiny     # the tiny random-weight SD

1. Round trip: invert, then sample back with DDIM (η = 0) on the methods' sampling grid from the latent at its
   top, decode, PSNR (dB, 8-bit) against the input image and against its VAE round trip (the inversion's
   own error), mean over toy-world scenes (zeroedit.toy.world):
   - Plug-and-Play: empty prompt, conventions "zeroedit" (default) and "pnp" (pnp-diffusers `preprocess.py`)
     at 50 inversion steps (the default preset) and 999 (preset="reference"), 50 sampling steps;
   - pix2pix-zero: the scene's caption, 50 steps, conventions "zeroedit" (ε at the moved latent's time),
     "pix2pix-zero" (official `ddim_inv.py`: 48 calls, `t − 1` indexing) and "diffusers" (ε at the target t,
     = "pnp", diffusers' DDIMInverseScheduler; edit's default), with the method's noise regulariser (5 rounds,
     λ = 20) and without it. The VAE posterior mean in all (preset="reference" samples it; that is not the convention).
   The VAE's own round trip is the ceiling.
2. End to end: relative difference ‖a − b‖ / ‖b‖ of the final latents when only the convention differs:
   `ze.translate(preset="reference")` (its "pnp" inversion, source recomputed) vs `ze.translate(inversion_steps=
   999, source_cache="recompute")`, and the same at 50 inversion steps; for pix2pix-zero the regularised
   inversion under the reference's convention and under edit's default ("diffusers") (same x0, caption, seed)
   followed by the same edit stage (`methods.pix2pix_zero._edit`, direction from the toy sentences, the
   method's defaults); for scale, the same with the default convention and only the regulariser's random rolls
   (seed) changed.
`run(pipe, ...)` returns the figures as a dict (also for a pipe on CUDA).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

import zeroedit as ze  # noqa: E402
from zeroedit.backbones import Backbone, Cond  # noqa: E402
from zeroedit.images import to_tensor  # noqa: E402
from zeroedit.inversion import ddim_invert, ddim_sample, ddim_timesteps  # noqa: E402
from zeroedit.methods.common import finish, generator  # noqa: E402
from zeroedit.methods.pix2pix_zero import _edit, _regularized_inversion  # noqa: E402
from zeroedit.toy.quality import edit_cases, psnr, rate, sentences  # noqa: E402
from zeroedit.toy.world import render, sample_scene  # noqa: E402

STEPS = 50  # both methods' default sampling steps


def scenes(n: int, size: int, seed: int = 2000):
    """n toy-world scenes (the inversion benchmark's seeds): (image, caption)."""
    out = []
    for i in range(n):
        scene = sample_scene(seed + i)
        out.append((render(scene, size)[0], scene.caption()))
    return out


def _psnrs(backbone, latents, images) -> list[float]:
    return [psnr(a, b) for a, b in zip(finish(backbone, latents, "pil"), images)]


def _scores(backbone, latents, images, vae_images) -> tuple[float, float]:
    """(mean PSNR vs the inputs, mean PSNR vs their VAE round trips)."""
    decoded = finish(backbone, latents, "pil")
    return (rate(psnr(a, b) for a, b in zip(decoded, images)), rate(psnr(a, b) for a, b in zip(decoded, vae_images)))


def pnp_round_trip(backbone, x0, images, vae_images, inversion_steps: int, convention: str) -> tuple[float, float]:
    """Mean PSNR of the PnP source's round trip: "" inversion on the fine grid, 50 DDIM steps back from t_top."""
    cond = backbone.encode_prompt("").repeat(x0.shape[0])
    model_fn = lambda x, t, j: backbone.unet_call(x, t, cond)  # noqa: E731
    fine, grid = ddim_timesteps(backbone, inversion_steps), ddim_timesteps(backbone, STEPS)
    path = ddim_invert(backbone, model_fn, x0, fine, convention=convention)
    x_top = dict(zip(fine, path[1:]))[grid[-1]]
    return _scores(backbone, ddim_sample(backbone, model_fn, x_top, grid), images, vae_images)


def p2p_round_trip(backbone, x0s, conds, images, vae_images, convention: str, reg_steps: int) -> tuple[float, float]:
    """Mean PSNR of pix2pix-zero's round trip: regularised caption inversion, 50 DDIM steps back with the caption
    (the edit's reference branch). One image at a time: the regulariser's KL term is per image."""
    grid, backs = ddim_timesteps(backbone, STEPS), []
    for i, (x0, cond) in enumerate(zip(x0s, conds)):
        top = _regularized_inversion(backbone, cond, x0, grid, reg_steps, 20.0, 20.0, generator(i), convention)
        backs.append(ddim_sample(backbone, lambda x, t, j: backbone.unet_call(x, t, cond), top, grid))
    return _scores(backbone, torch.cat(backs), images, vae_images)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def translate_difference(pipe, cases, inversion_steps: int) -> float:
    """Mean relative difference of ze.translate's output latents: reference convention vs zeroedit's."""
    values = []
    for case in cases:
        kw = dict(prompt=case.target_prompt, inversion_steps=inversion_steps, output_type="latent")
        reference = ze.translate(pipe, case.image, preset="reference", **kw)
        default = ze.translate(pipe, case.image, source_cache="recompute", **kw)
        assert reference.stats.params["inversion_convention"] == "pnp"
        values.append(relative(reference.images, default.images))
    return rate(values)


def edit_difference(pipe, cases) -> tuple[float, float]:
    """Mean relative difference of pix2pix-zero's edit when only the inversion convention differs, and, for
    scale, when only the regulariser's seed differs (the default convention)."""
    backbone, conventions, seeds = Backbone(pipe), [], []
    grid = ddim_timesteps(backbone, STEPS)
    for i, case in enumerate(cases):
        direction = ze.directions.build(pipe, case.old, case.new, sentences=sentences(case.kind))
        with torch.no_grad():
            x0 = backbone.encode_image(to_tensor(case.image)).float()
            cond = backbone.encode_prompt(case.source_prompt)
            edited = Cond(cond.embeds + direction.to(cond.embeds.device, cond.embeds.dtype))
            outs = []
            for convention, seed in (("pix2pix-zero", i), ("diffusers", i), ("diffusers", i + 1000)):
                top = _regularized_inversion(backbone, cond, x0, grid, 5, 20.0, 20.0, generator(seed), convention)
                outs.append(_edit(pipe, backbone, top, cond, edited, list(reversed(grid)), 0.1, 5.0, None))
        conventions.append(relative(outs[0], outs[1]))
        seeds.append(relative(outs[2], outs[1]))
    return rate(conventions), rate(seeds)


def run(pipe, n_scenes: int = 20, e2e_cases: int = 2, fine_scenes: int | None = 4, p2p_scenes: int = 10,
        log=print) -> dict:
    """The figures (see the module docstring). fine_scenes: scenes of the 999-step rows (None: no such rows);
    p2p_scenes: scenes of the pix2pix-zero rows (one image at a time); both the first of the n_scenes."""
    backbone = Backbone(pipe)
    size = pipe.unet.config.sample_size * backbone.vae_scale
    data = scenes(n_scenes, size)
    images = [image for image, _ in data]
    out = {"scenes": n_scenes, "size": size, "round_trip": {}, "end_to_end": {}}
    with torch.no_grad():
        x0 = backbone.encode_image(to_tensor(images)).float()
        vae_images = finish(backbone, x0, "pil")
        out["round_trip"][f"VAE round trip (ceiling), {n_scenes} scenes"] = (rate(_psnrs(backbone, x0, images)),
                                                                             float("inf"))
        for steps, n in ((50, n_scenes),) + (((999, fine_scenes),) if fine_scenes else ()):
            for convention in ("zeroedit", "pnp"):
                start = time.perf_counter()
                value = pnp_round_trip(backbone, x0[:n], images[:n], vae_images[:n], steps, convention)
                out["round_trip"][f"PnP, {convention}, {steps} inversion steps, {n} scenes"] = value
                log(f"PnP {convention} {steps}: {value[0]:.2f} / {value[1]:.2f} dB ({time.perf_counter() - start:.0f} s)")
        conds = [backbone.encode_prompt(caption) for _, caption in data[:p2p_scenes]]
        for reg_steps in (5, 0):
            for convention in ("zeroedit", "pix2pix-zero", "diffusers"):
                start = time.perf_counter()
                value = p2p_round_trip(backbone, list(x0[:p2p_scenes].split(1)), conds, images[:p2p_scenes],
                                       vae_images[:p2p_scenes], convention, reg_steps)
                out["round_trip"][f"pix2pix-zero, {convention}, regulariser {reg_steps}, {len(conds)} scenes"] = value
                log(f"pix2pix-zero {convention} reg {reg_steps}: {value[0]:.2f} / {value[1]:.2f} dB "
                    f"({time.perf_counter() - start:.0f} s)")
    cases = edit_cases(e2e_cases, seed=100)
    for steps in ((999, 50) if fine_scenes else (50,)):
        out["end_to_end"][f"translate, {steps} inversion steps"] = translate_difference(pipe, cases, steps)
        log(f"translate {steps}: {out['end_to_end'][f'translate, {steps} inversion steps']:.2e}")
    out["end_to_end"]["edit, 50 steps"], out["end_to_end"]["edit, 50 steps, two regulariser seeds (scale)"] = \
        edit_difference(pipe, cases)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="toy")
    parser.add_argument("--device", default=None)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--e2e", type=int, default=2, help="end-to-end cases")
    parser.add_argument("--fine-scenes", type=int, default=4, help="scenes of the 999-step PnP rows")
    parser.add_argument("--p2p-scenes", type=int, default=10, help="scenes of the pix2pix-zero rows")
    parser.add_argument("--no-fine", action="store_true", help="skip the 999-step PnP rows")
    args = parser.parse_args(argv)
    pipe = ze.load(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    res = run(pipe, args.scenes, args.e2e, None if args.no_fine else args.fine_scenes, args.p2p_scenes,
              log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"\nRound trip on the {args.model} model, toy-world scenes at {res['size']} px, {STEPS} sampling steps "
          f"(PSNR, mean over the scenes)\n")
    print("| inversion | PSNR vs input (dB) | PSNR vs VAE round trip (dB) |\n| --- | --- | --- |")
    for name, (to_input, to_vae) in res["round_trip"].items():
        print(f"| {name} | {to_input:.2f} | {to_vae:.2f} |")
    print(f"\nEnd to end, the reference's convention vs the default's (relative difference of the final latents, mean of "
          f"{args.e2e} cases)\n")
    print("| run | relative difference |\n| --- | --- |")
    for name, value in res["end_to_end"].items():
        print(f"| {name} | {value:.1e} |")


if __name__ == "__main__":
    main()
