"""The command line's help as data: one line per subcommand and one sentence per flag (what it does, its
default, its range or choices). `zeroedit --help` is built from these tables alone, so it imports neither torch
nor diffusers; tests/test_cli.py checks that each method's table lists exactly the API's parameters, in order,
and names their defaults.

Values: a flag's text is read as JSON where it is a number, a list or null (`--size 640`, `--size "[640, 480]"`,
`--paste-background false`); files are paths, boxes are x0,y0,x1,y1 in pixels.
"""
from __future__ import annotations

# The models `load` builds or ships without a download (zeroedit.loading.OFFLINE_MODELS, checked by the tests).
OFFLINE_MODELS = ("tiny", "tiny-xl", "toy", "toy-flow", "tiny-sd3", "tiny-flux", "tiny-flux2", "tiny-qwen-image",
                  "tiny-z-image")
BENCHMARKS = ("piebench", "tficon", "mip", "toy")  # zeroedit.metrics.published.COLUMNS, checked by the tests

SUMMARIES = {
    "compose": "Put an object into an image, across visual domains (TF-ICON).",
    "translate": "Re-render an image to a new prompt, keeping its structure (Plug-and-Play).",
    "edit": "Move an image along a concept direction, e.g. cat to dog (pix2pix-zero).",
    "personalize": "Generate from a prompt with one reference image per object (MIP-Adapter).",
    "invert": "Invert images to noise and reconstruct them (DDIM, DPM-Solver++; Euler, RF-Solver, FireFlow).",
    "direction": "Build and save an edit direction for edit (pix2pix-zero).",
    "demo": "Run every method offline on the embedded toy model and write a gallery (index.html).",
    "batch": "Run a JSONL file of jobs (resumable; accelerate launch for many GPUs).",
    "app": "Start the web app (Gradio), one tab per method; the toy model, offline, by default.",
    "eval": "Score a finished batch by a paper's protocol (PIE-Bench, TF-ICON, MIP-Adapter, toy).",
    "plan": ("Print the memory plan of a method on a model without loading its weights: bytes part by part and the "
             "cheapest measures that fit your GPU."),
}

# Model that each command uses without --model (runner.DEFAULT_MODELS, checked by the tests), and why.
MODEL_DEFAULTS = {
    "compose": "stabilityai/stable-diffusion-2-1-base (SD 2.1-base, as TF-ICON)",
    "translate": "stabilityai/stable-diffusion-2-1-base (SD 2.1-base)",
    "edit": "CompVis/stable-diffusion-v1-4 (SD 1.4, as pix2pix-zero)",
    "personalize": "stabilityai/stable-diffusion-xl-base-1.0 with h94/IP-Adapter's SDXL adapter (as MIP-Adapter)",
    "invert": "stabilityai/stable-diffusion-2-1-base (SD 2.1-base)",
    "direction": "CompVis/stable-diffusion-v1-4 (SD 1.4, as pix2pix-zero)",
}

_SEED = "Integer seed of every random draw, in [0, 2**64); default: a fresh random seed, recorded in the sidecar."
_COMPILE = ("Run the UNet (or transformer) under torch.compile; a config file may give a dict of torch.compile "
            "arguments instead; off by default.")
_SIZE = ("Working size: the long side in px (e.g. 640) or [WIDTH, HEIGHT]; default: the model's native long side "
         "(512 on SD 1.x/2.x-base, 1024 on SDXL, SD3 and FLUX, 64 on toy), the image's aspect kept.")
_ALLOW_LARGE = "Allow a working size above 2048 px on the long side; off by default."
_STEPS_LIMIT = "at most what the scheduler's grid holds (999 on SD)"

MEMORY = ("The GPU memory you have, e.g. 24GB (10^9 bytes) or 16GiB (2^30 bytes): zeroedit plans this run's memory "
          "and applies the cheapest measures that fit (offloading, 8-/4-bit weights; see zeroedit plan); default: "
          "none, everything stays on the device.")
_STORE = ("Where the tensors that grow with the image wait for their use: cpu keeps them in pinned CPU memory, copied "
          "back per step (the same result, less GPU memory); default: on the device.")
PLAN = {
    "model": ("A local diffusers folder, a hub id in your Hugging Face cache (only its config files are read), a "
              "built-in architecture (FLUX.1-dev, FLUX.1-schnell, SD3.5-large, SD3.5-medium, SD3-medium, SDXL-base, "
              "SD-2.1-base, SD-1.5) or tiny, tiny-xl, tiny-sd3, tiny-flux, toy, toy-flow. Required."),
    "method": "The method to plan for: compose, translate, edit, personalize or invert; default: translate.",
    "size": ("The working size: a long side in px (a square image, e.g. 1024) or WIDTHxHEIGHT; default: the model's "
             "native size."),
    "memory": "Your GPU's memory: 24GB (10^9 bytes), 16GiB (2^30 bytes) or a number of bytes; default: 24GB.",
    "batch": ("Prompts (translate), objects (compose, personalize) or images (invert, edit), 1 to 64; default: 1."),
    "dtype": ("The weights' dtype: float16, bfloat16 or float32; default: bfloat16 for SD3/FLUX, float16 for UNet "
              "models (the model's own for tiny/toy models)."),
    "device": ("What the plan is for: cuda (CUDA streams, bitsandbytes 8-/4-bit) or cpu (no streams, torchao int8); "
               "default: cuda."),
}

METHOD_FLAGS = {
    "compose": {
        "background": "The image to put the object into (a file); the output comes back at its size. Required.",
        "reference": ("The image that holds the object; several files compose several objects in one run (one "
                      "--reference-mask and --region each). Required."),
        "region": ("Where the object goes, in the background's pixels: a box x0,y0,x1,y1 (or four numbers; negative "
                   "values allowed), a mask image (its bounding box), or words naming an object of the background "
                   "to replace; one per reference. Required."),
        "reference_mask": ("The object in the reference (white = object): a mask image, auto (the salient object) or "
                           "words naming it; default: the whole reference is the object."),
        "prompt": "The text describing the result, e.g. \"an oil painting of a panda in a forest\"; default: empty.",
        "domain": ("The visual domains: cross (object and background differ, guidance 5.0) or same (both "
                   "photorealistic, guidance 2.5); default: cross."),
        "steps": f"DPM-Solver++ steps of the inversion and of the sampling, from 2, {_STEPS_LIMIT}; default: 20.",
        "order": "DPM-Solver++ order, 1 or 2 (UNet models only); default: 2.",
        "tau_a": "Fraction of the steps, in [0, 1], with composite self-attention injection; default: 0.4.",
        "tau_b": "Fraction of the steps, in [0, 1], that keep the background outside the region; default: 0.8.",
        "guidance_scale": ("Classifier-free guidance scale; default: 5.0 for --domain cross, 2.5 for same (FLUX: its "
                           "guidance embedding, 3.5)."),
        "seed": _SEED,
        "preset": ("Set to reference for the reference code's settings (seed 3407, a sampled VAE posterior, no "
                   "pasted background); default: none, the fastest settings."),
        "compile": _COMPILE,
        "size": _SIZE,
        "allow_large": _ALLOW_LARGE,
        "paste_background": ("Paste the untouched full-resolution background back outside the regions, true or "
                             "false; default: true (false under --preset reference)."),
        "solver": ("SD3/FLUX only: the rectified-flow solver of inversion and sampling, euler, rf-solver or "
                   "fireflow; default: fireflow."),
        "inversion_prompt": ("SD3/FLUX only: the content-free conditioning of the inversion, exceptional, "
                             "exceptional-clip, empty or zeros; default: zeros."),
        "attention": ("SD3/FLUX only: the attention rule, kv (KV-Edit's background keys and values) or composite "
                      "(TF-ICON's composite self-attention); default: kv."),
        "store": _STORE,
    },
    "translate": {
        "image": "The source image (a file); the output comes back at its size. Required.",
        "prompt": ("The target prompt; several prompts give one image each from one inversion, at the same UNet "
                   "calls: quote each and give them after one --prompt, --prompt \"a bronze horse\" \"a lego "
                   "horse\", or repeat --prompt \"...\" --prompt \"...\". Required."),
        "source_prompt": "The prompt of the inversion and of the source branch; default: empty, as the reference code.",
        "negative_prompt": ("The negative prompt of the target branches; default: the reference code's (\"ugly, "
                            "blurry, black, low res, unrealistic\") on UNet models, empty on SD3."),
        "steps": (f"Sampling steps, {_STEPS_LIMIT}; default: 50 (SD3/FLUX: 8, 25 under --preset reference; FlowEdit: "
                  "28 on FLUX, 50 on SD3)."),
        "inversion_steps": ("DDIM inversion steps, whose grid must hold the sampling grid; default: the same as "
                            "--steps (999 under --preset reference)."),
        "feature_steps": ("Decoder-feature injection window: a fraction of the steps (e.g. 0.8) or a whole number of "
                          "steps; default: 0.8 (SD3/FLUX: 0, off)."),
        "attention_steps": ("Self-attention q/k injection window: a fraction of the steps or a whole number of steps; "
                            "default: 0.5 (SD3/FLUX: the attention-value window, 1 step, 3 under --preset reference)."),
        "guidance_scale": ("Classifier-free guidance scale; default: 7.5 (FLUX: its guidance embedding, 2.0; SD3: "
                           "7.0; FlowEdit: 5.5 on FLUX, 13.5 on SD3)."),
        "seed": ("Integer seed in [0, 2**64), accepted for a uniform interface: DDIM with eta 0 draws no noise "
                 "(FlowEdit does); default: a fresh random seed, recorded in the sidecar."),
        "preset": ("Set to reference for the reference code's settings (999-step inversion with pnp-diffusers' "
                   "convention, source branch recomputed; SD3/FLUX: RF-Solver-Edit); default: none."),
        "source_cache": ("Where the source branch comes from: memory (recorded during the inversion, 151 UNet "
                         "evaluations at the defaults) or recompute (run in the batch, 200); default: memory."),
        "mask": ("Where to translate (white = change; outside it the source is kept): a mask image, a box "
                 "x0,y0,x1,y1 in the image's pixels, auto (the salient object) or words naming an object (UNet "
                 "models only); default: the whole image."),
        "store": _STORE,
        "compile": _COMPILE,
        "method": ("The algorithm: pnp on UNet models (the only one); on SD3/FLUX inject (inversion and "
                   "attention-value injection) or flowedit (FlowEdit, inversion-free); default: pnp on UNet models, "
                   "inject on SD3/FLUX."),
        "solver": ("SD3/FLUX only: the rectified-flow solver, euler, rf-solver or fireflow; default: fireflow "
                   "(rf-solver under --preset reference)."),
        "layers": ("SD3/FLUX only: the blocks whose attention is injected, single, last-single, vital (FLUX only) or "
                   "a JSON list of layer names; default: single (last-single under --preset reference)."),
        "strength": ("FlowEdit only: the fraction of the steps that edit (its n_max / steps), in (0, 1]; default: "
                     "24/28 on FLUX, 33/50 on SD3."),
        "source_guidance_scale": ("SD3/FLUX only: the guidance of the inversion, or of FlowEdit's source branch; "
                                  "default: 1.0 for the inversion, FlowEdit's 1.5 on FLUX and 3.5 on SD3."),
        "size": _SIZE,
        "allow_large": _ALLOW_LARGE,
    },
    "edit": {
        "image": "The image to edit (a file); the output comes back at its size. Required.",
        "source": "The concept in the image, e.g. cat; default: cat.",
        "target": "The concept to move it to, e.g. dog; default: dog.",
        "direction": ("A saved edit direction (.safetensors from zeroedit direction), checked against this model's "
                      "text encoder; default: built from --source and --target."),
        "caption": "The image's caption; default: \"a photo of a SOURCE\".",
        "steps": f"DDIM steps of the inversion and of the edit, {_STEPS_LIMIT}; default: 50.",
        "xa_guidance": ("Cross-attention guidance step size, 0 or more; default: 0.1 (0.01 on v-prediction models "
                        "such as SD 2.x 768)."),
        "guidance_scale": "Classifier-free guidance scale of the edit, 0 or more; default: 5.0.",
        "reg_steps": "Noise-regularisation rounds per inversion step (0 turns it off); default: 5.",
        "lambda_ac": "Weight of the regulariser's auto-correlation loss, 0 or more; default: 20.0.",
        "lambda_kl": "Weight of the regulariser's KL loss, 0 or more; default: 20.0.",
        "seed": _SEED,
        "preset": ("Set to reference for the official inversion (48 of 50 steps, t - 1 indexing, a seeded sample "
                   "of the VAE posterior); default: none."),
        "compile": _COMPILE,
        "size": _SIZE,
        "allow_large": _ALLOW_LARGE,
        "guidance_blocks": "SD3/FLUX only: guide the first K double-stream or joint blocks; default: all of them.",
        "checkpointing": ("SD3/FLUX only: gradient checkpointing of the transformer in the guidance call (less "
                          "memory, about one more forward pass); off by default."),
        "guidance_embedding": "FLUX-dev only: its distilled guidance during inversion and editing; default: 1.0.",
        "store": _STORE,
    },
    "personalize": {
        "prompt": "The text, naming every object of --references, e.g. \"a cat and a dog on a beach\". Required.",
        "references": ("One reference per object named in the prompt, phrase=image (several images of one object: "
                       "phrase=a.png,b.png), e.g. --references cat=cat.png dog=d1.png,d2.png. Required."),
        "scale": "IP-Adapter scale; default: 0.75 (FLUX: 1.0).",
        "weighting": ("How the objects' image attention is merged: relevance (MIP-Adapter, by each phrase's "
                      "relevance map) or uniform (plain IP-Adapter summation, the baseline); default: relevance."),
        "phrase_encoding": ("Relevance keys from each phrase encoded alone (the paper's) or from its tokens in the "
                            "prompt's encoding (prompt, zeroedit's variant); default: alone (FLUX: prompt, the only "
                            "choice)."),
        "mip_weights": ("The trained MIP-Adapter checkpoint (.safetensors, or a pickle read with weights_only; UNet "
                        "models only); default: none, the training-free variant."),
        "steps": f"Sampling steps of the pipeline's scheduler, {_STEPS_LIMIT}; default: 30.",
        "guidance_scale": "Classifier-free guidance scale; default: 5.0 (FLUX: its guidance embedding, 3.5).",
        "negative_prompt": ("The negative prompt (UNet models); default: the reference code's (\"monochrome, lowres, "
                            "bad anatomy, worst quality, low quality\")."),
        "height": ("Image height in px, a multiple of the VAE factor (8 on SD and SDXL, 16 on FLUX, 4 on toy); "
                   "default: the model's native size."),
        "width": ("Image width in px, a multiple of the VAE factor (8 on SD and SDXL, 16 on FLUX, 4 on toy); "
                  "default: the model's native size."),
        "seed": _SEED,
        "regions": ("Where each object's image attention acts (UNet models only): phrase=x0,y0,x1,y1 in output "
                    "pixels, phrase=mask.png, or phrase=\"words\" found in --layout; default: everywhere."),
        "layout": "An image in which the words of --regions are found (scaled to the output size); default: none.",
        "compile": _COMPILE,
        "size": ("The image size instead of --height and --width: a side in px (square) or [WIDTH, HEIGHT]; default: "
                 "the model's native size."),
        "allow_large": "Allow an image above 2048 px on the long side; off by default.",
    },
    "invert": {
        "image": ("The image(s) to invert, then reconstruct; several files of one size are inverted as one batched "
                  "trajectory, at the same UNet calls. Required."),
        "method": ("The inversion: ddim or dpmpp on UNet models, euler, rf-solver or fireflow on SD3/FLUX; default: "
                   "ddim on UNet models, fireflow on SD3/FLUX."),
        "prompt": ("The conditioning: a text, empty, or exceptional (TF-ICON's exceptional prompt, UNet models "
                   "only); default: empty."),
        "steps": f"Inversion steps (the reconstruction takes as many), {_STEPS_LIMIT}; default: 50.",
        "order": "DPM-Solver++ order of --method dpmpp, 1 or 2; default: 2.",
        "size": _SIZE,
        "compile": _COMPILE,
        "guidance": "FLUX-dev only: its distilled guidance during the inversion; default: 1.0.",
        "allow_large": _ALLOW_LARGE,
    },
}

# Flags shared by the commands that run a model (their --out is worded per command).
COMMON = {
    "config": ("A YAML or JSON file with the same keys as the flags, or a sidecar .json of an earlier run (which "
               "reproduces it); flags given here win."),
    "quiet": "No progress bars while the method runs and no summary line; off by default.",
    "device": "Where to run: cpu, cuda, cuda:1, mps, ...; default: cuda when available, else cpu.",
    "dtype": "float16, bfloat16 or float32; default: float16 on cuda, else float32.",
}
OUT = {
    "method": "Output folder for the images and their JSON sidecar; default: out.",
    "direction": "Output file of the direction (.safetensors); default: SOURCE2TARGET.safetensors in this folder.",
    "demo": "Output folder for every run, the inputs and index.html; default: demo-out.",
    "batch": "Output folder for every job's images and sidecar, and results.jsonl; default: batch-out.",
}

DEMO_MODEL = ("The model: a hub id, a local folder, or one of the offline models; default: toy, the embedded model "
              "trained on the toy world, on toy-world inputs (any other model runs on the bundled sample photos).")
BATCH_MODEL = ("The model of the jobs that name none: a hub id, a local folder, or one of the offline models "
               f"{', '.join(OFFLINE_MODELS)}; default: each method's own (see zeroedit METHOD --help).")

DIRECTION = {
    "source": "The concept to move from, e.g. cat. Required.",
    "target": "The concept to move to, e.g. dog. Required.",
    "sentences": ("A text file, one sentence per line with {} where the concept goes; default: the built-in "
                  "templates (156 sentences per concept)."),
}

BATCH = {
    "jobs": ("The JSONL file of jobs, one JSON object a line with \"method\", \"id\" and the method's keys (paths "
             "relative to the file)."),
    "max_batch": ("Run up to N compatible jobs (same method, model, size, steps and flags) as one sampling batch, "
                  "N at least 1; default: 1, one job at a time."),
}

APP = {
    "model": (f"The model the app starts with (a picker in the app switches): a hub id, a local folder, or one of "
              f"{', '.join(OFFLINE_MODELS)}; default: toy."),
    "host": ("Address to listen on; default: 127.0.0.1, this machine only (0.0.0.0 lets other machines reach it, "
             "with no authentication)."),
    "port": "Port to listen on; default: 7860.",
    "share": "Also open a temporary public gradio.live link (needs internet); off by default.",
}

EVAL = {
    "results": "The output folder(s) of finished zeroedit batch runs, each holding results.jsonl.",
    "benchmark": f"The protocol to score by, one of {', '.join(BENCHMARKS)}. Required.",
    "data": ("The data set's mapping_file.json (its masks, prompts and editing types); needed by piebench and toy, "
             "unused by the others."),
    "out": "Folder for eval.csv, eval.md and eval.html; default: RESULTS_DIR/eval of the first results folder.",
    "metrics": ("A comma-separated subset of the benchmark's metrics (piebench: structure_distance, psnr, lpips, "
                "mse, ssim, clip_whole, clip_edited; tficon: lpips_bg, lpips_fg, clip_image, clip_text; mip: clip_t, "
                "clip_i, dino; toy: target, iou, psnr, mse, ssim); default: all of them."),
    "label": "One row name per results folder, in order; default: the folders' names.",
    "clip_model": ("CLIP model (hub id or folder) instead of the protocol's (piebench: "
                   "openai/clip-vit-large-patch14; tficon and mip: openai/clip-vit-base-patch32)."),
    "dino_model": ("DINO ViT model (hub id or folder) instead of the protocol's (piebench: facebook/dino-vitb8; "
                   "mip: facebook/dino-vits16)."),
    "lpips_net": "LPIPS trunk, vgg or squeeze, instead of the protocol's (piebench: squeeze; tficon: vgg).",
    "lpips_weights": ("Folder with the LPIPS trunk and head .pth files; default: ~/.cache/torch/hub/checkpoints."),
    "allow_download": "Let transformers download missing models; off by default (the caches only).",
    "device": "Where to run the metric models: cpu, cuda, ...; default: cuda when available, else cpu.",
    "quiet": "No progress bar and no summary; off by default.",
}


def model_help(command: str) -> str:
    """--model's sentence for a command that runs one model."""
    return (f"The model: a hub id, a local diffusers folder, or one of the offline models {', '.join(OFFLINE_MODELS)}; "
            f"default: {MODEL_DEFAULTS[command]}. Offline, download it elsewhere and pass the folder.")
