"""Compiled updates (``--compile on|cudagraphs``) and the host-sync guard that keeps the hot loop asynchronous.

Every agent splits its per-env-step ``update`` into a host-side schedule (UTD loop, policy delay, resets: plain
Python on integer counters, never on device tensors) and tensor-only *step functions* named in
``Agent.compiled_methods``. :meth:`dime.agents.Agent.compile_updates` swaps each of those for its ``torch.compile``
version, so the schedule stays readable and bit-identical to eager while the arithmetic runs through Inductor:

* ``on``: ``torch.compile`` with Inductor's default mode (CPU or CUDA). The backward pass and the optimiser
  step are compiled too (AOTAutograd and Dynamo's optimiser support), with a graph break at ``loss.backward()``.
* ``cudagraphs``: additionally records CUDA graphs (``mode="reduce-overhead"``): one replay per compiled region,
  no per-kernel launch cost. Outputs of a replay are overwritten by the next one, so they are cloned on return.

Random numbers inside compiled code come from the same global generator as in eager mode
(``torch._inductor.config.fallback_random``), so a compiled run reproduces the eager reference up to float
reassociation; ``tests/test_compilation.py`` holds them to a tight tolerance over hundreds of updates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

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
