"""Job batching: run several independent jobs (method calls) as ONE sampling batch on one UNet.

`JobSession(unet).run([fn, ...])` runs each job function in its own thread. The threads take turns (a
baton: only one runs Python at a time, so tokenizers, VAE dtype swaps and hook installation never race);
a job gives the baton away only while it waits for the UNet. `Backbone.unet_call` inside a session submits
(latents, t, conditioning, added_cond_kwargs, grad mode) and waits; when every live job has submitted, the
last one concatenates the requests along the batch (t expanded per sample) and runs ONE UNet forward, splits
the output and wakes the others. Requests that cannot be concatenated (different shapes, dtypes or grad
mode) run as separate calls, still correct. `Backbone.unet_grad` does the same for backward passes: the
jobs' losses are summed and ONE backward gives each job the gradient w.r.t. its own inputs (samples are
independent, so the sum's gradient w.r.t. job i's inputs is job i's own gradient).

Control rules: each job keeps its own `Controller`; under a session `Controller.installed(unet)` only
attaches it to the job. The session installs, once, a dispatching attention processor on every layer and a
forward hook on every module a rule names; they run the original processor on the whole batch when no job
has an active rule there, and otherwise each job's rules on its own batch slice (each controller's branch
layout stays relative to its own slice). Attention and GroupNorm act per sample, so slicing is exact.

A job that finishes or raises leaves the session, so nobody waits forever and the others go on (an error
inside a combined UNet call itself, an internal failure, goes to every job of that call). Processors and
hooks are restored at the end; Ctrl-C in the caller stops every job at its next UNet call.
`calls`, `evals`, `backward` count the session's shared UNet work (each job's own `stats` still count
that job's calls as if it ran alone).

Threads (`exclusive`): every method call holds its UNet's re-entrant lock for the whole call (inversion,
sampling, decoding), so calls from several threads on one pipeline run one after the other and each equals
its solo run; nobody's processors are ever installed while another call's UNet runs. A session's `run` holds
that lock for the whole session and its job threads do not take it (they are coordinated by the baton).
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Callable

import torch

from .control.core import eager_under_compile
from .sessions import current, member as _member_of_thread, set_member

_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> RLock
_LOCKS_GUARD = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The re-entrant lock of one denoiser (UNet) module, made on first use, held weakly by the module."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def exclusive(model):
    """Hold `model`'s lock for a whole method call (module docstring). Inside a job of a session on this
    model the session's `run` holds it already (taking it per job would deadlock the combined forward)."""
    if current(model) is not None:
        yield
        return
    with model_lock(model):
        yield


class _Member:
    def __init__(self, session: "JobSession", index: int):
        self.session, self.index = session, index
        self.controllers: list = []
        self.request: _Request | None = None


class _Request:
    def __init__(self, member: _Member, kind: str, payload: dict):
        self.member, self.kind, self.payload = member, kind, payload
        self.done, self.result, self.error = False, None, None


def _signature(value):
    """Shape/dtype of everything but the batch dimension (what must agree to concatenate)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape[1:]), value.dtype, value.device)
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_signature(v) for v in value))
    return ("value", repr(value))


def _cat(values: list):
    """Concatenate per-job values along the batch (lists element-wise)."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if isinstance(first, (list, tuple)):
        return type(first)(_cat([v[i] for v in values]) for i in range(len(first)))
    return first


def _slice(value, start: int, stop: int, batch: int):
    """The [start, stop) batch slice of a processor argument (tensors with the batch dim, tuples/lists of them)."""
    if isinstance(value, torch.Tensor):
        return value[start:stop] if value.ndim and value.shape[0] == batch else value
    if isinstance(value, (list, tuple)):
        return type(value)(_slice(v, start, stop, batch) for v in value)
    return value


class JobSession:
    """One sampling batch of jobs on `unet`; see module docstring."""

    def __init__(self, unet):
        self.unet = unet
        self.cond = threading.Condition()  # its lock is the baton
        self.live: list[_Member] = []
        self.segments: list[tuple[_Member, int, int]] = []  # layout of the running call
        self.calls = self.evals = self.backward = 0
        self.cancelled = False
        self._saved_processors = None
        self._hooks: dict[str, Any] = {}

    # ------------------------------------------------------------------ running jobs
    def run(self, functions: list[Callable[[], Any]]) -> list[tuple[Any, BaseException | None]]:
        """Run every function as a job of this session; return [(value, exception or None)] in order."""
        members = [_Member(self, i) for i in range(len(functions))]
        self.live = list(members)
        outcomes: list = [(None, None)] * len(functions)

        def body(member, function):
            set_member(member)
            with self.cond:
                try:
                    outcomes[member.index] = (function(), None)
                except BaseException as error:  # noqa: BLE001 — handed to the caller, per job
                    outcomes[member.index] = (None, error)
                finally:
                    self._leave(member)
                    set_member(None)

        threads = [threading.Thread(target=body, args=(m, f), daemon=True, name=f"zeroedit-job{m.index}")
                   for m, f in zip(members, functions)]
        with model_lock(self.unet):  # no other thread's call on this UNet during the session
            try:
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            except BaseException:  # Ctrl-C in the caller: every job stops at its next UNet call
                with self.cond:
                    self.cancelled = True
                    self.cond.notify_all()
                for thread in threads:
                    thread.join()
                raise
            finally:
                with self.cond:
                    self._restore()
        return outcomes

    def _leave(self, member: _Member):
        self.live.remove(member)
        member.controllers.clear()
        self._serve_if_ready()

    # ------------------------------------------------------------------ requests
    def forward(self, latents, t, encoder_hidden_states, added: dict | None, compile_options: dict | None = None):
        """Submit one UNet forward of the calling job and wait for its output (called by Backbone.unet_call;
        `compile_options`: run the combined forward through torch.compile, as the job asked)."""
        t = torch.as_tensor(t, device=latents.device)
        t = t.reshape(1).expand(latents.shape[0]) if t.numel() == 1 else t
        payload = dict(latents=latents, t=t, ehs=encoder_hidden_states, added=dict(added or {}),
                       grad=torch.is_grad_enabled(), compile=compile_options)
        return self._submit("forward", payload)

    def grad(self, loss, inputs):
        """Submit one backward pass of the calling job: d loss / d inputs (called by Backbone.unet_grad)."""
        return self._submit("backward", dict(loss=loss, inputs=tuple(inputs)))

    def _submit(self, kind: str, payload: dict):
        member = _member_of_thread()
        request = member.request = _Request(member, kind, payload)
        self._serve_if_ready()
        while not request.done:
            if self.cancelled:
                raise KeyboardInterrupt("job batch cancelled")
            self.cond.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _serve_if_ready(self):
        """When every live job waits on a request, serve them all (combined) and wake everyone."""
        pending = [m.request for m in self.live if m.request is not None and not m.request.done]
        if self.cancelled or not pending or len(pending) < len(self.live):
            return
        forwards = [r for r in pending if r.kind == "forward"]
        groups: dict = {}
        for request in forwards:
            p = request.payload
            key = (_signature(p["latents"]), _signature(p["t"]), _signature(p["ehs"]), p["grad"], repr(p["compile"]),
                   tuple(sorted((k, _signature(v)) for k, v in p["added"].items())))
            groups.setdefault(key, []).append(request)
        for group in groups.values():
            self._serve(group, self._forward)
        backwards = [r for r in pending if r.kind == "backward"]
        if backwards:
            self._serve(backwards, self._backward)
        for request in pending:
            request.member.request = None
        self.cond.notify_all()

    def _serve(self, group: list[_Request], run):
        """Run a group combined. An error inside the combined call (an internal failure: inputs are
        validated before any model work) goes to every job of the group; the other groups go on."""
        try:
            results = run(group)
        except Exception as error:  # noqa: BLE001 — handed to the group's jobs
            results, failure = [None] * len(group), error
        else:
            failure = None
        for request, result in zip(group, results):
            request.result, request.error, request.done = result, failure, True

    def _forward(self, group: list[_Request]) -> list[torch.Tensor]:
        """ONE UNet forward for the concatenated requests of a group."""
        payloads = [r.payload for r in group]
        sizes = [p["latents"].shape[0] for p in payloads]
        added = {key: _cat([p["added"][key] for p in payloads]) for key in payloads[0]["added"]}
        offsets, start = [], 0
        for size in sizes:
            offsets.append(start)
            start += size
        self.segments = [(r.member, o, s) for r, o, s in zip(group, offsets, sizes)]
        try:
            from .backbones.unet import _unet_forward, compiled_forward
            args = (self.unet, _cat([p["latents"] for p in payloads]), _cat([p["t"] for p in payloads]),
                    _cat([p["ehs"] for p in payloads]), added or None)
            options = payloads[0]["compile"]
            with torch.set_grad_enabled(payloads[0]["grad"]):
                out = compiled_forward(args, options) if options is not None else None
                out = _unet_forward(*args) if out is None else out
        finally:
            self.segments = []
        self.calls += 1
        self.evals += start
        return [out[o:o + s] for o, s in zip(offsets, sizes)]

    def _backward(self, group: list[_Request]) -> list[tuple[torch.Tensor, ...]]:
        """ONE backward pass for the summed losses of a group; each job gets its own inputs' gradients."""
        inputs = [x for r in group for x in r.payload["inputs"]]
        grads = torch.autograd.grad(sum(r.payload["loss"] for r in group), inputs)
        self.backward += 1
        out, start = [], 0
        for request in group:
            count = len(request.payload["inputs"])
            out.append(tuple(grads[start:start + count]))
            start += count
        return out

    # ------------------------------------------------------------------ control rules
    def attach(self, controller, attention: bool, feature_layers, modules: dict):
        """Attach a job's controller (Controller.installed under a session): install the dispatchers it needs."""
        member = _member_of_thread()
        if attention and self._saved_processors is None:
            saved = self.unet.attn_processors
            self.unet.set_attn_processor({key: _DispatchProcessor(self, key[: -len(".processor")], proc)
                                          for key, proc in saved.items()})
            self._saved_processors = saved
        for name in feature_layers:
            if name not in self._hooks:
                self._hooks[name] = modules[name].register_forward_hook(_DispatchHook(self, name))
        member.controllers.append(controller)
        return member

    def detach(self, member: _Member, controller):
        if controller in member.controllers:
            member.controllers.remove(controller)

    def _restore(self):
        """Give the UNet back exactly as it was (processors and hooks)."""
        for hook in self._hooks.values():
            hook.remove()
        self._hooks.clear()
        if self._saved_processors is not None:
            self.unet.set_attn_processor(self._saved_processors)
            self._saved_processors = None


class _DispatchProcessor:
    """Runs the original processor on the whole batch unless a job has an active rule at this layer; then
    each job's slice goes through its own controllers' processors (others through the original)."""

    def __init__(self, session: JobSession, name: str, original):
        self.session, self.name, self.original = session, name, original

    @eager_under_compile
    def __call__(self, attn, hidden_states, *args, **kwargs):
        from .control.core import ControlledAttnProcessor
        segments = self.session.segments
        chains = [[c for c in member.controllers if c._rules(self.name, "attention")] for member, _, _ in segments]
        if not any(chains):
            return self.original(attn, hidden_states, *args, **kwargs)
        batch, outs = hidden_states.shape[0], []
        for (member, start, size), controllers in zip(segments, chains):
            processor = self.original
            for controller in controllers:
                processor = ControlledAttnProcessor(controller, self.name, processor)
            stop = start + size
            outs.append(processor(attn, hidden_states[start:stop], *_slice(args, start, stop, batch),
                                  **{k: _slice(v, start, stop, batch) for k, v in kwargs.items()}))
        return torch.cat(outs)


class _DispatchHook:
    """Forward hook: applies each job's feature rules to its own batch slice of the module's output."""

    def __init__(self, session: JobSession, name: str):
        self.session, self.name = session, name

    @eager_under_compile(own_tensors=True)
    def __call__(self, module, inputs, output):
        segments = self.session.segments
        chains = [[c for c in member.controllers if c._rules(self.name, "feature")] for member, _, _ in segments]
        if not any(chains):
            return None
        parts = []
        for (member, start, size), controllers in zip(segments, chains):
            part = output[start:start + size]
            for controller in controllers:
                part = controller.apply_features(self.name, part)
            parts.append(part)
        return torch.cat(parts)
