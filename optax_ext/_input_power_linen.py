"""Input-power capture for Flax linen models: one interceptor on the loss's forward pass.

``flax.linen.intercept_methods`` sees every module call with its arguments;
for ``Dense``, ``DenseGeneral`` (so the projections of
``MultiHeadDotProductAttention``), ``Einsum`` and ``Conv`` it records the
power of the call's input (``_input_power_maths``) under ``stop_gradient``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
from flax import traverse_util

from optax_ext import _input_power_maths as maths

__all__ = ["capture_linen"]

LAYERS = maths.Layers(nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv, "features")
SILENT = maths.silent_layers(nn)


def capture_linen(
  apply_fn: Callable[..., Any], variables: Any, args: tuple, kwargs: dict, norm_order: int
) -> tuple[Any, Any]:
  """Runs ``apply_fn(variables, *args, **kwargs)``; returns its outputs and the tree of powers."""
  if not hasattr(variables, "get") or "params" not in variables:
    raise ValueError(
      "capture_input_power(apply_fn, variables, *args) needs linen variables with a 'params' "
      f"collection, got {type(variables).__name__}; for a Flax NNX model call "
      "capture_input_power(model, *args)"
    )
  records: dict[tuple[str, ...], list] = {}
  kinds: dict[tuple[str, ...], type] = {}
  unsupported: dict[tuple[str, ...], str] = {}

  def interceptor(next_fn, call_args, call_kwargs, context):
    module = context.module
    path = tuple(module.path)
    kinds.setdefault(path, type(module))
    called = call_args or "inputs" in call_kwargs
    if context.method_name == "__call__" and called and type(module) in LAYERS.known:
      power, why = maths.layer_power(LAYERS, module, call_args, call_kwargs, norm_order)
      if power is None:
        unsupported[path] = why
      else:
        records.setdefault(path, []).append(power)
    return next_fn(*call_args, **call_kwargs)

  with nn.intercept_methods(interceptor):
    outputs = apply_fn(variables, *args, **kwargs)

  flat = traverse_util.flatten_dict(variables["params"])
  leaves = maths.power_leaves(flat, records, kinds, unsupported, SILENT, "nn")
  return outputs, traverse_util.unflatten_dict(dict(zip(flat, leaves)))
