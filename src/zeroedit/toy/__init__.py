"""The toy world: images with exact ground truth (world.py) and detectors for their attributes (detect.py)."""
from .detect import detect_objects, detect_style
from .world import COLORS, SHAPES, STYLES, BACKGROUNDS, Obj, Scene, render, sample_scene

__all__ = ["COLORS", "SHAPES", "STYLES", "BACKGROUNDS", "Obj", "Scene", "render", "sample_scene",
           "detect_objects", "detect_style"]
