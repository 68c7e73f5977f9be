"""Compiled updates (``--compile on|cudagraphs``) and the host-sync guard that keeps the hot loop asynchronous.

Every agent splits its per-env-step ``update`` into a host-side schedule (UTD loop, policy delay, resets: plain
Python on integer counters, never on device tensors) and tensor-only *step functions* named in
``Agent.compiled_methods``. :meth:`dime.agents.Agent.compile_updates` swaps each of those for its ``torch.compile``
version, so the schedule stays readable and bit-identical to eager while the arithmetic runs through Inductor:

* ``on``: ``torch.compile`` with Inductor's default mode (CPU or CUDA). The backward pass and the optimiser
  step are compiled too (AOTAutograd and Dynamo's optimiser support), with a graph break at ``loss.backward()``.
* ``cudagraphs``: additionally records CUDA graphs (``mode="reduce-overhead"``, Inductor's CUDA-graph trees): one
  replay per compiled region, no per-kernel launch cost. The pitfalls, and how they are handled:

  - outputs of a replay live in the graph's memory pool and are overwritten by the next replay, so every compiled
    call starts a new step (``torch.compiler.cudagraph_mark_step_begin``) and its outputs are cloned on return;
    nothing a step function returns is fed back into it;
  - parameters, buffers and optimiser states are static inputs (fixed addresses), and so are the agent's own
    tensor attributes (:func:`mark_state_static`: a temperature, a running statistic); any other input is copied
    into the graph before each replay, and a step function that updates such an input in place makes Inductor
    skip CUDA graphs. A static tensor reassigned instead of updated in place gets a new address and forces a new
    recording (unbounded: Inductor does not count those towards its re-recording limit). Every agent updates its
    state in place; the tests check the addresses on the CPU too;
  - updating state in place inside a compiled step has its own trap: AOTAutograd may recompute, in the backward
    pass, a value derived from that state (it is cheap) and then reads the *updated* state.
    :func:`saved_for_backward` computes such values so that the backward pass uses them as they were;
  - random numbers use the eager generator (``fallback_random``): no Philox state functionalisation, whose
    ``run_and_save_rng_state`` ops make Inductor skip CUDA graphs;
  - a CPU tensor among the inputs makes Inductor skip CUDA graphs: step functions take device tensors and Python
    numbers only.

  :class:`CompileEvents` counts compilations, recordings and skips; the CUDA tests require zero after warm-up.

Random numbers inside compiled code come from the same global generator as in eager mode
(``torch._inductor.config.fallback_random``), so a compiled run reproduces the eager reference up to float
reassociation; ``tests/test_compilation.py`` holds them to a tight tolerance over hundreds of updates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

CompileMode = Literal["off", "on", "cudagraphs"]
COMPILE_MODES: tuple[str, ...] = ("off", "on", "cudagraphs")

aten = torch.ops.aten

#: ATen ops that make the host wait for the device: reading a value (``.item()``, ``bool(t)``, ``if t:``) or an
#: output whose shape depends on data (``nonzero``, boolean-mask indexing, ``unique``).
HOST_SYNC_OPS = frozenset(
    {
        aten._local_scalar_dense.default,
        aten.is_nonzero.default,
        aten.equal.default,
        aten.nonzero.default,
        aten.masked_select.default,
        aten.index.Tensor,  # checked below: only boolean masks are syncs
        aten._unique2.default,
        aten.unique_consecutive.default,
        aten.unique_dim.default,
    }
)


class HostSyncError(RuntimeError):
    """Raised by :class:`ForbidHostSyncs` when code under it would synchronise with the device."""


class ForbidHostSyncs(TorchDispatchMode):
    """Raise on any op that forces a device-to-host synchronisation, on any device.

    ``torch.cuda.set_sync_debug_mode`` only exists on CUDA; this mode checks the same property on the CPU, so the
    tests can hold every algorithm's hot loop (sampling, update, action selection) to it without a GPU.
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in HOST_SYNC_OPS and not (func is aten.index.Tensor and not _has_bool_index(args)):
            raise HostSyncError(f"host synchronisation in the hot loop: {func}")
        return func(*args, **(kwargs or {}))


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def _must_save(*_: Any, **__: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE


#: Selective-checkpoint context that saves the output of every op in its region (nothing is recomputed).
_SAVE_EVERYTHING = functools.partial(create_selective_checkpoint_contexts, _must_save)


def saved_for_backward(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``; when compiled, its results are saved for the backward pass, never recomputed there.

    For constants of the loss (no gradient) derived from state that the same step updates in place afterwards,
    e.g. batch renormalisation's r and d from the running statistics. AOTAutograd's partitioner would otherwise
    recompute such cheap values in the backward pass from the state tensors, which by then hold the new values.
    The region is a selective activation-checkpoint region whose every op is marked must-save (the documented way
    to forbid recomputation); eager mode calls ``function`` directly. ``function`` must not update anything in place.
    """
    if not torch.compiler.is_compiling():
        return function(*args)
    return checkpoint(function, *args, use_reentrant=False, context_fn=_SAVE_EVERYTHING)


def mark_state_static(owner: object) -> None:
    """Declare the tensor attributes of ``owner`` (an agent's temperature, running statistics) static inputs of
    compiled code, like module buffers: CUDA-graph trees then read them in place and allow in-place updates."""
    import torch._dynamo

    for value in vars(owner).values():
        if isinstance(value, torch.Tensor):
            torch._dynamo.mark_static_address(value)


def compile_function(function: Callable, mode: CompileMode, device: torch.device) -> Callable:
    """``function`` compiled for ``mode`` ("on" or "cudagraphs"); see the module docstring."""
    if mode not in ("on", "cudagraphs"):
        raise ValueError(f"unknown compile mode {mode!r}; valid choices: {', '.join(COMPILE_MODES)}")
    if mode == "cudagraphs" and device.type != "cuda":
        raise ValueError(f"compile mode 'cudagraphs' needs a CUDA device, got {device}; use --compile on")
    import torch._inductor.config as inductor_config  # here: importing Inductor slows down every CLI start

    inductor_config.fallback_random = True
    if mode == "on":
        return torch.compile(function)
    compiled = torch.compile(function, mode="reduce-overhead")

    @functools.wraps(function)
    def replay(*args: Any, **kwargs: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        return tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, compiled(*args, **kwargs))

    return replay


class CompileEvents:
    """Counts, while active (``with events:``; re-entrant, accumulates), what a steady-state loop must not do:

    * ``compilations``: Dynamo frame compilations and lazy backward compilations (a recompilation after warm-up);
    * ``recordings``: CUDA-graph recordings (a re-recording after warm-up);
    * ``skips``: regions Inductor decided to run without CUDA graphs (``counters["inductor"]["cudagraph_skips"]``;
      the reason is logged by ``torch._inductor.cudagraph_utils`` at warning level).

    Uses Dynamo's compile-callback hooks (``torch._dynamo.callback``), which report CUDA-graph recordings since
    torch 2.6; where a torch lacks them, ``recordings`` stays ``None`` (unknown) instead of a false zero.
    """

    def __init__(self) -> None:
        from torch._dynamo.callback import CallbackTrigger

        self._recording = getattr(CallbackTrigger, "CUDAGRAPH_RECORDING", None)
        self.compilations = 0
        self.recordings: int | None = 0 if self._recording is not None else None
        self.skips = 0
        self._skips_at_enter = 0

    def _on_start(self, args: Any) -> None:
        if args.callback_trigger == self._recording:
            self.recordings = (self.recordings or 0) + 1
        elif args.callback_trigger.name in ("DYNAMO", "LAZY_BACKWARD"):
            self.compilations += 1

    def __enter__(self) -> CompileEvents:
        from torch._dynamo.callback import callback_handler
        from torch._dynamo.utils import counters

        self._skips_at_enter = counters["inductor"]["cudagraph_skips"]
        callback_handler.register_start_callback(self._on_start)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        from torch._dynamo.callback import callback_handler
        from torch._dynamo.utils import counters

        callback_handler.remove_start_callback(self._on_start)
        self.skips += counters["inductor"]["cudagraph_skips"] - self._skips_at_enter

    def total(self) -> int:
        return self.compilations + (self.recordings or 0) + self.skips

    def describe(self) -> str:
        recordings = "unknown (this torch does not report them)" if self.recordings is None else self.recordings
        return f"{self.compilations} compilations, {recordings} CUDA-graph recordings, {self.skips} CUDA-graph skips"
