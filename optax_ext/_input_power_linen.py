"""Input-power capture for Flax linen models: one interceptor on the loss's forward pass.

``flax.linen.intercept_methods`` sees every module call with its arguments;
for ``Dense``, ``DenseGeneral`` (so the projections of
``MultiHeadDotProductAttention``), ``Einsum`` and ``Conv`` it records the
power of the call's input (``_input_power_maths``) under ``stop_gradient``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
from flax import traverse_util
from jax import lax

from optax_ext import _input_power_maths as maths

__all__ = ["capture_linen"]

# Parameters left ``None`` on purpose, without a warning: normalisation layers
# (the published code leaves them to plain SGD) and embedding tables, indexed,
# not contracted (also when ``Embed.attend`` ties them to the output).
SILENT = tuple(
  getattr(nn, name)
  for name in ("BatchNorm", "LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm", "Embed")
  if hasattr(nn, name)
)
KNOWN = (nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv)


def _einsum_equation(module: nn.Einsum, args: tuple, kwargs: dict) -> Optional[str]:
  if len(args) > 1 and args[1] is not None:
    return args[1]
  return kwargs.get("einsum_str") or module.einsum_str


def layer_power(module: nn.Module, args: tuple, kwargs: dict, q: int):
  """``(power, None)`` for one call of a known layer, or ``(None, why it has none)``."""
  x = lax.stop_gradient(args[0] if args else kwargs["inputs"])
  kind = type(module)
  if kind is nn.Dense:
    return maths.contraction_power(x, (x.ndim - 1,), q), None
  if kind is nn.DenseGeneral:
    return maths.contraction_power(x, maths.normalize_axes(module.axis, x.ndim), q), None
  if kind is nn.Einsum:
    equation = _einsum_equation(module, args, kwargs)
    return maths.einsum_power(x, equation, q)
  return maths.conv_layer_power(module, module.features, x, q)


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
    if context.method_name == "__call__" and called and type(module) in KNOWN:
      power, why = layer_power(module, call_args, call_kwargs, norm_order)
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
