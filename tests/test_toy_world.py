"""The toy world (issue 8, first part): deterministic scenes with exact masks, and detectors validated on them."""
import numpy as np

from zeroedit.toy import COLORS, SHAPES, STYLES, detect_objects, detect_style, render, sample_scene
from zeroedit.toy.world import Obj, Scene, object_mask


def test_scenes_are_deterministic_and_captioned():
    a, b = sample_scene(5), sample_scene(5)
    assert a == b and sample_scene(6) != a
    image_a, masks_a = render(a)
    image_b, masks_b = render(b)
    assert np.array_equal(np.asarray(image_a), np.asarray(image_b))
    assert len(masks_a) == len(a.objects) and all(m.shape == (128, 128) for m in masks_a)
    caption = a.caption()
    assert all(o.color in caption and o.shape in caption for o in a.objects) and a.style in caption


def test_masks_are_exact_and_disjoint():
    scene = Scene((Obj("square", "red", "large", 0.3, 0.3), Obj("ring", "blue", "large", 0.72, 0.72)), "plain", "photo")
    image, masks = render(scene)
    rgb = np.asarray(image).astype(int)
    assert not (masks[0] & masks[1]).any()
    assert abs(masks[0].mean() - (0.40 * 0.86) ** 2) < 0.01  # the square's area
    inside_red = rgb[masks[0]]
    assert (inside_red[:, 0] > inside_red[:, 2] + 80).mean() > 0.95  # red where the mask says
    ring = object_mask(scene.objects[1], 128)
    cy, cx = int(0.72 * 128), int(0.72 * 128)
    assert not ring[cy, cx]  # a ring's hole is not part of it


def test_detectors_accuracy_on_generated_scenes():
    """Measured over 200 scenes: colour, shape, size, position and style 100 %, object count 99.5 %.
    The bound here (60 scenes) leaves a small margin."""
    hits = {"style": 0, "color": 0, "shape": 0, "size": 0, "position": 0}
    total_objects = 0
    for seed in range(60):
        scene = sample_scene(1000 + seed)
        image, _ = render(scene)
        style = detect_style(image)
        hits["style"] += style == scene.style
        found = {d.color: d for d in detect_objects(image, style)}
        for obj in scene.objects:
            total_objects += 1
            d = found.get(obj.color)
            if d is not None:
                hits["color"] += 1
                hits["shape"] += d.shape == obj.shape
                hits["size"] += d.size == obj.size
                hits["position"] += abs(d.x - obj.x) < 0.05 and abs(d.y - obj.y) < 0.05
    assert hits["style"] / 60 >= 0.95
    for key in ("color", "shape", "size", "position"):
        assert hits[key] / total_objects >= 0.95, (key, hits)


def test_every_shape_colour_and_style_is_reachable():
    seen = {"shape": set(), "color": set(), "style": set()}
    for seed in range(80):
        scene = sample_scene(seed)
        seen["style"].add(scene.style)
        for obj in scene.objects:
            seen["shape"].add(obj.shape)
            seen["color"].add(obj.color)
    assert seen == {"shape": set(SHAPES), "color": set(COLORS), "style": set(STYLES)}


def test_toy_model_follows_colour_and_shape():
    """The trained toy model (ze.load("toy")) draws what the caption says, judged by the detectors."""
    import torch

    import zeroedit as ze
    pipe = ze.load("toy")
    pipe.set_progress_bar_config(disable=True)
    captions = ["a red circle on a plain background, photo style", "a blue square on stripes, photo style",
                "a yellow star on a gradient, photo style", "a green triangle on a plain background, photo style"]
    images = pipe(captions, num_inference_steps=20, guidance_scale=4.0, height=64, width=64,
                  generator=torch.Generator().manual_seed(0)).images
    correct = 0
    for caption, image in zip(captions, images):
        colour, shape = caption.split()[1:3]
        found = {d.color: d.shape for d in detect_objects(image, "photo")}
        correct += found.get(colour) == shape
    assert correct >= 3, correct  # model card: colour 98.9 %, shape 78.5 % on held-out captions


def test_object_style_of_large_objects():
    """object_style judges one object alone (compose's inserted object): measured 100 % on the large objects
    of 200 scenes at 64 px, in all three styles."""
    from zeroedit.toy.detect import object_style
    hits = total = 0
    for seed in range(40):
        scene = sample_scene(3000 + seed)
        image, _ = render(scene, 64)
        for obj in scene.objects:
            if obj.size == "large":
                total += 1
                hits += object_style(image, obj.color) == scene.style
    assert total >= 20 and hits / total >= 0.95, (hits, total)
