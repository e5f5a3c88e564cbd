"""Pictures of what the methods see: PCA of decoder features and self-attention (the PnP paper's figures).

    ze.visualize.features_pca(pipe, "photo.png", step=0, layer="up_blocks.1.resnets.1.conv2", out="pca.png")
"""
from __future__ import annotations

import torch
from PIL import Image

from .backbones import Backbone
from .control import Controller, Record
from .errors import ParameterError
from .images import to_tensor
from .inversion import ddim_invert, ddim_timesteps
from .methods.common import check_callback, check_steps, load_input, serialised
from .methods.pnp import injection_layers


def pca_rgb(tokens: torch.Tensor, height: int, width: int) -> Image.Image:
    """(N, C) tokens on an H×W grid -> the first three principal components as an RGB image (each
    component min–max normalised)."""
    x = tokens.float() - tokens.float().mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    components = x @ v[:3].T
    low, high = components.min(0).values, components.max(0).values
    rgb = ((components - low) / (high - low).clamp_min(1e-8) * 255).round().to(torch.uint8)
    return Image.fromarray(rgb.reshape(height, width, 3).cpu().numpy())


@serialised
def features_pca(pipe, image, step: int = 0, layer: str | None = None, what: str = "feature", steps: int = 50,
                 prompt: str = "", out: str | None = None, size=None, allow_large: bool = False,
                 callback=None) -> Image.Image:
    """PCA picture of a decoder layer at sampling step `step` (0 = the noisiest) of a `steps`-step DDIM
    inversion of `image` with `prompt`.

    what: "feature" (a module's output; default layer: PnP's injected feature, up_blocks[1].resnets[1]),
    or "q"/"k" (self-attention; default layer: the first PnP-injected attention layer).
    The inversion runs at the methods' working size (`size`, `allow_large` as in `translate`: the model's native
    long side by default, the image's aspect kept; images.working_size), so it sees what translate injects and
    costs what translate's inversion costs. callback(step, t, latents) after each of the `steps` inversion steps
    (as `invert`'s). Returns the picture at the image's own size (nearest-neighbour upsampling of the feature
    grid), and saves it as PNG when `out` is given."""
    steps = check_steps(steps)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < steps:
        raise ParameterError(f"step must be an integer in 0…{steps - 1}, got {step!r}.")
    if what not in ("feature", "q", "k"):
        raise ParameterError(f"what must be 'feature', 'q' or 'k', got {what!r}.")
    feature_layer, attention_layers = injection_layers(pipe.unet)
    layer = layer or (feature_layer if what == "feature" else attention_layers[0])
    check_callback(callback, "callback")
    backbone = Backbone(pipe)
    original, picture = load_input(image, backbone, size, allow_large)
    grid = ddim_timesteps(backbone, steps)
    t_wanted = list(reversed(grid))[step]
    store, controller = {}, Controller()
    target = "feature" if what == "feature" else "attention"
    controller.add(Record([layer], what, steps=lambda c: c.timestep == t_wanted, store=store, target=target))
    cond = backbone.encode_prompt(prompt)

    def model_fn(x, t, j):
        controller.set_call(j, t, [("src", 1)], x.shape[-2:])
        return backbone.unet_call(x, t, cond)

    with torch.no_grad(), controller.installed(pipe.unet):
        x0 = backbone.encode_image(to_tensor(picture)).float()  # DDIM arithmetic in float32
        trajectory = ddim_invert(backbone, model_fn, x0, grid, callback)
        if not store:  # the top of the grid is never an inversion input: evaluate it once
            model_fn(trajectory[-1], t_wanted, steps)
    tensor = next(iter(store.values()))
    if what == "feature":
        _, channels, h, w = tensor.shape
        tokens = tensor[0].reshape(channels, h * w).T
    else:
        tokens = tensor[0].transpose(0, 1).reshape(tensor.shape[2], -1)
        h, w = controller.grid(tokens.shape[0])
    result = pca_rgb(tokens, h, w).resize(original.size, Image.NEAREST)
    if out is not None:
        result.save(out)
    return result


def relevance_heatmaps(result, image=None, out: str | None = None) -> Image.Image:
    """personalize's per-object relevance maps (averaged over layers and steps) as heatmaps side by side,
    over `image` (default: the result's image) — which reference went where. Saved as PNG when `out`."""
    maps = result.extra.get("relevance_maps") if hasattr(result, "extra") else None
    if maps is None:
        raise ParameterError("this result has no relevance maps: use a personalize result with weighting='relevance'.")
    base = (image if image is not None else result.image).convert("RGB")
    tiles = []
    for object_map in maps:
        heat = object_map.clamp(0, 1).cpu().numpy()
        red = Image.fromarray((heat * 255).astype("uint8")).resize(base.size, Image.BILINEAR)
        overlay = Image.merge("RGB", (red, Image.new("L", base.size, 0), Image.new("L", base.size, 64)))
        tiles.append(Image.blend(base, overlay, 0.6))
    sheet = Image.new("RGB", (base.width * len(tiles), base.height))
    for index, tile in enumerate(tiles):
        sheet.paste(tile, (index * base.width, 0))
    if out is not None:
        sheet.save(out)
    return sheet
