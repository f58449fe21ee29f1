"""Input-power capture for Flax NNX models, in the loss's forward pass.

NNX has no method interceptor; as ``nnx.capture(..., method_outputs=...)``
does, the capture wraps the ``__call__`` of ``nnx.Linear``, ``nnx.Conv``,
``nnx.LinearGeneral`` and ``nnx.Einsum`` (so the projections of
``nnx.MultiHeadAttention``) while it runs, and restores them after. A wrapped
call records only for the model being captured, in the thread capturing it
(a context variable), and otherwise passes straight through.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from typing import Any, Optional

from flax import nnx

from optax_ext import _input_power_maths as maths

__all__ = ["capture_nnx"]

LAYERS = maths.Layers(nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Conv, "out_features")
SILENT = maths.silent_layers(nnx)

_recorder: contextvars.ContextVar[Optional["_Recorder"]] = contextvars.ContextVar(
  "optax_ext_nnx_input_power", default=None
)
_lock = threading.Lock()
_originals: dict[type, Any] = {}
_depth = [0]


class _Recorder:
  """The powers of one capture: by module path, from the modules' identities."""

  def __init__(self, model: nnx.Module, norm_order: int):
    self.norm_order = norm_order
    self.paths: dict[int, tuple] = {}
    self.kinds: dict[tuple, type] = {}
    for path, node in nnx.iter_graph(model):
      if isinstance(node, nnx.Module):
        self.paths.setdefault(id(node), tuple(path))
        self.kinds.setdefault(tuple(path), type(node))
    self.records: dict[tuple, list] = {}
    self.unsupported: dict[tuple, str] = {}

  def record(self, module: nnx.Module, args: tuple, kwargs: dict) -> None:
    path = self.paths.get(id(module))
    if (
      path is None or type(module) not in LAYERS.known
    ):  # a copy inside a lifted transform, a subclass
      return
    power, why = maths.layer_power(LAYERS, module, args, kwargs, self.norm_order)
    if power is None:
      self.unsupported[path] = why
    else:
      self.records.setdefault(path, []).append(power)


def _wrap(call):
  @functools.wraps(call)
  def recording_call(self, *args, **kwargs):
    recorder = _recorder.get()
    if recorder is not None and (args or "inputs" in kwargs):
      recorder.record(self, args, kwargs)
    return call(self, *args, **kwargs)

  return recording_call


@contextlib.contextmanager
def _hooks():
  """Wraps the known layers' ``__call__`` while any capture runs (nested and threaded too)."""
  with _lock:
    if _depth[0] == 0:
      for cls in LAYERS.known:
        _originals[cls] = cls.__dict__["__call__"]
        cls.__call__ = _wrap(_originals[cls])
    _depth[0] += 1
  try:
    yield
  finally:
    with _lock:
      _depth[0] -= 1
      if _depth[0] == 0:
        for cls, call in _originals.items():
          cls.__call__ = call
        _originals.clear()


def capture_nnx(
  model: nnx.Module, args: tuple, kwargs: dict, norm_order: int, wrt: Any
) -> tuple[Any, nnx.State]:
  """Runs ``model(*args, **kwargs)``; returns its outputs and the powers, shaped like
  ``nnx.state(model, wrt)`` with plain arrays (``nnx.as_pure``) and ``None`` leaves."""
  recorder = _Recorder(model, norm_order)
  token = _recorder.set(recorder)
  try:
    with _hooks():
      outputs = model(*args, **kwargs)
  finally:
    _recorder.reset(token)
  flat = list(nnx.to_flat_state(nnx.state(model, wrt)))
  paths = [tuple(path) for path, _ in flat]
  leaves = maths.power_leaves(
    paths, recorder.records, recorder.kinds, recorder.unsupported, SILENT, "nnx"
  )
  return outputs, nnx.from_flat_state(list(zip(paths, leaves)))
