#!/usr/bin/env bash
# Every GPU figure of benchmarks/RESULTS.md in one device call (see the device README for the wheels):
#   bash benchmarks/gpu_all.sh OUTDIR
# speed.py: every method at its defaults (SD-2.1-sized 512² fp16; SD-1.5-sized for edit; SDXL-sized 1024² for
# personalize) and UNet per-call times; peers.py: diffusers' Pix2PixZero and plain generation side by side;
# personalize.py: relevance vs uniform merge at 1024² on SDXL-sized weights; speed.py --compile: eager vs
# torch.compile per call and per method; batch_jobs.py: 16 translate jobs at 512² batched vs one at a time;
# flow_gpu.py: flow invert + translate on FLUX.1-dev-sized random weights, bf16, 1024² (issue 16), and on
# FLUX.2 [klein] 4B-sized and Z-Image-sized ones beside it (issue 25);
# memory.py --gpu: every method on the whole FLUX.1-dev pipeline (random weights), resident and under its 24 GB and
# 16 GB memory plans: measured peak vs predicted, seconds vs resident (issue 24).
set -uo pipefail
out="${1:-gpu-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 benchmarks/speed.py --device cuda --md "$out/speed.md" --json "$out/speed.json" 2>&1 | grep -v "kept in float32\|cannot run with\|FutureWarning\|deprecate" | tee "$out/speed.log"
python3 benchmarks/peers.py --device cuda 2>&1 | grep -v "kept in float32\|FutureWarning\|deprecate" | tee "$out/peers.log"
python3 benchmarks/personalize.py --device cuda --repeats 3 2>&1 | grep -v "kept in float32\|FutureWarning\|deprecate" | tee "$out/personalize.log"
python3 benchmarks/speed.py --device cuda --compile --compile-mode reduce-overhead 2>&1 | grep -v "kept in float32\|FutureWarning\|deprecate" | tee "$out/compile.log"
python3 benchmarks/batch_jobs.py --model sd21 --device cuda --size 512 --jobs 16 --max-batch 16 --steps 50 2>&1 | tee "$out/batch_jobs.log"
python3 benchmarks/flow_gpu.py 2>&1 | grep -v "FutureWarning\|deprecate" | tee "$out/flow_gpu.log"
python3 benchmarks/flow_gpu.py --model flux2-klein-4b 2>&1 | grep -v "FutureWarning\|deprecate" | tee "$out/flow_gpu_flux2_klein4b.log"
python3 benchmarks/flow_gpu.py --model z-image 2>&1 | grep -v "FutureWarning\|deprecate" | tee "$out/flow_gpu_zimage.log"
python3 benchmarks/memory.py --gpu 2>&1 | grep -v "FutureWarning\|deprecate\|kept in float32" | tee "$out/memory.log"
