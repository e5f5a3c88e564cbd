"""edit (pix2pix-zero) on FLUX: memory and time of the cross-attention-guidance gradient call (issue 17).

    python benchmarks/edit_flow.py                 # CPU: a FLUX-layout random transformer, 512² (32² tokens)
    python benchmarks/edit_flow.py --size 256

One gradient call of pix2pix-zero's guidance ([reference, edit pair] = batch 3, loss on the image→text
probabilities, backward to the latents) under each memory setting:
- which blocks are guided: every block (double + single), the double-stream blocks (edit's default), or the
  first double block (`guidance_blocks=1`);
- whether the forward runs to the end or stops after the last guided block (edit always stops; the "full
  forward" rows show what stopping saves);
- diffusers' gradient checkpointing on or off (`checkpointing=True`).
Reported: seconds per call (median of `repeats`), peak bytes of live saved activations (tensors autograd keeps
for the backward, parameters excluded, each storage once; a device-independent measure of activation memory)
and, on CUDA, torch.cuda.max_memory_allocated during the call. Then the end-to-end `ze.edit` (steps, 512²) in
the three settings a user picks. `run(pipe, size=512, repeats=3) -> dict` takes any FluxPipeline (a FLUX-sized
random-weight one on a GPU).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

import zeroedit as ze  # noqa: E402
from zeroedit.backbones import Cond, FlowBackbone  # noqa: E402
from zeroedit.control import Controller, joint_attention_layers  # noqa: E402
from zeroedit.methods.pix2pix_zero_flow import ImageToTextGuidance, StopAfter, _Stop, gradient_checkpointing  # noqa: E402


class LiveActivations:
    """saved_tensors_hooks that track the peak bytes of live saved tensors (unique storages, no parameters)."""

    def __init__(self, model):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.live, self.peak, self.count = 0, 0, {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.params or tensor.device.type == "meta":
            return tensor
        holder = _Holder(tensor)
        if self.count.get(ptr, 0) == 0:
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.count[ptr] = self.count.get(ptr, 0) + 1
        weakref.finalize(holder, self._release, ptr, storage.nbytes())
        return holder

    def _release(self, ptr, nbytes):
        self.count[ptr] -= 1
        if self.count[ptr] == 0:
            self.live -= nbytes

    @staticmethod
    def unpack(packed):
        return packed.tensor if isinstance(packed, _Holder) else packed


class _Holder:
    def __init__(self, tensor):
        self.tensor = tensor


SETTINGS = {  # name: (guided blocks, stop after the last guided block, checkpointing)
    "all blocks, full forward": ("all", False, False),
    "all blocks, full forward, checkpointing": ("all", False, True),
    "double blocks, full forward": ("double", False, False),
    "double blocks, stop (edit default)": ("double", True, False),
    "double blocks, stop, checkpointing": ("double", True, True),
    "first double block, stop (guidance_blocks=1)": ("first", True, False),
    "first double block, stop, checkpointing": ("first", True, True),
}


def _layers(model, which: str) -> list[str]:
    double = joint_attention_layers(model, "double")
    if which == "all":
        return double + joint_attention_layers(model, "single")
    return double if which == "double" else double[:1]


def gradient_call(backbone, x, cond, which: str, stop: bool, checkpointing: bool) -> dict:
    """One guided gradient call; returns seconds, live-activation peak bytes, CUDA peak bytes."""
    model = backbone.transformer
    layers = _layers(model, which)
    guide = ImageToTextGuidance(layers)
    controller = Controller()
    controller.add(guide)
    stopper = controller.add(StopAfter(layers[-1].rsplit(".", 1)[0])) if stop else None
    tracker = LiveActivations(model)
    pair = x.repeat(2, 1, 1, 1).requires_grad_(True)
    cuda = backbone.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with controller.installed(model), torch.enable_grad(), gradient_checkpointing(model, checkpointing), \
            torch.autograd.graph.saved_tensors_hooks(tracker.pack, tracker.unpack):
        guide.enabled, guide.loss = True, None
        if stopper is not None:
            stopper.armed = True
        controller.set_call(0, 0.5, [("ref", 1), ("edit", 2)], backbone.token_grid(x.shape[-2:]))
        try:
            backbone.transformer_call(torch.cat([x, pair]), 0.5, cond, 1.0)
        except _Stop:
            pass
        grad, = torch.autograd.grad(guide.loss, pair)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base if cuda else None
    return dict(seconds=seconds, activations=tracker.peak, cuda_peak=peak, grad_norm=grad.norm().item())


def run(pipe, size: int = 512, repeats: int = 3, edit_steps: int = 4) -> dict:
    backbone = FlowBackbone(pipe)
    side = size // backbone.vae_scale
    x = torch.randn(1, pipe.transformer.config.in_channels // 4, side, side, generator=torch.Generator().manual_seed(0))
    x = x.to(backbone.device)
    text, edited = backbone.encode_prompt("a photo of a cat"), backbone.encode_prompt("a photo of a dog")
    cond = Cond.cat([text, text, edited])
    rows = {}
    for name, (which, stop, checkpointing) in SETTINGS.items():
        runs = [gradient_call(backbone, x, cond, which, stop, checkpointing) for _ in range(repeats)]
        rows[name] = dict(seconds=statistics.median(r["seconds"] for r in runs), activations=runs[0]["activations"],
                          cuda_peak=runs[0]["cuda_peak"], grad_norm=runs[0]["grad_norm"])
    image = torch.rand(3, size, size)  # floats in [0, 1]
    ends = {}
    for name, kwargs in {"default": {}, "checkpointing=True": dict(checkpointing=True),
                         "guidance_blocks=1": dict(guidance_blocks=1)}.items():
        out = ze.edit(pipe, image, "cat", "dog", steps=edit_steps, reg_steps=0, seed=0, output_type="latent", **kwargs)
        ends[name] = dict(seconds=out.stats.seconds, calls=out.stats.unet_calls, peak=out.stats.peak_memory_bytes)
    return dict(size=size, gradient_call=rows, edit=ends)


def bench_flux(double: int = 4, single: int = 8, heads: int = 4, head_dim: int = 16):
    """tiny-flux's pipeline with a deeper random FLUX-layout transformer (FLUX.1's 19:38 double:single ratio)."""
    from diffusers import FluxTransformer2DModel
    pipe = ze.load("tiny-flux")
    torch.manual_seed(0)
    pipe.register_modules(transformer=FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=double, num_single_layers=single, attention_head_dim=head_dim,
        num_attention_heads=heads, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8)))
    return pipe


def markdown(results: dict) -> str:
    lines = [f"**guidance gradient call at {results['size']}²** (batch 3: reference + edit pair)\n",
             "| setting | seconds | live activations (MB) | CUDA peak (MB) | grad norm |", "|---|---|---|---|---|"]
    for name, r in results["gradient_call"].items():
        cuda = "–" if r["cuda_peak"] is None else f"{r['cuda_peak'] / 2**20:.0f}"
        lines.append(f"| {name} | {r['seconds']:.3f} | {r['activations'] / 2**20:.1f} | {cuda} | {r['grad_norm']:.3g} |")
    lines += ["", "| ze.edit | seconds | calls | peak memory (MB; CPU: process max RSS) |", "|---|---|---|---|"]
    for name, r in results["edit"].items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['calls']} | {r['peak'] / 2**20:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results = run(bench_flux(), args.size, args.repeats)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
