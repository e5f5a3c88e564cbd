"""Figures of the memory plan (zeroedit.memory, issue 24).

    python benchmarks/memory.py              # plan tables: FLUX.1-dev, SD3.5-large, SDXL at native size, every method,
                                             #   80 / 24 / 16 GB, and the seconds a plan takes (configs only)
    python benchmarks/memory.py --validate   # the per-call activation formulas vs the live tensor bytes of real
                                             #   forwards on CPU (zeroedit.memory.LiveBytes), several configs and sizes
    python benchmarks/memory.py --gpu        # on CUDA: every method on FLUX.1-dev-sized random weights, resident and
                                             #   under the 24 GB and 16 GB plans: measured peak vs predicted, seconds
    python benchmarks/memory.py --tiny       # the --gpu run on CPU with tiny-flux at 128² (checks the script; the
                                             #   measured figure is then the live tensor bytes, weights excluded)

--gpu builds the whole FLUX.1-dev pipeline (transformer, T5-XXL, CLIP-L, VAE: the published configs in
src/zeroedit/assets/architectures) with random bf16 weights on the CPU, then per run applies the plan (or moves it to the
GPU for the resident run). Tokenizers are zeroedit's offline character tokenizers (T5 at 512 tokens). personalize gets
a random FLUX IP-Adapter of the right widths (zeroedit.tiny_ip) with a tiny image encoder.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

import zeroedit as ze  # noqa: E402
from zeroedit import memory  # noqa: E402
from zeroedit.errors import ParameterError  # noqa: E402

MODELS = ("FLUX.1-dev", "SD3.5-large", "SDXL-base")
BUDGETS = ("80GB", "24GB", "16GB")


# ----------------------------------------------------------------------------------------- tables
def cell(model, method, budget) -> str:
    try:
        plan = memory.plan(model, method, budget=budget)
    except ParameterError as error:
        if getattr(error, "plan", None) is None:  # the method does not run on this family
            return "— (" + str(error).split(" (")[0].replace(f"{method} ", "") + ")"
        smallest = error.plan.chosen
        return f"does not fit: needs {memory.gb(smallest.peak + memory.RESERVE)} ({smallest.measure.name})"
    return f"{plan.measure.name}: {memory.gb(plan.peak)}, {plan.slowdown:.2f}x"


def tables():
    for name in MODELS:
        start = time.perf_counter()
        pipe = memory.meta_pipeline(name)
        built = time.perf_counter() - start
        start = time.perf_counter()
        rows = {method: [cell(pipe, method, budget) for budget in BUDGETS] for method in memory.METHODS}
        planned = (time.perf_counter() - start) / (len(BUDGETS) * len(memory.METHODS))
        weights = sum(memory.module_bytes(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module))
        side = memory.plan(pipe, "invert", budget="1TB").size[0]
        print(f"\n### {name} at {side}², {memory.gb(weights)} of weights (configs only: built on the meta device in "
              f"{built:.1f} s, {planned:.2f} s per plan)\n")
        print(f"| method | {' | '.join(BUDGETS)} |\n|---|---|---|---|")
        for method, cells in rows.items():
            print(f"| {method} | {' | '.join(cells)} |")


# ----------------------------------------------------------------------------------------- --validate
def _live(run) -> int:
    with torch.no_grad(), memory.LiveBytes() as live:
        run()
    return live.peak


def _flux(heads, blocks=2, single=2):
    from diffusers import FluxTransformer2DModel
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=blocks, num_single_layers=single,
                                  attention_head_dim=32, num_attention_heads=heads, joint_attention_dim=64,
                                  pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(8, 12, 12))


def _flux_inputs(batch, side, text, dtype, grad=False):
    n = (side // 2) ** 2
    hidden = torch.randn(batch, n, 64, dtype=dtype, requires_grad=grad)
    return dict(hidden_states=hidden, encoder_hidden_states=torch.randn(batch, text, 64, dtype=dtype),
                pooled_projections=torch.randn(batch, 32, dtype=dtype), timestep=torch.ones(batch, dtype=dtype),
                img_ids=torch.zeros(n, 3, dtype=dtype), txt_ids=torch.zeros(text, 3, dtype=dtype),
                guidance=torch.ones(batch), return_dict=False)


def _sd3(heads, qk=None, dual=()):
    from diffusers import SD3Transformer2DModel
    return SD3Transformer2DModel(sample_size=64, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                 attention_head_dim=32, num_attention_heads=heads, joint_attention_dim=64,
                                 caption_projection_dim=32 * heads, pooled_projection_dim=64, pos_embed_max_size=64,
                                 qk_norm=qk, dual_attention_layers=dual)


UNETS = {
    "SD-like": dict(block_out_channels=(32, 64, 128, 128), down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=8),
    "SD2-like": dict(block_out_channels=(64, 128, 128, 128), down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=(2, 4, 8, 8),
                     use_linear_projection=True),
    "SDXL-like": dict(block_out_channels=(32, 64, 128), down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
                      up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",), attention_head_dim=(2, 4, 8),
                      transformer_layers_per_block=(1, 2, 3), use_linear_projection=True,
                      addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=8 * 6 + 32),
}


def _row(label, measured, predicted):
    print(f"| {label} | {measured / 1e6:.2f} | {predicted / 1e6:.2f} | {measured / predicted:.3f} |")
    return measured / predicted


def validate():
    """The formulas of zeroedit.memory against LiveBytes of real forwards (fp32 and bf16 on CPU)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    torch.manual_seed(0)
    ratios = []
    print("| forward (no grad unless said) | measured MB | predicted MB | ratio |\n|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        s, tag = (4 if dtype == torch.float32 else 2), str(dtype).replace("torch.", "")
        for heads in (4, 8):
            model = _flux(heads).to(dtype)
            for side, batch in ((32, 1), (64, 2)):
                g = memory.Geometry((side, side), (8 * side, 8 * side), s, s, 64)
                measured = _live(lambda: model(**_flux_inputs(batch, side, 64, dtype)))
                ratios.append(_row(f"FLUX {heads}x32 wide, {8 * side}², batch {batch}, {tag}", measured,
                                   memory.flux_call(model, g, batch)))
        for heads, qk, dual in ((4, None, ()), (8, "rms_norm", ()), (4, "rms_norm", (0,))):
            model = _sd3(heads, qk, dual).to(dtype)
            for side, batch in ((32, 1), (64, 2)):
                g = memory.Geometry((side, side), (8 * side, 8 * side), s, s, 96)
                inputs = dict(hidden_states=torch.randn(batch, 16, side, side, dtype=dtype),
                              encoder_hidden_states=torch.randn(batch, 96, 64, dtype=dtype),
                              pooled_projections=torch.randn(batch, 64, dtype=dtype), timestep=torch.ones(batch) * 500,
                              return_dict=False)
                measured = _live(lambda: model(**inputs))
                label = f"SD3 {heads}x32{' qk-norm' if qk else ''}{' dual' if dual else ''}, {8 * side}², batch {batch}, {tag}"
                ratios.append(_row(label, measured, memory.sd3_call(model, g, batch)))
        for name, config in UNETS.items():
            model = UNet2DConditionModel(**config, cross_attention_dim=64, layers_per_block=2, norm_num_groups=8,
                                         sample_size=32).to(dtype)
            for side, batch in ((32, 1), (64, 2)):
                g = memory.Geometry((side, side), (8 * side, 8 * side), s, s, 77)
                added = dict(text_embeds=torch.randn(batch, 32, dtype=dtype), time_ids=torch.ones(batch, 6, dtype=dtype))
                measured = _live(lambda: model(torch.randn(batch, 4, side, side, dtype=dtype), torch.ones(batch) * 500,
                                               torch.randn(batch, 77, 64, dtype=dtype), return_dict=False,
                                               added_cond_kwargs=added if "SDXL" in name else None))
                ratios.append(_row(f"UNet {name}, {8 * side}², batch {batch}, {tag}", measured,
                                   memory.unet_call(model, g, batch)))
        vae = AutoencoderKL(block_out_channels=(32, 64, 128, 128), latent_channels=16, layers_per_block=2,
                            norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4).to(dtype)
        for side in (256, 512):
            measured = _live(lambda: vae.decode(torch.randn(1, 16, side // 8, side // 8, dtype=dtype)))
            ratios.append(_row(f"VAE decode 32/64/128/128, {side}², {tag}", measured, side * side * 3 * 64 * s))
            measured = _live(lambda: vae.encode(torch.randn(1, 3, side, side, dtype=dtype)))
            ratios.append(_row(f"VAE encode 32/64/128/128, {side}², {tag}", measured, side * side * 5 * 32 * s))
    ratios += validate_gradient_calls()
    print(f"\nratios measured / predicted: min {min(ratios):.3f}, max {max(ratios):.3f} over {len(ratios)} cases")


def validate_gradient_calls() -> list[float]:
    """edit's gradient call: the flow method's own rules (guidance maps of every double block, forward stopped after
    the last) and the UNet's (cross-attention maps of every attn2 layer), forward + backward under LiveBytes."""
    from diffusers import UNet2DConditionModel

    from zeroedit.control import Controller, attention_layers, joint_attention_layers
    from zeroedit.methods.pix2pix_zero import CrossAttentionGuidance
    from zeroedit.methods.pix2pix_zero_flow import ImageToTextGuidance, StopAfter, _Stop, gradient_checkpointing
    ratios = []
    for dtype in (torch.float32, torch.bfloat16):
        s, tag = (4 if dtype == torch.float32 else 2), str(dtype).replace("torch.", "")
        model = _flux(4, blocks=3).to(dtype)
        layers = joint_attention_layers(model, "double")
        for side, checkpointing in ((32, False), (64, False), (32, True), (64, True)):
            guide, stop = ImageToTextGuidance(layers), StopAfter(layers[-1].rsplit(".", 1)[0])
            controller = Controller()
            controller.add(guide)
            controller.add(stop)
            inputs = _flux_inputs(3, side, 64, dtype, grad=True)

            def run():
                with torch.enable_grad(), controller.installed(model), gradient_checkpointing(model, checkpointing):
                    controller.set_call(0, 0.5, [("ref", 1), ("edit", 2)], (side // 2, side // 2))
                    guide.enabled, stop.armed = True, True
                    try:
                        model(**inputs)
                    except _Stop:
                        pass
                    torch.autograd.grad(guide.loss, inputs["hidden_states"])
            g = memory.Geometry((side, side), (8 * side, 8 * side), s, s, 64)
            predicted = memory.transformer_grad(model, g, 3, len(layers), checkpointing)
            ratios.append(_row(f"FLUX edit gradient call, 3 double blocks guided{', checkpointing' if checkpointing else ''}"
                               f", {8 * side}², batch 3, {tag}", _live(run), predicted))
        model = _sd3(4).to(dtype)
        layers = joint_attention_layers(model, "double")
        for side in (32, 64):
            guide, stop = ImageToTextGuidance(layers), StopAfter(layers[-1].rsplit(".", 1)[0])
            controller = Controller()
            controller.add(guide)
            controller.add(stop)
            hidden = torch.randn(3, 16, side, side, dtype=dtype, requires_grad=True)
            inputs = dict(hidden_states=hidden, encoder_hidden_states=torch.randn(3, 96, 64, dtype=dtype),
                          pooled_projections=torch.randn(3, 64, dtype=dtype), timestep=torch.ones(3) * 500,
                          return_dict=False)

            def run():
                with torch.enable_grad(), controller.installed(model):
                    controller.set_call(0, 500, [("ref", 1), ("edit", 2)], (side // 2, side // 2))
                    guide.enabled, stop.armed = True, True
                    try:
                        model(**inputs)
                    except _Stop:
                        pass
                    torch.autograd.grad(guide.loss, hidden)
            g = memory.Geometry((side, side), (8 * side, 8 * side), s, s, 96)
            ratios.append(_row(f"SD3 edit gradient call, 2 joint blocks guided, {8 * side}², batch 3, {tag}", _live(run),
                               memory.transformer_grad(model, g, 3, len(layers), False)))
        config = UNETS["SD-like"]
        unet = UNet2DConditionModel(**config, cross_attention_dim=64, layers_per_block=2, norm_num_groups=8,
                                    sample_size=32).to(dtype)
        for side in (32, 64):
            rule = CrossAttentionGuidance(attention_layers(unet, "attn2"))
            controller = Controller()
            controller.add(rule)
            x = torch.randn(3, 4, side, side, dtype=dtype, requires_grad=True)

            def run():
                with torch.enable_grad(), controller.installed(unet):
                    controller.set_call(0, 500, [("ref", 1), ("edit", 2)], (side, side))
                    rule.enabled = True
                    unet(x, torch.ones(3) * 500, torch.randn(3, 77, 64, dtype=dtype), return_dict=False)
                    torch.autograd.grad(rule.loss, x)
            g = memory.Geometry((side, side), (8 * side, 8 * side), s, s, 77)
            ratios.append(_row(f"UNet SD-like edit gradient call, {8 * side}², batch 3, {tag}", _live(run),
                               memory.unet_grad(unet, g, 3)))
    return ratios


# ----------------------------------------------------------------------------------------- --gpu / --tiny
def flux_dev_random(device="cpu"):
    """The whole FLUX.1-dev pipeline (published configs) with random bf16 weights on `device` and zeroedit's offline
    tokenizers (T5 at 512 tokens)."""
    from zeroedit.tiny import tiny_tokenizer
    from zeroedit.tiny_flow import tiny_t5_tokenizer
    pipe = memory.meta_pipeline("FLUX.1-dev")
    torch.manual_seed(0)
    for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
        module.to_empty(device=device)
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                if tensor.is_floating_point():
                    tensor.normal_(0, 0.02)
    pipe.register_modules(tokenizer=tiny_tokenizer(), tokenizer_2=tiny_t5_tokenizer(512))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _share(module: torch.nn.Module, host: torch.nn.Module):
    """Give a meta-device `module` the parameters and buffers of `host` (the same architecture) without copying:
    each run gets its own modules (hooks, offload state, quantized weights stay with it) on the same host tensors."""
    tensors = list(host.named_parameters(remove_duplicate=False)) + list(host.named_buffers(remove_duplicate=False))
    for name, tensor in tensors:
        owner, _, leaf = name.rpartition(".")
        sub = module.get_submodule(owner)
        if leaf in sub._parameters:
            sub._parameters[leaf] = torch.nn.Parameter(tensor.detach(), requires_grad=False)
        else:
            sub._buffers[leaf] = tensor


def shared_pipelines(host, configs):
    """make_pipe(method) for gpu_runs: a fresh FluxPipeline built from `configs` on `host`'s weights and tokenizers;
    personalize's gets a random FLUX IP-Adapter of the right widths (compose refuses IP-Adapter processors)."""
    from zeroedit.tiny_ip import add_tiny_flux_ip_adapter

    def make_pipe(method):
        pipe = memory.meta_pipeline(configs, dtype=host.transformer.dtype)
        pipe.register_modules(tokenizer=host.tokenizer, tokenizer_2=host.tokenizer_2)
        for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
            _share(getattr(pipe, name), getattr(host, name))
        if method == "personalize":
            add_tiny_flux_ip_adapter(pipe)
            pipe.to(dtype=host.transformer.dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    return make_pipe


def _inputs(size):
    from PIL import Image
    asset = Path(ze.__file__).parent / "assets"
    picture = Image.open(asset / "cat.png").convert("RGB").resize((size, size))
    reference = Image.open(asset / "reference.png").convert("RGB").resize((size // 2, size // 2))
    return picture, reference


def run_method(pipe, method, size):
    picture, reference = _inputs(size)
    if method == "compose":
        return ze.compose(pipe, picture, reference, region=(size // 4, size // 4, 3 * size // 4, 3 * size // 4),
                          prompt="a cat", seed=0, output_type="latent")
    if method == "translate":
        return ze.translate(pipe, picture, "a bronze cat", source_prompt="a cat", output_type="latent")
    if method == "edit":
        return ze.edit(pipe, picture, source="cat", target="dog", seed=0, output_type="latent")
    if method == "personalize":
        return ze.personalize(pipe, "a cat on a beach", {"cat": reference}, seed=0, size=size, output_type="latent")
    inversion = ze.invert(pipe, picture)
    return ze.reconstruct(pipe, inversion)


def measure(make_pipe, method, size, chosen, device):
    """One run: (measured peak bytes, seconds). On CUDA the peak is max_memory_allocated; on CPU the live tensor
    bytes created during the run (weights excluded)."""
    pipe = make_pipe(method)
    if chosen is None:
        pipe.to(device)
    else:
        memory.apply(pipe, chosen, device)
    start = time.perf_counter()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        run_method(pipe, method, size)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        with memory.LiveBytes() as live:
            run_method(pipe, method, size)
        peak = live.peak
    return peak, time.perf_counter() - start


def gpu_runs(make_pipe, size, device, budgets, methods=memory.METHODS):
    """Every method resident (when its prediction fits the device) and under each budget's plan: measured peak vs
    predicted (on CPU: without the weights, which LiveBytes does not see), seconds vs resident."""
    kind = "cuda" if device == "cuda" else "cpu"
    capacity = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 10**15
    print("\n| method | budget | measures | predicted peak GB | measured GB | measured / predicted | seconds | vs resident |")
    print("|---|---|---|---|---|---|---|---|")
    for method in methods:
        base = make_pipe(method)
        try:
            resident = memory.plan(base, method, size=size, budget=capacity, device=kind)
            resident = dataclasses.replace(resident, chosen=resident.trials[0])
        except ParameterError as error:
            print(f"| {method} | — | does not fit this device either: {str(error).split(': ', 1)[-1][:90]} | | | | | |")
            continue
        rows = [("device", None, resident)]
        for budget in budgets:
            if budget in ("tight", "tighter"):  # just below the resident (tighter: and model offload's) peaks
                skipped = [None] if budget == "tight" else [None, "model"]
                budget = min(t.peak for t in resident.trials if t.measure.offload in skipped
                             and t.measure.quantize is None) + memory.RESERVE - 1
            try:
                rows.append((budget, memory.plan(base, method, size=size, budget=budget, device=kind), None))
            except ParameterError as error:
                print(f"| {method} | {memory.gb(memory.parse_bytes(budget))} | {str(error).split('fit ', 1)[-1][:110]} | | | | | |")
        seconds0 = None
        for label, chosen, plan in rows:
            plan = chosen or plan
            fits_device = plan.chosen.peak + memory.RESERVE <= capacity
            if not fits_device:
                print(f"| {method} | {label} | {plan.measure.name}: predicted {memory.gb(plan.peak)} > device | | | | | |")
                continue
            try:
                peak, seconds = measure(make_pipe, method, size, chosen, device)
            except Exception as error:  # noqa: BLE001 — one failed run is a row, not the end of the table
                print(f"| {method} | {label} | {plan.measure.name} | {plan.peak / 1e9:.3f} | failed: "
                      f"{type(error).__name__}: {str(error)[:120]} | | | |")
                continue
            predicted = plan.peak if device == "cuda" else max(a + s for _, _, a, s in plan.chosen.steps)
            seconds0 = seconds if chosen is None else seconds0
            relative = "" if seconds0 is None else f"{seconds / seconds0:.2f}x"
            label = label if label == "device" else memory.gb(plan.budget)
            print(f"| {method} | {label} | {plan.measure.name} | {predicted / 1e9:.3f} | {peak / 1e9:.3f} | "
                  f"{peak / predicted:.2f} | {seconds:.1f} | {relative} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validate", action="store_true", help="activation formulas vs live tensor bytes (CPU)")
    parser.add_argument("--gpu", action="store_true", help="every method on FLUX.1-dev-sized random weights (CUDA)")
    parser.add_argument("--tiny", action="store_true", help="the --gpu run on CPU with tiny-flux (checks the script)")
    parser.add_argument("--gradients", action="store_true", help="with --validate: only edit's gradient calls")
    parser.add_argument("--methods", nargs="+", default=list(memory.METHODS))
    args = parser.parse_args()
    if args.validate:
        validate() if not args.gradients else print(validate_gradient_calls())
    elif args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny")
        print(f"{torch.cuda.get_device_name()}, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}")
        gpu_runs(shared_pipelines(flux_dev_random("cpu"), "FLUX.1-dev"), 1024, "cuda", ("24GB", "16GB"), args.methods)
    elif args.tiny:
        import tempfile
        host = ze.load("tiny-flux")
        with tempfile.TemporaryDirectory() as configs:
            host.save_pretrained(configs)
            gpu_runs(shared_pipelines(host, configs), 128, "cpu", ("tight",), args.methods)
    else:
        tables()


if __name__ == "__main__":
    main()
