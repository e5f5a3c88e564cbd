"""UNet backbone: one object hiding SD 1.x/2.x vs SDXL.

Prompt encoding (including the empty/negative prompt and TF-ICON's exceptional prompt), VAE
encode (posterior mean × scaling factor) and decode, and one UNet call with the right
conditioning. Every UNet call of every method goes through `Backbone.unet`, which counts it in
`stats.unet_calls` (sequential forward calls) and `stats.unet_evals` (sample-evaluations).

Compiled path (`Backbone(pipe, stats, compile=True | {torch.compile kwargs})`, every method's `compile=`):
- torch.compile wraps a plain function of (unet, inputs), built once per UNet and options and cached weakly
  per UNet; the user's UNet is never replaced or modified (no `_compiled_call_impl`, hooks or processors
  left behind).
- Control rules stay active: the controlled attention processors and feature hooks run eagerly between
  graphs (control/core.py `eager_under_compile`), so their decisions (step, timestep, windows, stores) never
  become guards. Dynamo guards on the processor/hook *types*, not on the objects, so the new processors every
  call installs reuse the graphs: graphs are built on the first call of each batch shape and never again for
  the same shapes (counted in tests/test_compile.py). Dynamo runs with nested graph breaks (a break inside
  an attention layer does not split its parents into separately cached frames, which made the cache depend
  on call order), with guards on module hooks (by default dynamo ignores hooks added after compiling), and
  with room for the graphs of all methods, shapes and controlled-layer sets of a process — patched only
  around our calls.
- Static shapes by default (`dynamic=False`): one graph set per batch layout, as CUDA graphs need.
- Gradients flow through the compiled graphs (pix2pix-zero's guided call; AOT autograd).
- No torch.compile here (`torch._dynamo.is_dynamo_supported()` false) or a backend that cannot build (e.g.
  inductor without a C compiler): a RuntimeWarning says why and the UNet runs eagerly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import warnings
import weakref

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from .. import sessions
from ..errors import ModelError, ParameterError, UnsupportedModel, shorten
from ..loading import is_sdxl
from ..result import Stats
from ..devices import check_no_cache, compute_dtype, execution_device, forward_context
from .vae import LatentCodec

FLOW_METHODS = ("translate", "compose", "edit", "invert", "reconstruct", "personalize (FLUX.1)")  # run on flow pipelines
EXCEPTIONAL_TOKEN_ID = 7788  # the reference's arbitrary token (taken modulo a smaller vocabulary)
logger = logging.getLogger(__name__)


def warn_truncated(tokenizer, texts: list[str], length: int, prompts: list[str] | None = None) -> None:
    """A logging warning for each text longer than `length` tokens, which the encoder's tokenizer will truncate
    (`prompts`: what the user wrote, when `texts` are those prompts under a template)."""
    for text, prompt, ids in zip(texts, prompts or texts, tokenizer(texts, truncation=True, max_length=length + 1).input_ids):
        if len(ids) > length:
            kept = tokenizer.decode(ids[:length], skip_special_tokens=True)
            logger.warning("prompt truncated to the text encoder's %d tokens; kept %r, dropped the rest of %r.",
                           length, kept, prompt)


def tokenize(tokenizer, prompts: list[str], length: int, device) -> torch.Tensor:
    """Token ids padded to `length` (the encoder's); a prompt longer than that is truncated, with a warning
    (CLIP on every family, T5 on SD3/FLUX)."""
    warn_truncated(tokenizer, prompts, length)
    return tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                     return_tensors="pt").input_ids.to(device)



@dataclasses.dataclass
class Cond:
    """Text conditioning of a batch: token embeddings (B, L, D), pooled embeddings (B, P) where the model takes
    them (SDXL, SD3, FLUX.1), and a token mask (B, L) (True = a real token) for the families whose text has a
    length of its own (Qwen-Image, Z-Image); None = every token counts."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def cat(conds: list["Cond"]) -> "Cond":
        """The conditionings of several branches as one batch; texts of different lengths are zero-padded to the
        longest, the padding masked out."""
        pooled = None if conds[0].pooled is None else torch.cat([c.pooled for c in conds])
        length = max(c.embeds.shape[1] for c in conds)
        if all(c.mask is None and c.embeds.shape[1] == length for c in conds):
            return Cond(torch.cat([c.embeds for c in conds]), pooled)
        embeds = torch.cat([F.pad(c.embeds, (0, 0, 0, length - c.embeds.shape[1])) for c in conds])
        mask = torch.cat([F.pad(c.token_mask(), (0, length - c.embeds.shape[1])) for c in conds])
        return Cond(embeds, pooled, mask)

    def token_mask(self) -> torch.Tensor:
        """(B, L) bool: which tokens are real."""
        if self.mask is not None:
            return self.mask.bool()
        return torch.ones(self.embeds.shape[:2], dtype=torch.bool, device=self.embeds.device)

    def repeat(self, n: int) -> "Cond":
        return Cond(self.embeds.repeat_interleave(n, 0), None if self.pooled is None else self.pooled.repeat_interleave(n, 0),
                    None if self.mask is None else self.mask.repeat_interleave(n, 0))

    def __getitem__(self, index) -> "Cond":
        index = slice(index, index + 1) if isinstance(index, int) else index
        return Cond(self.embeds[index], None if self.pooled is None else self.pooled[index],
                    None if self.mask is None else self.mask[index])


class Backbone(LatentCodec):
    """Wraps a diffusers SD/SDXL pipeline; see module docstring."""

    kind = "unet"

    def __init__(self, pipe, stats: Stats | None = None, compile=False):
        if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None:
            raise UnsupportedModel(
                f"{type(pipe).__name__} is a flow-transformer pipeline; this method runs on UNet pipelines "
                f"(Stable Diffusion 1.x, 2.x, XL) only. On SD3/SD3.5/FLUX.1 pipelines zeroedit runs "
                f"{', '.join(FLOW_METHODS)}.")
        for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if getattr(pipe, name, None) is None:
                raise ModelError(f"the pipeline has no {name}; zeroedit needs a Stable Diffusion (1.x, 2.x or XL) "
                                 f"text-to-image pipeline, got {type(pipe).__name__}.")
        self.pipe, self.unet, self.vae = pipe, pipe.unet, pipe.vae
        self.model = self.unet  # what control rules install on (the transformer for flow backbones)
        self.is_xl = is_sdxl(pipe)
        self.stats = stats if stats is not None else Stats()
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ModelError(f"prediction_type {self.prediction_type!r} is not supported (epsilon or v_prediction).")
        self.alphas_cumprod = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod.to(torch.float64)
        self.num_train_timesteps = len(self.alphas_cumprod)
        self.compile_options = compile_options(compile)
        self.stats.params.setdefault("compile", compile)
        if self.compile_options is not None and not _dynamo_supported():
            self.compile_options = None
        check_no_cache(self.unet)
        self.device, self.dtype = execution_device(pipe), compute_dtype(self.unet)  # see zeroedit/devices.py

    @property
    def native_size(self) -> int:
        """The model's native long side in px: UNet sample_size × VAE factor (512 SD 1.x, 1024 SDXL, 128 tiny)."""
        sample = self.unet.config.sample_size
        return int(max(sample) if isinstance(sample, (tuple, list)) else sample) * self.vae_scale

    @property
    def size_multiple(self) -> int:
        """Image sides are multiples of this: VAE factor × 2^(UNet levels − 1) (64 on SD 1.x/2.x, 32 on SDXL)."""
        return self.vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # ---------------------------------------------------------------- text
    def _tokenize(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenize(tokenizer, prompts, tokenizer.model_max_length, self.device)

    @torch.no_grad()
    def encode_prompt(self, prompts: str | list[str]) -> Cond:
        """Prompt(s) -> Cond, exactly as the diffusers pipeline encodes them (SD: last hidden state after the
        final layer norm; SDXL: penultimate hidden states of both encoders concatenated, pooled from the second)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not self.is_xl:
            ids = self._tokenize(self.pipe.tokenizer, prompts)
            return Cond(self.pipe.text_encoder(ids)[0].to(self.dtype))
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.pipe.tokenizer, self.pipe.text_encoder),
                                   (self.pipe.tokenizer_2, self.pipe.text_encoder_2)):
            out = encoder(self._tokenize(tokenizer, prompts), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # text_embeds of the projection model
        return Cond(torch.cat(hidden, dim=-1).to(self.dtype), pooled.to(self.dtype))

    @torch.no_grad()
    def encode_negative(self, prompts: str | list[str]) -> Cond:
        """Negative/unconditional prompt(s); for SDXL with `force_zeros_for_empty_prompt`, "" gives zeros as in diffusers."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        zeros = self.is_xl and self.pipe.config.get("force_zeros_for_empty_prompt", False)
        if zeros and all(p == "" for p in prompts):
            cond = self.encode_prompt(prompts)
            return Cond(torch.zeros_like(cond.embeds), torch.zeros_like(cond.pooled))
        return self.encode_prompt(prompts)

    @torch.no_grad()
    def exceptional_cond(self, batch: int = 1, token_id: int = EXCEPTIONAL_TOKEN_ID) -> Cond:
        """TF-ICON's exceptional prompt (Sec. 3.2): all 77 input ids the same token, no BOS/EOS/pad, and no
        positional embeddings (token embeddings go straight into the transformer layers). Every output row is
        identical. Keeps each encoder's usual output layer (SD: final layer norm; SDXL: penultimate layer)."""
        hidden, pooled = [], None
        encoders = [self.pipe.text_encoder] + ([self.pipe.text_encoder_2] if self.is_xl else [])
        for encoder in encoders:
            with forward_context(encoder):  # its submodules are called directly, not its forward
                states, final = exceptional_clip_states(encoder, self.pipe.tokenizer.model_max_length, token_id,
                                                        self.device)
                if self.is_xl and encoder is self.pipe.text_encoder_2:
                    pooled = encoder.text_projection(final[:, 0])
            hidden.append(states[-2] if self.is_xl else final)
        embeds = torch.cat(hidden, dim=-1).to(self.dtype).expand(batch, -1, -1)
        return Cond(embeds, None if pooled is None else pooled.to(self.dtype).expand(batch, -1))

    # ---------------------------------------------------------------- VAE (encode_image/decode: LatentCodec)
    def _vae_dtype(self):
        """diffusers upcasts an fp16 VAE only in SDXL pipelines (`force_upcast`); SD 1.x/2.x VAEs run in fp16."""
        dtype = compute_dtype(self.vae)
        upcast = self.is_xl and dtype == torch.float16 and self.vae.config.get("force_upcast", False)
        return torch.float32 if upcast else dtype

    # ---------------------------------------------------------------- UNet
    def unet_call(self, latents: torch.Tensor, t, cond: Cond, added: dict | None = None) -> torch.Tensor:
        """One UNet forward with the right conditioning; counted in stats. `t` is a scalar or a per-sample
        tensor (integer or continuous model times). Returns the raw model output (eps or v)."""
        batch = latents.shape[0]
        if len(cond) != batch:
            raise RuntimeError(f"internal: {len(cond)} conditionings for a batch of {batch}")
        t = torch.as_tensor(t, device=self.device)
        t = t.to(torch.float32) if t.is_floating_point() else t
        added = dict(added or {})
        if self.is_xl:
            h, w = latents.shape[-2] * self.vae_scale, latents.shape[-1] * self.vae_scale
            time_ids = torch.tensor([h, w, 0, 0, h, w], device=self.device, dtype=self.dtype)
            added.update(text_embeds=cond.pooled, time_ids=time_ids.expand(batch, -1))
        self.stats.unet_calls += 1
        self.stats.unet_evals += batch
        args = (self.unet, latents.to(self.dtype), t, cond.embeds, added or None)
        session = sessions.current(self.unet)
        if session is not None:  # a job of a batch: one forward for every job of the session
            return session.forward(*args[1:], compile_options=self.compile_options)
        if self.compile_options is not None:
            out = compiled_forward(args, self.compile_options)
            if out is not None:
                return out
            self.compile_options = None  # the backend cannot build here (warned once): eager from now on
        return _unet_forward(*args)

    def unet_grad(self, loss: torch.Tensor, inputs) -> tuple[torch.Tensor, ...]:
        """d loss / d inputs through the UNet graph of this job's last call(s); counted in stats.unet_backward.
        In a job batch (zeroedit.jobs) the jobs' losses share ONE backward pass."""
        self.stats.unet_backward += 1
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        session = sessions.current(self.unet)
        if session is not None:
            return session.grad(loss, inputs)
        return torch.autograd.grad(loss, inputs)

    # ---------------------------------------------------------------- noise schedule
    def to_eps_x0(self, model_out: torch.Tensor, x: torch.Tensor, alpha, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output -> (ε, x̂₀) for eps- or v-prediction, given x = α·x₀ + σ·ε."""
        out, x = model_out.float(), x.float()
        alpha, sigma = torch.as_tensor(alpha, dtype=torch.float32), torch.as_tensor(sigma, dtype=torch.float32)
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x - sigma * eps) / alpha
        else:
            x0 = alpha * x - sigma * out
            eps = sigma * x + alpha * out
        return eps, x0


def exceptional_clip_states(encoder, length: int, token_id: int, device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """TF-ICON's exceptional prompt through one CLIP text encoder: `length` copies of one token id, no BOS/EOS/pad,
    no positional embeddings. Returns (hidden states after the token embedding and after every layer, final layer
    norm of the last); every row of each is identical."""
    model = getattr(encoder, "text_model", encoder)  # transformers 5: CLIPTextModel is flat
    ids = torch.full((1, length), token_id % model.config.vocab_size, device=device)
    states = [model.embeddings.token_embedding(ids)]
    for layer in model.encoder.layers:
        states.append(layer(states[-1], None))
    return states, model.final_layer_norm(states[-1])


# ---------------------------------------------------------------------------------------- compiled path
def _unet_forward(unet, latents, t, embeds, added):
    """The UNet forward every call runs (eagerly, or traced by torch.compile)."""
    return unet(latents, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]


def _contiguous(value):
    if isinstance(value, torch.Tensor):
        return value.contiguous()
    if isinstance(value, (tuple, list)):
        return type(value)(_contiguous(v) for v in value)
    if isinstance(value, dict):
        return {k: _contiguous(v) for k, v in value.items()}
    return value


COMPILE_DEFAULTS = {"dynamic": False}  # static shapes: one graph per batch layout, as the methods call it
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # unet -> {options key: callable | None}


def compile_options(value) -> dict | None:
    """Check a method's `compile` argument: False/None -> None (eager); True -> torch.compile's defaults
    (inductor) with static shapes; a dict -> those torch.compile keyword arguments over the defaults
    (e.g. {"backend": "aot_eager"}, {"mode": "reduce-overhead"}). Raises ParameterError otherwise."""
    if value is None or value is False:
        return None
    if value is True:
        return dict(COMPILE_DEFAULTS)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        if value.get("fullgraph"):
            raise ParameterError("compile: fullgraph=True cannot hold, the control rules run eagerly between graphs; "
                                 "leave fullgraph out.")
        return {**COMPILE_DEFAULTS, **value}
    raise ParameterError(f"compile must be True, False or a dict of torch.compile keyword arguments "
                         f"(e.g. {{'mode': 'reduce-overhead'}}), got {shorten(value)}.")


def compiled_forward(args, options: dict, forward=None) -> torch.Tensor | None:
    """`forward(*args)` (default `_unet_forward`; the flow backbone passes its transformer forward) through
    torch.compile (cached per model, function and options, see `compiled_unet`); None when the backend cannot
    build here (warned once)."""
    unet = args[0]
    compiled = compiled_unet(unet, options, forward)
    if compiled is None:
        return None
    if options.get("mode") == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()  # outputs of the previous call may be overwritten
    try:
        with torch._dynamo.config.patch(_dynamo_config()):
            # contiguous: graphs specialise on strides (an expanded conditioning would recompile);
            # clone: the caller owns the output, also when it lives in CUDA-graph memory
            return compiled(*_contiguous(args)).clone()
    except torch._dynamo.exc.BackendCompilerFailed as error:
        _compile_failed(unet, options, error, forward)
        return None


def _block_forward(block, *args, **kwargs):
    """One repeated block's call (its hooks and forward), the function regional compilation traces."""
    return block._call_impl(*args, **kwargs)


def repeated_blocks(model) -> list[torch.nn.Module]:
    """The model's repeated blocks: the classes its `_repeated_blocks` names (FLUX: double- and single-stream
    blocks), else those of its `transformer_blocks` (SD3's joint blocks)."""
    names = set(getattr(model, "_repeated_blocks", None) or [type(b).__name__ for b in model.transformer_blocks])
    return [module for module in model.modules() if type(module).__name__ in names]


@contextlib.contextmanager
def compiled_blocks(model, options: dict):
    """Regional compilation (diffusers' `compile_repeated_blocks`) for the duration of one call, without changing the
    model: each repeated block's call runs through ONE compiled function (`_block_forward`, cached weakly per model
    and options; blocks of a class share its graphs), installed as the block's `_compiled_call_impl` on entry and
    removed on exit. Everything between blocks runs eagerly; controlled attention layers are graph breaks
    (control/core.py `eager_under_compile`). A backend that cannot build warns once and the blocks run eagerly."""
    compiled = compiled_unet(model, options, _block_forward)
    blocks = repeated_blocks(model) if compiled is not None else []
    for block in blocks:
        block._compiled_call_impl = functools.partial(_compiled_block, model, block, compiled, options)
    try:
        yield
    finally:
        for block in blocks:
            block._compiled_call_impl = None


def _compiled_block(model, block, compiled, options: dict, *args, **kwargs):
    """A block's call through the compiled function; eager (warned once) when the backend fails to build."""
    if _COMPILED.get(model, {}).get(_cache_key(options, _block_forward)) is None:  # failed earlier in this call
        return _block_forward(block, *args, **kwargs)
    if options.get("mode") == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()  # every block replays one graph: outputs are cloned below
    try:
        with torch._dynamo.config.patch(_dynamo_config()):
            out = compiled(block, *_contiguous(args), **_contiguous(kwargs))
    except torch._dynamo.exc.BackendCompilerFailed as error:
        _compile_failed(model, options, error, _block_forward)
        return _block_forward(block, *args, **kwargs)
    return _cloned(out) if options.get("mode") == "reduce-overhead" else out


def _cloned(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_cloned(v) for v in value)
    return value


def _options_key(options: dict) -> str:
    return repr(sorted(options.items()))


def _cache_key(options: dict, forward) -> str:
    """Cache key of a compiled function: the options (and the function's name, for any but the UNet's)."""
    return _options_key(options) if forward is _unet_forward else f"{forward.__name__}:{_options_key(options)}"


def compiled_unet(unet, options: dict, forward=None):
    """The compiled forward for this model (UNet or transformer), function and options, built once and reused
    by every later call (None after a failed build). torch.compile wraps `forward` (default `_unet_forward`),
    never the module: the user's model is not changed (no `_compiled_call_impl`, no hooks), and the cache holds
    the model only weakly."""
    forward = forward or _unet_forward
    per_unet = _COMPILED.setdefault(unet, {})
    key = _cache_key(options, forward)
    if key not in per_unet:
        per_unet[key] = torch.compile(forward, **options)
    return per_unet[key]


def _dynamo_config() -> dict:
    """Dynamo settings for our compiled calls (patched only around them): guard on module hooks, so a graph
    traced without feature hooks is never reused with them (dynamo skips those guards by default); and room
    for one cache entry per layer shape × batch layout × set of controlled layers, over all methods of a
    process, before dynamo would fall back to eager."""
    config = torch._dynamo.config
    return dict(skip_nnmodule_hook_guards=False, nested_graph_breaks=True, recompile_limit=max(config.recompile_limit, 64),
                accumulated_recompile_limit=max(config.accumulated_recompile_limit, 1024))


def _dynamo_supported() -> bool:
    if torch._dynamo.is_dynamo_supported():
        return True
    try:
        torch._dynamo.eval_frame.check_if_dynamo_supported()
        reason = "torch._dynamo reports this platform as unsupported"
    except Exception as error:  # noqa: BLE001 — the reason torch gives
        reason = str(error)
    warnings.warn(f"compile=True: torch.compile is not available here ({reason}); running the UNet eagerly.",
                  RuntimeWarning, stacklevel=3)
    return False


def _compile_failed(unet, options: dict, error: Exception, forward=None):
    """The backend could not build the graph (e.g. inductor without a C compiler): warn once per model and
    options, remember it, and run eagerly from now on."""
    _COMPILED.setdefault(unet, {})[_cache_key(options, forward or _unet_forward)] = None
    cause = getattr(error, "inner_exception", None) or error
    reason = (str(cause).strip().splitlines() or [""])[0]
    warnings.warn(f"compile: the torch.compile backend failed ({type(cause).__name__}: {reason}); running the UNet "
                  "eagerly.", RuntimeWarning, stacklevel=4)
