"""Train the toy model's image encoder and IP-Adapter (for `ze.personalize`) on the toy world, the UNet,
VAE and text encoder of `ze.load("toy")` frozen.

    python scripts/train_toy_ip.py --out src/zeroedit/assets/toy [--minutes 20] [--threads 2]

Objective: IP-Adapter's (Ye et al. 2023, Sec. 3.3): the ε-prediction loss of the frozen UNet with decoupled
cross-attention `Attn(Q, K_text, V_text) + Attn(Q, to_k_ip(c), to_v_ip(c))`, where c = ImageProjection(image
encoder(reference)) are 4 image tokens. Trained: a small CLIPVisionModelWithProjection (from scratch), the
projection, and `to_k_ip`/`to_v_ip` of every attn2 layer (initialised from the layer's `to_k`/`to_v`, as the
IP-Adapter paper does).

Data: a scene of the toy world (1–2 objects) is the target; the reference is ONE of its objects drawn alone
(same shape and colour; random size, a small offset, a plain background, "photo" or the scene's style). The
caption is the scene's caption with that object's colour word dropped (p = 0.6) or its shape word dropped
(p = 0.25), else intact, so the colour (or shape) can only come from the reference. Caption dropout 5 %,
image dropout 5 % (zero image embedding, as diffusers' unconditional image input), both 5 %.

Saves (all safetensors, fp16): `image_encoder/`, `feature_extractor/` (CLIPImageProcessor, 32 px) and
`ip_adapter/ip-adapter_toy.safetensors` in the original IP-Adapter layout ({"image_proj": ..., "ip_adapter":
{"1.to_k_ip.weight", ...}}, flattened with "image_proj." / "ip_adapter." prefixes, which diffusers'
`load_ip_adapter` reads), and writes the recipe, timing and evaluation to `ip_training.json`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from zeroedit.tiny import _sd_scheduler_config
from zeroedit.toy.model import TOY_SIZE
from zeroedit.toy.world import STYLES, SIZES, Obj, Scene, render, sample_scene

IMAGE_SIZE = 32
TOKENS = 4
WEIGHT_NAME = "ip-adapter_toy.safetensors"


def encoder_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
                            image_size=IMAGE_SIZE, patch_size=8, projection_dim=64)


def feature_extractor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def reference_scene(obj: Obj, style: str, rng: np.random.RandomState) -> Scene:
    """One object alone, roughly centred, on a plain background: what a user gives as a reference."""
    size = str(rng.choice(list(SIZES)))
    x, y = 0.5 + rng.uniform(-0.1, 0.1, size=2)
    return Scene((Obj(obj.shape, obj.color, size, round(float(x), 3), round(float(y), 3)),), "plain", style,
                 int(rng.randint(1 << 30)))


def reference_image(obj: Obj, style: str = "photo"):
    """The canonical reference of an object (benchmark, demo): large, centred, plain background, 64 px."""
    return render(Scene((Obj(obj.shape, obj.color, "large", 0.5, 0.5),), "plain", style), TOY_SIZE)[0]


def drop_words(scene: Scene, index: int, mode: str) -> str:
    """The scene's caption with object `index`'s colour ("color") or shape ("shape") word removed."""
    parts = []
    for i, o in enumerate(scene.objects):
        words = [o.color, o.shape]
        if i == index and mode == "color":
            words = [o.shape]
        elif i == index and mode == "shape":
            words = [o.color]
        parts.append("a " + " ".join(words))
    full = scene.caption()
    return " and ".join(parts) + full[full.index(" on "):]


def make_pairs(n: int, seed: int):
    """n (target image, reference image, caption) triples (see module docstring)."""
    rng = np.random.RandomState(seed)
    targets, references, captions, phrases = [], [], [], []
    for i in range(n):
        scene = sample_scene(seed + i)
        index = int(rng.randint(len(scene.objects)))
        style = "photo" if rng.rand() < 0.6 else scene.style
        mode = rng.choice(["color", "shape", "none"], p=[0.6, 0.25, 0.15])
        targets.append(np.asarray(render(scene, TOY_SIZE)[0]))
        references.append(render(reference_scene(scene.objects[index], style, rng), TOY_SIZE)[0])
        captions.append(drop_words(scene, index, mode))
        phrases.append(scene.objects[index].phrase())
    return np.stack(targets), references, captions, phrases


def ip_state_dict(unet, projection_dim: int, seed: int) -> dict:
    """Initial adapter in the original layout: a random ImageProjection, to_k_ip/to_v_ip = to_k/to_v."""
    cross = unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(seed)
    image_proj = {"proj.weight": torch.randn(cross * TOKENS, projection_dim, generator=gen) / projection_dim ** 0.5,
                  "proj.bias": torch.zeros(cross * TOKENS), "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    modules = dict(unet.named_modules())
    ip_adapter, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            attn = modules[name[: -len(".processor")]]
            ip_adapter[f"{key}.to_k_ip.weight"] = attn.to_k.weight.detach().clone()
            ip_adapter[f"{key}.to_v_ip.weight"] = attn.to_v.weight.detach().clone()
            key += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def export_state_dict(unet) -> dict:
    """The trained adapter back in the original layout, flattened for safetensors."""
    proj = unet.encoder_hid_proj.image_projection_layers[0]
    original = {"image_embeds.weight": "proj.weight", "image_embeds.bias": "proj.bias"}  # diffusers -> original names
    out = {f"image_proj.{original.get(k, k)}": v for k, v in proj.state_dict().items()}
    processors = unet.attn_processors
    key = 1
    for name in processors:
        if name.endswith("attn2.processor"):
            proc = processors[name]
            out[f"ip_adapter.{key}.to_k_ip.weight"] = proc.to_k_ip[0].weight
            out[f"ip_adapter.{key}.to_v_ip.weight"] = proc.to_v_ip[0].weight
            key += 2
    return {k: v.detach().to(torch.float16).contiguous() for k, v in out.items()}


def trainable(unet, encoder) -> list[torch.nn.Parameter]:
    params = list(encoder.parameters()) + list(unet.encoder_hid_proj.parameters())
    for name, proc in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            params += list(proc.to_k_ip.parameters()) + list(proc.to_v_ip.parameters())
    return params


def align(pipe, encoder, pixels, phrase_ids, steps, batch, lr, log, seed=0):
    """Stage 1 (cheap, no UNet): train the image encoder and projection so that the 4 image tokens of a
    reference match the text encoder's states of its phrase "a <colour> <shape>" (positions 1–4: "a", colour,
    shape, end). With to_k_ip/to_v_ip initialised from to_k/to_v, the adapter then starts out reading a
    reference like the words that describe it; stage 2 (the IP-Adapter objective) takes it from there."""
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    params = list(encoder.parameters()) + list(projection.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    with torch.no_grad():
        target = pipe.text_encoder(phrase_ids)[0][:, 1:1 + TOKENS]
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randint(len(pixels), (batch,), generator=gen)
        tokens = projection(encoder(pixel_values=pixels[index]).image_embeds)
        loss = F.mse_loss(tokens, target[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"align step {step} loss {loss.item():.4f} (target variance {target.var().item():.4f})")


def train(pipe, encoder, data, steps, batch, lr, minutes, log, seed=0):
    latents, pixels, ids = data
    unet = pipe.unet
    unet.requires_grad_(False)
    params = trainable(unet, encoder)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    warmup = max(steps // 50, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    scheduler = DDPMScheduler(**{k: v for k, v in _sd_scheduler_config().items() if k != "set_alpha_to_one"})
    alphas = scheduler.alphas_cumprod
    empty = pipe.tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        empty_embeds = pipe.text_encoder(empty)[0]
    gen = torch.Generator().manual_seed(seed)
    deadline = time.perf_counter() + 60 * minutes
    losses, step = [], 0
    for step in range(steps):
        if time.perf_counter() > deadline:
            log(f"ip: stopped at step {step} of {steps} (--minutes {minutes})")
            break
        index = torch.randint(len(latents), (batch,), generator=gen)
        x0 = latents[index]
        with torch.no_grad():
            text = pipe.text_encoder(ids[index])[0]
        drop_text = torch.rand(batch, generator=gen) < 0.05
        text = torch.where(drop_text[:, None, None], empty_embeds.expand_as(text), text)
        embeds = encoder(pixel_values=pixels[index]).image_embeds
        drop_image = (torch.rand(batch, generator=gen) < 0.05)[:, None].float()
        embeds = embeds * (1 - drop_image)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a, s = alphas[t].sqrt()[:, None, None, None], (1 - alphas[t]).sqrt()[:, None, None, None]
        pred = unet(a * x0 + s * noise, t, text, added_cond_kwargs={"image_embeds": [embeds[:, None]]}).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            log(f"ip step {step} loss {np.mean(losses[-50:]):.4f} ({time.perf_counter() - deadline + 60 * minutes:.0f} s)")
    for p in params:
        p.requires_grad_(False)
    encoder.eval()
    return step


def save(pipe, encoder, out: Path):
    (out / "ip_adapter").mkdir(parents=True, exist_ok=True)
    encoder.to(torch.float16).save_pretrained(out / "image_encoder", safe_serialization=True)
    encoder.to(torch.float32)
    feature_extractor().save_pretrained(out / "feature_extractor")
    save_file(export_state_dict(pipe.unet), str(out / "ip_adapter" / WEIGHT_NAME), metadata={"format": "pt"})


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="src/zeroedit/assets/toy")
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--align-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--minutes", type=float, default=20.0, help="stop training after this long")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", help="a folder with a saved image_encoder/ and ip_adapter/ to train further")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import zeroedit as ze
    out = Path(args.out)
    times, lines = {}, []

    def log(message):
        print(message, flush=True)
        lines.append(message)

    pipe = ze.load("toy")
    start = time.perf_counter()
    targets, references, captions, phrases = make_pairs(args.pairs, 5_000_000 + args.seed)
    with torch.no_grad():
        images = torch.from_numpy(targets).permute(0, 3, 1, 2).float() / 127.5 - 1
        latents = torch.cat([pipe.vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
        latents = latents * pipe.vae.config.scaling_factor
    pixels = feature_extractor()(images=references, return_tensors="pt").pixel_values
    ids = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    phrase_ids = pipe.tokenizer(phrases, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    times["data"] = time.perf_counter() - start
    if args.resume:  # continue from a saved adapter (stage 2 only)
        from safetensors.torch import load_file
        encoder = CLIPVisionModelWithProjection.from_pretrained(Path(args.resume) / "image_encoder", dtype=torch.float32)
        flat = load_file(str(Path(args.resume) / "ip_adapter" / WEIGHT_NAME))
        state = {part: {k[len(part) + 1:]: v.float() for k, v in flat.items() if k.startswith(part + ".")}
                 for part in ("image_proj", "ip_adapter")}
    else:
        encoder = CLIPVisionModelWithProjection(encoder_config())
        state = ip_state_dict(pipe.unet, encoder.config.projection_dim, args.seed)
    pipe.register_modules(image_encoder=encoder, feature_extractor=feature_extractor())
    pipe.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
    if not args.resume:
        start = time.perf_counter()
        align(pipe, encoder.train(), pixels, phrase_ids, args.align_steps, 32, 1e-3, log, args.seed)
        times["align"] = time.perf_counter() - start
    start = time.perf_counter()
    done = train(pipe, encoder.train(), (latents, pixels, ids), args.steps, args.batch, args.lr, args.minutes, log,
                 args.seed)
    times["train"] = time.perf_counter() - start
    save(pipe, encoder, out)
    recipe = {k: v for k, v in vars(args).items() if k != "out"}
    recipe["steps_done"] = done
    recipe["seconds"] = {k: round(v, 1) for k, v in times.items()}
    record = dict(recipe=recipe, log=lines)
    previous = Path(args.resume or "") / "ip_training.json"
    if args.resume and previous.is_file():  # keep the earlier stages' recipe and log
        record["previous"] = json.loads(previous.read_text())
    (out / "ip_training.json").write_text(json.dumps(record, indent=2))
    log(json.dumps(recipe))


if __name__ == "__main__":
    main()
