"""Train the toy flow model ("toy-flow"): an SD3-layout rectified-flow transformer on the toy world.

    python scripts/train_toy_flow.py --out src/zeroedit/assets/toy_flow --threads 1 --minutes 80 --steps 4000
    python scripts/train_toy_flow.py --resume WORK/checkpoint.pt --minutes 30       # continue a stopped run

The same data as the toy UNet (scripts/train_toy.py's `make_dataset`: rendered scenes and their captions); the
toy model's VAE and CLIP text encoder are reused frozen (src/zeroedit/toy/flow.py says how they become SD3's
components), so latents and text embeddings are computed once and cached. Only the transformer trains, with
SD3's objective (Esser et al. 2024, "Scaling Rectified Flow Transformers", §2–3):
x_σ = (1 − σ)·x₀ + σ·ε, the model predicts v = ε − x₀ (MSE), σ drawn logit-normal, σ = sigmoid(n), n ~ N(0, 1)
(their "rf/lognorm(0.00, 1.00)", the best sampler of their Table 1); timestep = 1000·σ as diffusers'
FlowMatchEulerDiscreteScheduler; 10 % caption dropout to "" for classifier-free guidance; AdamW, warm-up then
cosine decay over --steps, EMA of the weights (saved). Checkpoints (weights, EMA, optimiser, step) every
--checkpoint-minutes, so a stopped run keeps its weights; every step's randomness is seeded by (seed, step),
so a resumed run draws what the uninterrupted one would.

Without T5, SD3's pipeline appends `max_sequence_length` (default 256) identical zero tokens to the text. In
training they are ONE token whose attention logit gets + log(m) (exactly m identical keys and values: the same
softmax), m = 256 for 3/4 of the samples and log-uniform in [1, 1024] for the rest (so a caller's other
max_sequence_length changes little) — 2.4× fewer tokens per step at patch size 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "scripts")]

from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

from zeroedit.toy.flow import caption_accuracy, flow_scheduler, transformer_config, with_projection  # noqa: E402

TOY = ROOT / "src" / "zeroedit" / "assets" / "toy"
T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length
HELD_OUT = 512  # the last images of the dataset: never trained on, for the validation loss


class MultiplicityJointAttention:
    """SD3's joint attention (diffusers' JointAttnProcessor2_0) where the last text token stands for `log_m.exp()`
    identical tokens: its logit gets + log m (softmax over m equal keys = one key with weight m)."""

    log_m: torch.Tensor | None = None  # (batch,) set before each forward

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b, n = hidden_states.shape[:2]

        def heads(x, norm):
            x = x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
            return norm(x) if norm is not None else x

        q = heads(attn.to_q(hidden_states), attn.norm_q)
        k = heads(attn.to_k(hidden_states), attn.norm_k)
        v = heads(attn.to_v(hidden_states), None)
        q = torch.cat([q, heads(attn.add_q_proj(encoder_hidden_states), attn.norm_added_q)], 2)
        k = torch.cat([k, heads(attn.add_k_proj(encoder_hidden_states), attn.norm_added_k)], 2)
        v = torch.cat([v, heads(attn.add_v_proj(encoder_hidden_states), None)], 2)
        bias = torch.zeros(b, 1, 1, k.shape[2], device=q.device, dtype=q.dtype)
        bias[:, 0, 0, -1] = self.log_m.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[3])
        hidden_states, encoder_hidden_states = out[:, :n], out[:, n:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return attn.to_out[1](attn.to_out[0](hidden_states)), encoder_hidden_states


def load_frozen(toy: Path):
    vae = AutoencoderKL.from_pretrained(toy / "vae", dtype=torch.float32, use_safetensors=True).eval()
    vae.register_to_config(shift_factor=0.0)
    text_encoder = with_projection(CLIPTextModel.from_pretrained(toy / "text_encoder", dtype=torch.float32,
                                                                 use_safetensors=True))
    tokenizer = CLIPTokenizer.from_pretrained(toy / "tokenizer")
    return vae, text_encoder, tokenizer


@torch.no_grad()
def encode_text(text_encoder, tokenizer, captions: list[str], batch: int = 256):
    """SD3's CLIP conditioning for one encoder used twice: (penultimate states ⊕ same, pooled ⊕ same)."""
    states, pooled = [], []
    for i in range(0, len(captions), batch):
        ids = tokenizer(captions[i:i + batch], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        out = text_encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled.append(out.text_embeds)
    states, pooled = torch.cat(states), torch.cat(pooled)
    return torch.cat([states, states], -1), torch.cat([pooled, pooled], -1)


def prepare_data(args, vae, text_encoder, tokenizer, log) -> dict:
    """Latents (scaled) of args.images rendered scenes, their caption index and each unique caption's
    embeddings (index 0 = the empty caption); cached in args.cache."""
    cache = Path(args.cache or f"/tmp/toy_flow_data_{args.images}_{args.seed}.pt")
    if cache.exists():
        log(f"data: cached {cache}")
        return torch.load(cache, weights_only=True)
    from train_toy import make_dataset
    start = time.perf_counter()
    images, captions = make_dataset(args.images, args.seed)
    rendered = time.perf_counter() - start
    vae.to(args.device)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i:i + 256].to(args.device)).latent_dist.mean.cpu()
                             for i in range(0, len(images), 256)])
    vae.to("cpu")
    latents = latents * vae.config.scaling_factor  # shift_factor 0
    unique = [""] + sorted(set(captions))
    position = {c: i for i, c in enumerate(unique)}
    states, pooled = encode_text(text_encoder, tokenizer, unique)
    data = dict(latents=latents, caption=torch.tensor([position[c] for c in captions]), states=states, pooled=pooled)
    torch.save(data, cache)
    log(f"data: {len(images)} images rendered in {rendered:.0f} s, encoded in {time.perf_counter() - start - rendered:.0f} s; "
        f"{len(unique) - 1} distinct captions; latent std {latents.std():.3f}")
    return data


def flow_batch(data: dict, batch: int, step: int, seed: int, dropout: float = 0.1, index=None):
    """One training batch of SD3's rectified-flow objective, drawn from (seed, step) alone (images `index`
    if given, else random ones outside the held-out set)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if index is None:
        index = torch.randint(len(data["latents"]) - HELD_OUT, (batch,), generator=g)
    x0 = data["latents"][index]
    caption = torch.where(torch.rand(batch, generator=g) < dropout, 0, data["caption"][index])
    noise = torch.randn(x0.shape, generator=g)
    sigma = torch.sigmoid(torch.randn(batch, generator=g))  # logit-normal(0, 1)
    log_m = torch.where(torch.rand(batch, generator=g) < 0.75, math.log(T5_TOKENS),
                        torch.rand(batch, generator=g) * math.log(1024))
    s = sigma[:, None, None, None]
    return dict(x=(1 - s) * x0 + s * noise, target=noise - x0, timestep=1000 * sigma,
                states=data["states"][caption], pooled=data["pooled"][caption], log_m=log_m)


@torch.no_grad()
def validation_loss(model, processor, data: dict, device, batch: int = 64) -> float:
    """The objective on the HELD_OUT images with fixed noise, σ and no caption dropout (comparable across runs)."""
    n = len(data["latents"])
    losses = []
    for start in range(n - HELD_OUT, n, batch):
        b = {k: v.to(device) for k, v in flow_batch(data, batch, -1 - start, 12345, dropout=0.0,
                                                     index=torch.arange(start, min(start + batch, n))).items()}
        processor.log_m = torch.full_like(b["log_m"], math.log(T5_TOKENS))
        zero = torch.zeros(len(b["x"]), 1, b["states"].shape[-1], device=device)
        v = model(hidden_states=b["x"], encoder_hidden_states=torch.cat([b["states"], zero], 1),
                  pooled_projections=b["pooled"], timestep=b["timestep"]).sample
        losses.append(F.mse_loss(v, b["target"]).item() * len(v))
    return sum(losses) / HELD_OUT


def lr_at(step: int, args, seconds: float = 0.0) -> float:
    """Linear warm-up (2 % of --steps), then cosine decay to 0 over the training's progress: the larger of
    step / --steps and (with --budget-minutes) training seconds so far / the budget, so a time-bounded CPU run
    still anneals."""
    warmup = max(args.steps // 50, 1)
    progress = step / args.steps
    if args.budget_minutes:
        progress = max(progress, seconds / (60 * args.budget_minutes))
    return args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def save_checkpoint(path: Path, state: dict):
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(args, data, log, resume: dict | None):
    torch.manual_seed(args.seed)
    model = SD3Transformer2DModel(**transformer_config(args.patch, args.width, args.layers, args.head_dim))
    ema = SD3Transformer2DModel(**transformer_config(args.patch, args.width, args.layers, args.head_dim))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    step, before = 0, 0.0
    if resume:
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        opt.load_state_dict(resume["optimizer"])
        step, before = resume["step"], resume.get("seconds", 0.0)
        log(f"resumed at step {step} ({before / 60:.1f} min trained)")
    else:
        ema.load_state_dict(model.state_dict())
    log(f"transformer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, patch {args.patch}")
    model.to(args.device).train()
    ema.to(args.device).requires_grad_(False)
    processor = MultiplicityJointAttention()
    model.set_attn_processor(processor)
    device = args.device
    zero_token = torch.zeros(args.batch, 1, data["states"].shape[-1], device=device)
    start = last_save = time.perf_counter()
    losses = []
    work = Path(args.work)

    def checkpoint():
        save_checkpoint(work / "checkpoint.pt", dict(model=model.state_dict(), ema=ema.state_dict(),
                                                     optimizer=opt.state_dict(), step=step, args=vars(args),
                                                     seconds=before + time.perf_counter() - start))

    while step < args.steps:
        if time.perf_counter() - start > 60 * args.minutes:
            log(f"stopped at step {step} of {args.steps} (--minutes {args.minutes})")
            break
        if args.budget_minutes and before + time.perf_counter() - start > 60 * args.budget_minutes:
            log(f"stopped at step {step} of {args.steps} (--budget-minutes {args.budget_minutes} in all)")
            break
        b = {k: v.to(device) for k, v in flow_batch(data, args.batch, step, args.seed).items()}
        processor.log_m = b["log_m"]
        lr = lr_at(step, args, before + time.perf_counter() - start)
        for group in opt.param_groups:
            group["lr"] = lr
        v = model(hidden_states=b["x"], encoder_hidden_states=torch.cat([b["states"], zero_token], 1),
                  pooled_projections=b["pooled"], timestep=b["timestep"]).sample
        loss = F.mse_loss(v, b["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
        step += 1
        if step % args.log_every == 0 or step == 1:
            elapsed = time.perf_counter() - start
            log(f"step {step} loss {np.mean(losses[-args.log_every:]):.4f} lr {lr:.2e} "
                f"{elapsed / 60:.1f} min ({elapsed / max(len(losses), 1):.2f} s/step)")
        if time.perf_counter() - last_save > 60 * args.checkpoint_minutes:
            checkpoint()
            last_save = time.perf_counter()
    checkpoint()
    ema.set_attn_processor(processor)
    log(f"validation loss (held-out {HELD_OUT}): model {validation_loss(model.eval(), processor, data, device):.4f}, "
        f"EMA {validation_loss(ema, processor, data, device):.4f}")
    from diffusers.models.attention_processor import JointAttnProcessor2_0
    model.set_attn_processor(JointAttnProcessor2_0())
    ema.set_attn_processor(JointAttnProcessor2_0())
    return (ema if args.ema > 0 else model).eval(), step, before + time.perf_counter() - start


def build_pipeline(transformer, vae, text_encoder, tokenizer):
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=flow_scheduler(), vae=vae,
                                    text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder,
                                    tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "src" / "zeroedit" / "assets" / "toy_flow"))
    parser.add_argument("--toy", default=str(TOY), help="the toy model folder (VAE, text encoder, tokenizer)")
    parser.add_argument("--work", default="/tmp/toy_flow_run", help="checkpoints and log")
    parser.add_argument("--cache", default=None, help="cached latents + text embeddings (.pt)")
    parser.add_argument("--resume", default=None, help="a checkpoint.pt to continue from (its recipe is reused)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=4000, help="planned steps (the LR schedule's length)")
    parser.add_argument("--minutes", type=float, default=80.0, help="stop training after this long (this run)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="training time of all runs together: the LR schedule anneals by it and training stops")
    parser.add_argument("--checkpoint-minutes", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights (0: no EMA)")
    parser.add_argument("--patch", type=int, default=2, choices=(1, 2))
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval", type=int, default=64, help="held-out captions for the accuracy report (0: none)")
    parser.add_argument("--eval-steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=4.0)
    args = parser.parse_args(argv)
    resume = None
    if args.resume:
        resume = torch.load(args.resume, weights_only=True)
        keep = {k: getattr(args, k) for k in ("resume", "minutes", "threads", "device", "out", "work", "eval",
                                              "eval_steps", "guidance", "log_every", "checkpoint_minutes")}
        for k in ("steps", "budget_minutes"):  # the schedule may be re-planned when resuming, if given
            if f"--{k.replace('_', '-')}" in (argv if argv is not None else sys.argv):
                keep[k] = getattr(args, k)
        args = argparse.Namespace(**{**resume["args"], **keep})
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(message):
        print(message, flush=True)
        lines.append(message)

    vae, text_encoder, tokenizer = load_frozen(Path(args.toy))
    data = prepare_data(args, vae, text_encoder, tokenizer, log)
    transformer, step, seconds = train(args, data, log, resume)
    pipe = build_pipeline(transformer.to("cpu"), vae, text_encoder, tokenizer)
    pipe.set_progress_bar_config(disable=True)
    quality = None
    if args.eval:
        start = time.perf_counter()
        quality = caption_accuracy(pipe.to(args.device), n=args.eval, steps=args.eval_steps, guidance=args.guidance)
        log(f"caption-following accuracy ({args.eval} captions, {args.eval_steps} steps, guidance {args.guidance}): "
            f"{quality} in {time.perf_counter() - start:.0f} s")
    out = Path(args.out)
    pipe.to("cpu", torch.float16).save_pretrained(out, safe_serialization=True)
    previous = json.loads((out / "training.json").read_text()) if resume and (out / "training.json").exists() else None
    recipe = {k: v for k, v in vars(args).items() if k not in ("out", "work", "cache", "toy")}
    record = dict(recipe=recipe, steps_done=step, train_seconds=round(seconds, 1), quality=quality, log=lines)
    if previous:
        record["previous"] = previous
    (out / "training.json").write_text(json.dumps(record, indent=2))
    log(f"saved {out} (step {step}, {seconds / 60:.1f} min this run)")


if __name__ == "__main__":
    main()
