"""The input power of one layer call, from the layer's input and its geometry.

Framework-free: the linen and NNX captures (``_input_power_linen``,
``_input_power_nnx``) read each layer's settings and call these. The input
vector of a neuron is the set of input values its output contracts with
(docs/design.md, INSGD — Input vectors and capture):

- a contraction (``Dense``/``Linear``, ``DenseGeneral``/``LinearGeneral``,
  ``Einsum``): the values on the contracted axes, every other input axis
  being a sample, so :math:`m_t = \\frac{1}{S}\\sum_x |x|^q` with :math:`S` the
  number of samples (the input's size over the contracted size);
- a convolution: the receptive-field patch, weighted as below.

No patch, transpose or copy of the input is built: each power is one
multiply-and-reduce pass over the layer's input.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
  "ConvGeometry",
  "contraction_power",
  "Layers",
  "SILENT_NAMES",
  "conv_power",
  "einsum_contracted_axes",
  "layer_power",
  "normalize_axes",
  "power_leaves",
  "silent_layers",
  "warn_once",
]

_warned: set[str] = set()


def _power_dtype(x: jax.Array) -> jnp.dtype:
  """The dtype powers are computed in: the input's, at least float32."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _power_map(x: jax.Array, q: int) -> jax.Array:
  x = x.astype(_power_dtype(x))
  return jnp.abs(x) if q == 1 else jnp.square(x)


def normalize_axes(axes: Any, ndim: int) -> tuple[int, ...]:
  """``axes`` (an int or a sequence, possibly negative) as sorted non-negative ints."""
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(sorted(int(a) % ndim for a in axes))


def contraction_power(x: jax.Array, contracted: Sequence[int], q: int) -> jax.Array:
  """Mean over samples of ``‖x‖_q^q`` on the ``contracted`` axes; every other axis is a sample.

  The sample axes are summed first: a reduction along major axes vectorises
  well, one straight to a scalar does not.
  """
  samples = tuple(a for a in range(x.ndim) if a not in contracted)
  count = int(np.prod([x.shape[a] for a in samples], dtype=np.int64))
  v = _power_map(x, q)
  if samples:
    v = jnp.sum(v, axis=samples)
  return jnp.sum(v) / max(1, count)


def einsum_contracted_axes(equation: str, ndim: int) -> Optional[tuple[int, ...]]:
  """The input axes an ``Einsum`` layer contracts with its kernel, or ``None`` if unreadable.

  ``equation`` is ``'<input>,<kernel>-><output>'``; a letter of the input
  that the kernel has and the output lacks is contracted. Input letters kept
  in the output (shared with the kernel or not) are samples; an ellipsis in
  the input covers sample axes. ``None`` for what has no single input vector:
  a repeated input letter (a diagonal), an input letter summed without the
  kernel, an ellipsis on both operands, or no contracted axis at all.
  """
  spec = equation.replace(" ", "")
  try:
    lhs, rest = spec.split(",")
    rhs, out = rest.split("->")
  except ValueError:
    return None
  letters = lhs.replace("...", "")
  if len(set(letters)) != len(letters) or ("..." in lhs and "..." in rhs):
    return None
  if "..." in lhs:
    before, after = lhs.split("...")
    axis_of = {c: i for i, c in enumerate(before)}
    axis_of.update({c: ndim - len(after) + i for i, c in enumerate(after)})
  elif len(lhs) == ndim:
    axis_of = {c: i for i, c in enumerate(lhs)}
  else:
    return None
  if any(c not in rhs and c not in out for c in letters):
    return None
  contracted = tuple(sorted(axis_of[c] for c in letters if c in rhs and c not in out))
  return contracted or None


class ConvGeometry(NamedTuple):
  """The settings of a convolution layer that shape its receptive fields."""

  kernel_size: Any  # an int means a 1-D convolution
  strides: Any
  padding: Any
  input_dilation: Any
  kernel_dilation: Any
  feature_group_count: int
  features: int  # output channels


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


def _conv_window_weights(geometry: ConvGeometry, spatial: tuple[int, ...]):
  """Window counts per input position, and the number of output positions.

  The sum over output positions of the patch powers is the sum over input
  positions of ``|x|^q`` times these counts. Returns ``(counts, outputs)``,
  the counts shaped like the input's spatial axes plus a trailing 1, or
  ``None`` for a padding the capture does not know.
  """
  kernel = _as_tuple(geometry.kernel_size, 1)
  n = len(kernel)
  strides = _as_tuple(geometry.strides, n)
  dilation = _as_tuple(geometry.kernel_dilation, n)
  base = _as_tuple(geometry.input_dilation, n)
  pads = _conv_pads(geometry.padding, kernel, strides, dilation, spatial)
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


def conv_power(geometry: ConvGeometry, x: jax.Array, q: int) -> Optional[jax.Array]:
  """Mean over samples and output positions of ``‖patch‖_q^q``, per feature group.

  The mean over output positions of the patch sums equals a weighted sum of
  :math:`|x|^q` over the input, where an input position's weight is the number
  of windows that contain it. That count depends only on shapes, strides,
  padding and dilations, and separates over spatial axes, so it is computed
  once in NumPy when the function is traced.

  Returns a scalar for an ungrouped convolution; with ``feature_group_count
  = G > 1`` a vector over the output channels, each holding its group's
  power; ``None`` when the padding mode is not supported.
  """
  n = 1 if isinstance(geometry.kernel_size, int) else len(geometry.kernel_size)
  x = x.reshape((-1,) + x.shape[x.ndim - n - 1 :])  # (batch, *spatial, C), as flax does
  weights = _conv_window_weights(geometry, tuple(x.shape[1:-1]))
  if weights is None:
    return None
  counts, outputs = weights  # integer counts, exact in float32 and wider; divide once at the end
  # Sum over the batch first (fast, see contraction_power), then weight the positions.
  v = jnp.sum(_power_map(x, q), axis=0) * jnp.asarray(counts, _power_dtype(x))
  denominator = float(max(x.shape[0] * outputs, 1))
  groups = geometry.feature_group_count
  if groups == 1:
    return jnp.sum(v) / denominator
  per_channel = jnp.sum(v, axis=tuple(range(v.ndim - 1)))
  per_group = per_channel.reshape(groups, -1).sum(-1) / denominator
  return jnp.repeat(per_group, geometry.features // groups)


#: Layers left ``None`` on purpose, without a warning, in either API: normalisation layers
#: (the published code leaves them to plain SGD) and embedding tables, indexed, not
#: contracted (also when ``Embed.attend`` ties them to the output).
SILENT_NAMES = ("BatchNorm", "LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm", "Embed")


class Layers(NamedTuple):
  """One Flax API's layer classes whose input power is known, and its conv's channel attribute."""

  dense: type  # contracts the last input axis
  general: type  # contracts the input axes ``module.axis``
  einsum: type  # contracts what its equation says
  conv: type
  conv_features: str  # name of the conv's output-channel count

  @property
  def known(self) -> tuple[type, ...]:
    return (self.dense, self.general, self.einsum, self.conv)


def silent_layers(namespace: Any) -> tuple[type, ...]:
  """The classes of :data:`SILENT_NAMES` that ``namespace`` (``flax.linen`` or ``nnx``) has."""
  return tuple(getattr(namespace, n) for n in SILENT_NAMES if hasattr(namespace, n))


def layer_power(layers: Layers, module: Any, args: tuple, kwargs: dict, q: int):
  """``(power, None)`` for one call of a known layer, or ``(None, why it has none)``.

  Linen and NNX layers take their input first (or as ``inputs=``), an einsum its
  equation second (or as ``einsum_str=``, else its own), and hold a convolution's
  geometry under the same attribute names.
  """
  x = lax.stop_gradient(args[0] if args else kwargs["inputs"])
  kind = type(module)
  if kind is layers.dense:
    return contraction_power(x, (x.ndim - 1,), q), None
  if kind is layers.general:
    return contraction_power(x, normalize_axes(module.axis, x.ndim), q), None
  if kind is layers.einsum:
    equation = args[1] if len(args) > 1 and args[1] is not None else None
    equation = equation or kwargs.get("einsum_str") or module.einsum_str
    axes = None if equation is None else einsum_contracted_axes(equation, x.ndim)
    if axes is None:
      return None, f"no single input vector in the equation {equation!r}"
    return contraction_power(x, axes, q), None
  if module.mask is not None:
    return None, "a masked kernel"
  geometry = ConvGeometry(
    module.kernel_size,
    module.strides,
    module.padding,
    module.input_dilation,
    module.kernel_dilation,
    module.feature_group_count,
    getattr(module, layers.conv_features),
  )
  power = conv_power(geometry, x, q)
  return (None, f"the padding {module.padding!r}") if power is None else (power, None)


def power_leaves(paths, records, kinds, unsupported, silent, api: str) -> list:
  """The power of each parameter path: its layer's (mean of its calls) at a kernel, else ``None``.

  ``paths`` are the parameters' paths (module path + name); ``records`` maps a
  module path to its calls' powers; ``kinds`` a module path to its class;
  ``unsupported`` a module path to why a known layer got no power. Warns once
  for each layer whose parameters get no power for a reason a user may not
  expect; ``silent`` classes (normalisation layers, embeddings) and biases of
  recorded layers get ``None`` without one.
  """
  leaves = []
  for key in paths:
    module_path, name = tuple(key[:-1]), key[-1]
    if name == "kernel" and module_path in records:
      vals = records[module_path]
      leaves.append(vals[0] if len(vals) == 1 else sum(vals) / len(vals))
      continue
    leaves.append(None)
    kind = kinds.get(module_path)
    known = module_path in records and name == "bias"
    if not (known or (kind is not None and issubclass(kind, silent))):
      _warn_no_power(module_path, kind, unsupported.get(module_path), api)
  return leaves


def _warn_no_power(module_path, kind, reason: Optional[str], api: str) -> None:
  where = "/".join(str(p) for p in module_path) or "<top level>"
  if reason is not None:
    what = f"a {api}.{kind.__name__} the capture cannot normalise: {reason}"
  elif kind is not None:
    what = f"a {kind.__name__}"
  else:
    what = "a module whose call was not seen"
  warn_once(
    f"capture_input_power: the parameters of layer {where} ({what}) get no input power; "
    "INSGD updates them as plain SGD"
  )


def warn_once(message: str) -> None:
  """Warns with ``message`` the first time this process sees it."""
  if message not in _warned:
    _warned.add(message)
    warnings.warn(message, stacklevel=6)  # the caller of capture_input_power
