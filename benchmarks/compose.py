"""compose (TF-ICON) benchmark: UNet evaluations, sequential calls, wall time, peak memory, and the bytes of the
largest stored tensors (recorded q/k, inversion trajectory, materialised attention logits) computed for
SD 2.1-sized self-attention layers at 512².

    PYTHONPATH=src python benchmarks/compose.py            # tiny random-weight model on CPU
    from benchmarks.compose import run; run(pipe, size=512) # any pipeline (the lead's GPU run)
"""
from __future__ import annotations

import numpy as np
from PIL import Image

import zeroedit as ze

# SD 1.x/2.x attn1 layers at 512² (64×64 latent): (tokens, channels, heads) — 5 + 5 + 5 + 1 = 16 layers.
SD_SELF_ATTENTION = ([(64 * 64, 320, 5)] * 5 + [(32 * 32, 640, 10)] * 5 + [(16 * 16, 1280, 20)] * 5
                     + [(8 * 8, 1280, 20)])


def sd_store_bytes(steps: int = 20, tau_a: float = 0.4, objects: int = 1, bytes_per_element: int = 2) -> dict:
    """Bytes compose holds for SD at 512²:
    - qk_store: q and k of background + references, every attn1 layer, for the injection times the inversion
      evaluates (k_a − 1: the first sampling time is never evaluated by the inversion and rides in-batch);
    - trajectory: the whole inversion trajectory (float32 latents, steps + 1 levels);
    - logits_64: the largest materialised logits tensor (a 64² layer, batch [uncond, cond] per head; on the
      first step the batch also holds background and references), plus the background/reference logits
      built from the store for the composite."""
    k_a = max(int(tau_a * steps + 1 - 2), 0)
    rows = 1 + objects
    qk = sum(2 * tokens * channels for tokens, channels, _ in SD_SELF_ATTENTION) * rows * bytes_per_element
    tokens, _, heads = SD_SELF_ATTENTION[0]
    first_batch = rows + 2
    logits = first_batch * heads * tokens * tokens * bytes_per_element
    built = rows * heads * tokens * tokens * bytes_per_element
    trajectory = (steps + 1) * rows * 4 * 64 * 64 * 4
    return dict(injection_calls=k_a, qk_store_bytes=max(k_a - 1, 0) * qk, trajectory_bytes=trajectory,
                logits_64_bytes=logits, composite_inputs_64_bytes=built,
                reference_code_logit_stores_64_bytes=3 * 2 * heads * tokens * tokens * 2)


def _inputs(size: int):
    rng = np.random.default_rng(0)
    background = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    reference = Image.fromarray(rng.integers(0, 255, (size // 2, size // 2, 3), dtype=np.uint8))
    segmentation = np.zeros((size // 2, size // 2), bool)
    segmentation[size // 8: 3 * size // 8, size // 8: 3 * size // 8] = True
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    return background, reference, segmentation, box


def run(pipe, size: int = 128, steps: int = 20, objects: int = 1, repeats: int = 1, **kw) -> dict:
    """Run compose (defaults unless overridden in kw); returns evals, calls, seconds, peak memory and the
    SD-sized byte counts."""
    background, reference, segmentation, box = _inputs(size)
    references = [reference] * objects if objects > 1 else reference
    masks = [segmentation] * objects if objects > 1 else segmentation
    boxes = [box] * objects if objects > 1 else box
    seconds = []
    for _ in range(repeats):
        out = ze.compose(pipe, background, references, region=boxes, reference_mask=masks,
                         prompt="a pencil drawing of an object", steps=steps, seed=0, output_type="latent", **kw)
        seconds.append(out.stats.seconds)
    return dict(size=size, steps=steps, objects=objects, unet_evals=out.stats.unet_evals,
                unet_calls=out.stats.unet_calls, seconds=min(seconds), peak_memory_bytes=out.stats.peak_memory_bytes,
                sd_512=sd_store_bytes(steps, kw.get("tau_a", 0.4), objects))


if __name__ == "__main__":
    tiny = ze.load("tiny")
    for key, value in run(tiny).items():
        if isinstance(value, dict):
            for name, number in value.items():
                print(f"sd_512.{name}: {number / 2**20:.1f} MiB" if name.endswith("bytes") else f"sd_512.{name}: {number}")
        else:
            print(f"{key}: {value}")
