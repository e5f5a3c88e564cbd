"""Train the toy text-to-image latent diffusion model on the toy world (src/zeroedit/toy/world.py).

    python scripts/train_toy.py --out src/zeroedit/assets/toy [--device cuda] [--vae-steps N] [--unet-steps N]

Stages: (1) render a dataset of captioned scenes; (2) an AutoencoderKL (×4, 64 px → 16×16×4 latents) with a
reconstruction + small KL loss; (3) the CLIP text encoder and the SD-layout UNet jointly, with the
ε-prediction loss on SD's scaled-linear schedule and 10 % caption dropout (for classifier-free guidance).
Saves a diffusers StableDiffusionPipeline folder (safetensors, fp16 weights) and a model card with the recipe
and the measured time of each stage.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from zeroedit.tiny import _sd_scheduler_config
from zeroedit.toy.flow import caption_accuracy
from zeroedit.toy.model import TOY_SIZE, text_config, unet_config, vae_config, write_tokenizer
from zeroedit.toy.world import render, sample_scene


def _render(seed: int):
    scene = sample_scene(seed)
    image, _ = render(scene, TOY_SIZE)
    return np.asarray(image), scene.caption()


def make_dataset(n: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """n rendered scenes: images (n, 3, 64, 64) in [-1, 1] and their captions."""
    with multiprocessing.Pool() as pool:
        items = pool.map(_render, range(seed, seed + n), chunksize=64)
    images = torch.from_numpy(np.stack([i for i, _ in items])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, [c for _, c in items]


def train_vae(images, steps, batch, lr, device, log, max_minutes=None):
    vae = AutoencoderKL(**vae_config()).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    deadline = time.perf_counter() + 60 * max_minutes if max_minutes else None
    for step in range(steps):
        if deadline and time.perf_counter() > deadline:
            log(f"vae: stopped at step {step} of {steps} (--vae-minutes {max_minutes})")
            break
        x = images[torch.randint(len(images), (batch,))].to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"vae step {step} loss {loss.item():.4f}")
    return vae.eval()


@torch.no_grad()
def encode_all(vae, images, device, batch=256):
    return torch.cat([vae.encode(images[i:i + batch].to(device)).latent_dist.mean for i in range(0, len(images), batch)])


def train_unet(latents, captions, tokenizer, steps, batch, lr, device, log, max_minutes=None):
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(len(tokenizer)))).to(device)
    unet = UNet2DConditionModel(**unet_config()).to(device)
    scheduler = DDPMScheduler(**{k: v for k, v in _sd_scheduler_config().items() if k not in ("set_alpha_to_one",)})
    ids = tokenizer(captions + [""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty = ids[-1:]
    ids = ids[:-1]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    warmup = max(steps // 50, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * s / steps)))
    alphas = scheduler.alphas_cumprod.to(device)
    deadline = time.perf_counter() + 60 * max_minutes if max_minutes else None
    for step in range(steps):
        if deadline and time.perf_counter() > deadline:
            log(f"unet: stopped at step {step} of {steps} (--unet-minutes {max_minutes})")
            break
        index = torch.randint(len(latents), (batch,))
        x0, tokens = latents[index].to(device), ids[index].clone()
        tokens[torch.rand(batch) < 0.1] = empty  # caption dropout for classifier-free guidance
        t = torch.randint(0, 1000, (batch,), device=device)
        noise = torch.randn_like(x0)
        a = alphas[t].sqrt()[:, None, None, None]
        s = (1 - alphas[t]).sqrt()[:, None, None, None]
        cond = text_encoder(tokens.to(device))[0]
        loss = F.mse_loss(unet(a * x0 + s * noise, t, cond).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            log(f"unet step {step} loss {loss.item():.4f}")
    return unet.eval(), text_encoder.eval()


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="src/zeroedit/assets/toy")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--unet-steps", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--unet-minutes", type=float, default=None, help="stop UNet training after this long")
    parser.add_argument("--vae-minutes", type=float, default=None, help="stop VAE training after this long")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", type=int, default=128, help="held-out captions for the accuracy report")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    times, lines = {}, []

    def log(message):
        print(message, flush=True)
        lines.append(message)

    start = time.perf_counter()
    images, captions = make_dataset(args.images, args.seed)
    times["dataset"] = time.perf_counter() - start
    start = time.perf_counter()
    vae = train_vae(images, args.vae_steps, args.batch, 1e-3, args.device, log, args.vae_minutes)
    latents = encode_all(vae, images, args.device)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    latents = latents * vae.config.scaling_factor
    times["vae"] = time.perf_counter() - start
    tokenizer = write_tokenizer(out / "tokenizer")
    start = time.perf_counter()
    unet, text_encoder = train_unet(latents, captions, tokenizer, args.unet_steps, args.batch, 1e-3, args.device, log,
                                     args.unet_minutes)
    times["unet+text"] = time.perf_counter() - start
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**_sd_scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    quality = caption_accuracy(pipe.to(args.device), n=args.eval)
    times["evaluation"] = time.perf_counter() - start
    log(f"caption-following accuracy: {quality}")
    pipe.to("cpu", torch.float16).save_pretrained(out, safe_serialization=True)
    recipe = {k: v for k, v in vars(args).items() if k != "out"}
    recipe["seconds"] = {k: round(v, 1) for k, v in times.items()}
    (out / "training.json").write_text(json.dumps(dict(recipe=recipe, quality=quality, log=lines), indent=2))
    log(json.dumps(recipe))


if __name__ == "__main__":
    main()
