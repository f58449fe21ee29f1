"""Capture each layer's input power from a Flax (linen) model in its forward pass.

INSGD (:func:`optax_ext.insgd`) divides a layer's gradient by the log of
:math:`m_t`, the mean of :math:`\\|x\\|_q^q` over the layer's input vectors in
the batch. For a dense layer the input vector is the input row (the last axis;
every leading axis counts as batch). For a convolution the neuron is applied
at every output position, and its input vector there is the receptive-field
patch of ``kh·kw·C_in/groups`` values (zero padding included as zeros), so
:math:`m_t` is the mean over samples *and output positions* of the patch's
:math:`\\|\\cdot\\|_q^q`.

No patch is built. The mean over output positions of the patch sums equals a
weighted sum of :math:`|x|^q` over the input, where an input position's weight
is the number of windows that contain it. That count depends only on shapes,
strides, padding and dilations, and separates over spatial axes, so it is
computed once in NumPy when the function is traced; at run time the capture is
a single multiply-and-reduce pass over each layer's input.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax

from optax_ext.insgd import InputPower

__all__ = ["capture_input_power"]

_warned: set[str] = set()

# Layers whose parameters are deliberately not normalised: normalisation
# layers (the published code also leaves them to plain SGD). Their parameters
# get ``None`` without a warning; the biases of Dense/Conv do too.
_SILENT = tuple(
  getattr(nn, name)
  for name in ("BatchNorm", "LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm")
  if hasattr(nn, name)
)


def _power_dtype(x: jax.Array) -> jnp.dtype:
  """The dtype powers are computed in: the input's, at least float32."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _power_map(x: jax.Array, q: int) -> jax.Array:
  x = x.astype(_power_dtype(x))
  return jnp.abs(x) if q == 1 else jnp.square(x)


def _dense_power(x: jax.Array, q: int) -> jax.Array:
  """Mean over every leading axis of ``‖row‖_q^q`` (the row is the last axis)."""
  # Batch axes first: a reduction along the major axis vectorises well, one
  # straight to a scalar does not.
  v = _power_map(x, q).reshape(-1, x.shape[-1])
  return jnp.sum(jnp.sum(v, axis=0)) / max(1, v.shape[0])


def _as_tuple(v, n: int) -> tuple[int, ...]:
  if v is None:
    return (1,) * n
  if isinstance(v, int):
    return (v,) * n
  return tuple(int(a) for a in v)


def _window_counts(n: int, k: int, stride: int, dil: int, base: int, pad) -> tuple[np.ndarray, int]:
  """How many windows of one spatial axis contain each of its ``n`` inputs.

  Follows ``lax.conv_general_dilated``: the input is dilated by ``base``
  (input dilation), padded by ``pad = (lo, hi)`` (possibly negative), then
  windows of ``k`` taps ``dil`` apart start every ``stride`` positions.
  Returns the counts and the number of output positions.
  """
  lo, hi = pad
  length = (n - 1) * base + 1 + lo + hi
  span = (k - 1) * dil + 1
  out = (length - span) // stride + 1 if length >= span else 0
  taps = (np.arange(out)[:, None] * stride + np.arange(k)[None, :] * dil).ravel()
  per_slot = np.bincount(taps, minlength=max(length, 0))
  where = lo + np.arange(n) * base  # each input's slot in the padded, dilated axis
  inside = (where >= 0) & (where < length)
  counts = np.zeros(n)
  counts[inside] = per_slot[where[inside]]
  return counts, out


def _conv_pads(padding, kernel, strides, dilation, spatial):
  """How Flax pads a convolution: ``(pre, mode, lax_pads)``, or ``None`` if unknown.

  Flax pads some modes itself (on the undilated input) and then runs a
  'VALID' convolution: ``pre`` is that padding per axis, ``mode`` its numpy
  pad mode, and ``lax_pads`` the padding ``lax.conv_general_dilated`` adds.
  """
  n = len(kernel)
  spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
  if isinstance(padding, int):
    return [(0, 0)] * n, "constant", [(padding, padding)] * n
  if not isinstance(padding, str):
    lax_pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    return ([(0, 0)] * n, "constant", lax_pads) if len(lax_pads) == n else None
  name = padding.upper()
  if name in ("CIRCULAR", "REFLECT"):
    pre = [((s - 1) // 2, s // 2) for s in spans]
    return pre, "wrap" if name == "CIRCULAR" else "reflect", [(0, 0)] * n
  if name == "CAUSAL":
    return ([(dilation[0] * (kernel[0] - 1), 0)], "constant", [(0, 0)]) if n == 1 else None
  try:  # as lax.conv_general_dilated does: from the undilated input shape
    return [(0, 0)] * n, "constant", list(lax.padtype_to_pads(spatial, spans, strides, padding))
  except Exception:  # noqa: BLE001 - an unknown mode is reported, not raised
    return None


def _conv_geometry(module: nn.Conv, spatial: tuple[int, ...]):
  """Window counts per input position, and the number of output positions.

  The sum over output positions of the patch powers is the sum over input
  positions of ``|x|^q`` times these counts. Returns ``(counts, outputs)``,
  the counts shaped like the input's spatial axes plus a trailing 1, or
  ``None`` for a padding the capture does not know.
  """
  kernel = _as_tuple(module.kernel_size, 1)  # an int kernel_size means a 1-D convolution
  n = len(kernel)
  strides = _as_tuple(module.strides, n)
  dilation = _as_tuple(module.kernel_dilation, n)
  base = _as_tuple(module.input_dilation, n)
  pads = _conv_pads(module.padding, kernel, strides, dilation, spatial)
  if pads is None:
    return None
  pre, mode, lax_pads = pads
  weights = np.ones(())
  outputs = 1
  for axis in range(n):
    size = spatial[axis]
    a, b = pre[axis]
    counts, out = _window_counts(
      size + a + b, kernel[axis], strides[axis], dilation[axis], base[axis], lax_pads[axis]
    )
    if a or b:  # fold the pre-padded slots back onto the inputs they copy
      if mode == "constant":
        src = np.concatenate([np.full(a, -1), np.arange(size), np.full(b, -1)])
      else:
        src = np.pad(np.arange(size), (a, b), mode=mode)
      keep = src >= 0
      counts = np.bincount(src[keep], weights=counts[keep], minlength=size)
    weights = np.multiply.outer(weights, counts)
    outputs *= out
  return weights[..., None], outputs


def _conv_power(module: nn.Conv, x: jax.Array, q: int) -> Optional[jax.Array]:
  """Mean over samples and output positions of ``‖patch‖_q^q``, per feature group.

  Returns a scalar for an ungrouped convolution; with ``feature_group_count
  = G > 1`` a vector over the ``features`` output channels, each holding its
  group's power; ``None`` when the padding mode is not supported.
  """
  n = 1 if isinstance(module.kernel_size, int) else len(module.kernel_size)
  x = x.reshape((-1,) + x.shape[x.ndim - n - 1 :])  # (batch, *spatial, C), as flax does
  geometry = _conv_geometry(module, tuple(x.shape[1:-1]))
  if geometry is None:
    return None
  counts, outputs = geometry  # integer counts, exact in float32 and wider; divide once at the end
  # Sum over the batch first (fast, see _dense_power), then weight the positions.
  v = jnp.sum(_power_map(x, q), axis=0) * jnp.asarray(counts, _power_dtype(x))
  denominator = float(max(x.shape[0] * outputs, 1))
  groups = module.feature_group_count
  if groups == 1:
    return jnp.sum(v) / denominator
  per_channel = jnp.sum(v, axis=tuple(range(v.ndim - 1)))
  per_group = per_channel.reshape(groups, -1).sum(-1) / denominator
  return jnp.repeat(per_group, module.features // groups)


def _layer_power(module: nn.Module, x: jax.Array, q: int) -> Optional[jax.Array]:
  """The input power of one call of an ``nn.Dense`` or ``nn.Conv``; ``None`` if unsupported."""
  if type(module) is nn.Dense:
    return _dense_power(x, q)
  if getattr(module, "mask", None) is not None:
    return None
  return _conv_power(module, x, q)


def _power_tree(params, records, kinds, unsupported):
  """The power at each recorded kernel (mean of its calls), ``None`` elsewhere.

  Warns once for each layer whose parameters get no power for a reason a user
  may not expect (docs/design.md, INSGD — Input vectors and capture).
  """
  power = {}
  for key in traverse_util.flatten_dict(params):
    module_path, name = key[:-1], key[-1]
    if name == "kernel" and module_path in records:
      vals = records[module_path]
      power[key] = vals[0] if len(vals) == 1 else sum(vals) / len(vals)
      continue
    power[key] = None
    kind = kinds.get(module_path)
    known = module_path in records and name == "bias"
    if not (known or (kind is not None and issubclass(kind, _SILENT))):
      _warn_no_power(module_path, kind, module_path in unsupported)
  return traverse_util.unflatten_dict(power)


def _warn_no_power(module_path, kind, unsupported: bool) -> None:
  where = "/".join(module_path) or "<top level>"
  what = (
    "an unsupported nn.Conv (mask or padding)"
    if unsupported
    else (f"a {kind.__name__}" if kind is not None else "a module whose call was not seen")
  )
  _warn_once(
    f"capture_input_power: the parameters of layer {where} ({what}) get no input power; "
    "INSGD updates them as plain SGD"
  )


def _warn_once(message: str) -> None:
  if message not in _warned:
    _warned.add(message)
    warnings.warn(message, stacklevel=5)  # the caller of capture_input_power


def capture_input_power(
  apply_fn: Callable[..., Any],
  variables: Any,
  *args: Any,
  norm_order: int = 2,
  **apply_kwargs: Any,
) -> tuple[Any, Any]:
  r"""Runs ``apply_fn(variables, *args, **apply_kwargs)`` and records input powers.

  For each ``nn.Dense`` and ``nn.Conv`` kernel it records

  .. math::
    m_t = \frac{1}{|B|}\sum_{x \in B} \|x\|_q^q

  where :math:`B` is the set of the layer's input vectors in this batch: the
  rows of a dense layer's input (all leading axes are batch), or, for a
  convolution, the receptive-field patches at every output position of every
  sample (per feature group for grouped/depthwise convolutions). The values
  are computed under ``stop_gradient`` in the same forward pass, without
  building patches, so this can sit inside a loss given to
  ``jax.value_and_grad`` (return the power as auxiliary output).

  Args:
    apply_fn: A Flax ``Module.apply`` (or an unjitted function calling one).
    variables: The model's variables, with a ``'params'`` collection.
    *args: Positional arguments of ``apply_fn`` after ``variables``.
    norm_order: q in :math:`\|x\|_q^q`: 2 (INSGD-ℓ2) or 1 (INSGD-ℓ1). This
      is the one place the order is said: the result carries it to
      :func:`optax_ext.insgd`, which refuses a power of another order if it was
      given one itself.
    **apply_kwargs: Keyword arguments of ``apply_fn`` (``train``, ``rngs``,
      ``mutable``, ...).

  Returns:
    ``(outputs, input_power)``: ``outputs`` is exactly what ``apply_fn``
    returned (``(y, mutated_variables)`` when ``mutable`` is given);
    ``input_power`` is an :class:`~optax_ext.insgd.InputPower` holding
    ``norm_order`` and ``powers``, a tree with the structure of
    ``variables['params']``: :math:`m_t` (a scalar, or a vector over the
    output features for a convolution with ``feature_group_count > 1``, in the
    layer input's dtype, at least float32) at each Dense/Conv kernel and
    ``None`` at every other leaf. A layer called several times gets the mean
    of its calls.

  Raises:
    ValueError: if ``norm_order`` is not 1 or 2.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> import optax_ext
    >>> model = nn.Conv(4, (3, 3), padding='VALID')
    >>> x = jnp.ones((2, 5, 5, 2))
    >>> variables = model.init(jax.random.key(0), x)
    >>> y, power = optax_ext.capture_input_power(model.apply, variables, x)
    >>> print(power.powers['kernel'])  # each 3x3x2 patch of ones has squared norm 18
    18.0
    >>> print(power.powers['bias'], power.norm_order)
    None 2

  .. warning::
    Parameters of any other layer (``nn.Einsum``, ``nn.DenseGeneral``,
    ``nn.ConvTranspose``, ``nn.Embed``, a custom module's own ``self.param``,
    a ``nn.Conv`` with a ``mask`` or an unknown padding) are left ``None``,
    so INSGD updates them as plain SGD, and a warning names the layer (once
    per layer and process). Normalisation layers (BatchNorm, LayerNorm, ...)
    and Dense/Conv biases are left ``None`` silently. Layers run inside lifted
    transforms (``nn.scan``, ``nn.vmap``, ``nn.remat``) or a jitted
    ``apply_fn`` are not supported.
  """
  if norm_order not in (1, 2):
    raise ValueError(f"norm_order must be 1 or 2, got {norm_order!r}")
  records: dict[tuple[str, ...], list] = {}
  kinds: dict[tuple[str, ...], type] = {}
  unsupported: set[tuple[str, ...]] = set()

  def interceptor(next_fn, call_args, call_kwargs, context):
    module = context.module
    path = tuple(module.path)
    kinds.setdefault(path, type(module))
    if context.method_name == "__call__" and call_args and type(module) in (nn.Dense, nn.Conv):
      p = _layer_power(module, lax.stop_gradient(call_args[0]), norm_order)
      if p is None:
        unsupported.add(path)
      else:
        records.setdefault(path, []).append(p)
    return next_fn(*call_args, **call_kwargs)

  with nn.intercept_methods(interceptor):
    outputs = apply_fn(variables, *args, **apply_kwargs)

  power = _power_tree(variables["params"], records, kinds, unsupported)
  return outputs, InputPower(power, norm_order)
