"""Capture each layer's input power from a Flax (linen) model in its forward pass.

INSGD (:func:`optax_ext.insgd`) divides a layer's gradient by the log of the
mean q-th power of the q-norm of the layer's input vectors. For a dense layer
the input vector is the input row; for a convolution it is the receptive-field
patch of ``kh·kw·C_in/groups`` values. :func:`capture_input_power` records
these while the model computes its output, without building patches: it sums
``|x|^q`` over each group's input channels, then sums that map over the
convolution's window with the convolution's own strides, padding and
dilations (``lax.reduce_window``), so the cost is one cheap pass over each
layer's input.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from jax import lax

_warned: set[str] = set()


def _dense_power(x: jax.Array, q: int) -> jax.Array:
  v = jnp.abs(x) if q == 1 else jnp.square(x)
  return jnp.mean(jnp.sum(v.astype(jnp.float32), axis=-1))


def _pads(padding, spatial, window, strides, dilation, base_dilation):
  if isinstance(padding, str):
    if padding in ("SAME", "VALID", "SAME_LOWER"):
      # As lax.conv_general_dilated does: from the undilated input shape.
      del base_dilation
      eff = tuple((k - 1) * d + 1 for k, d in zip(window, dilation))
      return lax.padtype_to_pads(tuple(spatial), eff, strides, padding)
    return None  # CIRCULAR, REFLECT, CAUSAL: not supported
  if isinstance(padding, int):
    return [(padding, padding)] * len(spatial)
  pads = []
  for p in padding:
    pads.append((p, p) if isinstance(p, int) else tuple(p))
  return pads if len(pads) == len(spatial) else None


def _as_tuple(v, n):
  if v is None:
    return (1,) * n
  if isinstance(v, int):
    return (v,) * n
  return tuple(v)


def conv_power(module: nn.Conv, x: jax.Array, q: int):
  """Mean over batch and output positions of ``‖patch‖_q^q``, per feature group.

  Returns a scalar for ungrouped convolutions, else a vector over the output
  features (each feature gets its group's power), or None if the padding mode
  is not supported.
  """
  kernel_size = tuple(module.kernel_size)
  n = len(kernel_size)
  x = x.reshape((-1,) + x.shape[-n - 1 :])  # (batch, *spatial, C)
  groups = module.feature_group_count
  c = x.shape[-1]
  v = jnp.abs(x) if q == 1 else jnp.square(x)
  v = v.astype(jnp.float32).reshape(x.shape[:-1] + (groups, c // groups)).sum(-1)
  strides = _as_tuple(module.strides, n)
  dilation = _as_tuple(module.kernel_dilation, n)
  base = _as_tuple(module.input_dilation, n)
  pads = _pads(module.padding, x.shape[1:-1], kernel_size, strides, dilation, base)
  if pads is None:
    return None
  summed = lax.reduce_window(
    v,
    0.0,
    lax.add,
    window_dimensions=(1, *kernel_size, 1),
    window_strides=(1, *strides, 1),
    padding=((0, 0), *pads, (0, 0)),
    base_dilation=(1, *base, 1),
    window_dilation=(1, *dilation, 1),
  )
  per_group = jnp.mean(summed, axis=tuple(range(summed.ndim - 1)))
  if groups == 1:
    return per_group[0]
  return jnp.repeat(per_group, module.features // groups)


def _warn_once(message: str) -> None:
  if message not in _warned:
    _warned.add(message)
    warnings.warn(message, stacklevel=3)


def capture_input_power(
  apply_fn: Callable[..., Any],
  variables: Any,
  *args: Any,
  norm_order: int = 2,
  **apply_kwargs: Any,
) -> tuple[Any, Any]:
  r"""Runs ``apply_fn(variables, *args, **apply_kwargs)`` and records input powers.

  Args:
    apply_fn: A Flax ``Module.apply`` (or a function calling one).
    variables: The model's variables, with a ``'params'`` collection.
    *args: Positional arguments of ``apply_fn`` after ``variables``.
    norm_order: q in :math:`\|x\|_q^q`: 2 (INSGD-ℓ2) or 1 (INSGD-ℓ1).
    **apply_kwargs: Keyword arguments of ``apply_fn`` (``train``, ``rngs``,
      ``mutable``, ...).

  Returns:
    ``(outputs, input_power)``: ``outputs`` is exactly what ``apply_fn``
    returned; ``input_power`` has the structure of ``variables['params']``, with
    the batch-mean power of the layer's input (under ``stop_gradient``) at each
    ``nn.Dense`` / ``nn.Conv`` kernel and ``None`` elsewhere. A convolution
    with ``feature_group_count > 1`` gets one value per output feature (its
    group's power). Kernels of other layer types are left ``None`` with a
    warning (once per layer path), never silently mis-normalised. A layer
    called several times gets the mean of its calls.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> import optax_ext
    >>> model = nn.Conv(4, (3, 3), padding='VALID')
    >>> x = jnp.ones((2, 5, 5, 2))
    >>> variables = model.init(jax.random.key(0), x)
    >>> y, power = optax_ext.capture_input_power(model.apply, variables, x)
    >>> print(power['kernel'])  # each 3x3x2 patch of ones has squared norm 18
    18.0
  """
  if norm_order not in (1, 2):
    raise ValueError(f"norm_order must be 1 or 2, got {norm_order!r}")
  records: dict[tuple[str, ...], list] = {}
  unsupported: set[tuple[str, ...]] = set()

  def interceptor(next_fn, call_args, call_kwargs, context):
    module = context.module
    if context.method_name == "__call__" and call_args:
      path = tuple(module.path)
      x = lax.stop_gradient(call_args[0])
      if type(module) is nn.Dense:
        records.setdefault(path, []).append(_dense_power(x, norm_order))
      elif type(module) is nn.Conv:
        p = conv_power(module, x, norm_order)
        if p is None:
          unsupported.add(path)
        else:
          records.setdefault(path, []).append(p)
    return next_fn(*call_args, **call_kwargs)

  with nn.intercept_methods(interceptor):
    outputs = apply_fn(variables, *args, **apply_kwargs)

  flat = traverse_util.flatten_dict(variables["params"])
  power = {}
  for key in flat:
    module_path, name = key[:-1], key[-1]
    if name == "kernel" and module_path in records:
      vals = records[module_path]
      power[key] = vals[0] if len(vals) == 1 else sum(vals) / len(vals)
    else:
      power[key] = None
      if name == "kernel" or module_path in unsupported:
        _warn_once(
          f"capture_input_power: layer {'/'.join(module_path)} is not a supported "
          "nn.Dense/nn.Conv (or uses an unsupported padding mode); its parameters "
          "are left unnormalised"
        )
  return outputs, traverse_util.unflatten_dict(power)
