"""The result object every method returns, and its cost accounting (`Stats`)."""
from __future__ import annotations

import dataclasses
import resource
import sys
import time
from typing import Any

import torch


@dataclasses.dataclass
class Stats:
    """Cost of one call.

    unet_evals: sample-evaluations of the UNet (batch items summed over forward calls);
    unet_calls: sequential UNet forward calls (what sets latency on a GPU);
    unet_backward: backward passes through the UNet;
    seconds: wall time; peak_memory_bytes: CUDA max allocated on a GPU, else peak RSS of the process;
    store_bytes: the size of each store that grows with the image size, by name (the bytes held, wherever
    `store=` put them; 0 when nothing was kept):
      "features" (translate: recorded block/resnet outputs), "attention" (translate: recorded q/k on the UNet, the
      injected values (and keys) on SD3/FLUX), "qk" (compose: the background's and references' recorded q/k, UNet or
      flow attention="composite"), "background_kv" (compose on SD3/FLUX, attention="kv": the background's recorded
      K/V), "guidance" (edit: the activations autograd keeps for one step's gradient call, parameters excluded,
      each storage once);
    params: every resolved parameter of the call; extra: method-specific figures.
    """

    unet_evals: int = 0
    unet_calls: int = 0
    unet_backward: int = 0
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    store_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Timer:
    """Measures wall time and peak memory of a block into a Stats."""

    def __init__(self, stats: Stats, device: torch.device):
        self.stats, self.device = stats, torch.device(device)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.stats.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
            self.stats.peak_memory_bytes = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
        self.stats.seconds = time.perf_counter() - self.start
        return False


@dataclasses.dataclass
class Result:
    """What a method returns: `images` (list of PIL images, or a latent tensor when
    `output_type="latent"`), `latents` (final latents or an inversion trajectory) and `stats`."""

    images: Any
    stats: Stats
    latents: torch.Tensor | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def image(self):
        """The first output image (or latent)."""
        return self.images[0]

    def __getattr__(self, name):  # method-specific extras, e.g. result.caption
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(name)
