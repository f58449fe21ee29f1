"""INSGD: SGD with each layer's gradient divided by the log-power of its input."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optax_ext import _checks, _diagnostics

__all__ = ["InputNormState", "InputPower", "insgd", "scale_by_input_norm"]


class InputNormState(NamedTuple):
  """State for :func:`scale_by_input_norm`.

  ``power`` has one leaf per parameter leaf, shaped like the leaf's last axis
  (its output units; ``()`` for scalars): the running input power ``P``, in
  ``power_dtype`` (by default the parameter's dtype, at least float32).
  ``log_power`` and ``step_scale`` hold, for the last step, the mean of
  ``log P`` and of ``1 / max(log P, ε)`` per parameter leaf (float32 scalars
  for logging; NaN where the leaf had no input power).
  """

  count: jax.Array  # shape=(), dtype=jnp.int32
  power: optax.Updates
  log_power: optax.Updates
  step_scale: optax.Updates


@dataclasses.dataclass(frozen=True)
class InputPower:
  r"""Captured input powers together with the norm order they were computed with.

  :func:`optax_ext.capture_input_power` returns one; :func:`scale_by_input_norm`
  and :func:`insgd` accept it (or a plain tree of powers) as ``input_power``
  and refuse one whose ``norm_order`` differs from their own. ``norm_order`` is
  static pytree metadata, so it survives ``jax.jit``, ``jax.value_and_grad``'s
  auxiliary output and optax's wrappers.

  Attributes:
    powers: A pytree with the parameters' structure: the batch input power
      :math:`m_t` of each normalised leaf's layer, ``None`` elsewhere.
    norm_order: q of :math:`\|x\|_q^q`, 1 or 2.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optax_ext.insgd import InputPower
    >>> power = InputPower({'w': jnp.asarray(2.0), 'b': None}, norm_order=1)
    >>> jax.jit(lambda p: p)(power).norm_order
    1
  """

  powers: Any
  norm_order: int

  def __post_init__(self):
    _checks.check_choice("norm_order", self.norm_order, (1, 2))


jax.tree_util.register_dataclass(InputPower, data_fields=["powers"], meta_fields=["norm_order"])


def _is_none(x: Any) -> bool:
  return x is None


def _static_order(norm_order: Any) -> Optional[int]:
  """``norm_order`` as a Python int (or ``None``), checked."""
  if norm_order is None:
    return None
  if isinstance(norm_order, jax.core.Tracer):
    raise ValueError(
      "norm_order is a traced value; under optax.inject_hyperparams list it in static_args"
    )
  _checks.check_choice("norm_order", norm_order, (1, 2))
  return int(norm_order)


def _powers_of(input_power: Any, norm_order: Optional[int], updates: Any) -> Any:
  """The tree of powers in ``input_power``, checked against the order and the updates."""
  if input_power is None:
    raise ValueError(
      "scale_by_input_norm needs the keyword argument `input_power`: a pytree with "
      "the parameters' structure holding each normalised layer's input power (None "
      "elsewhere); optax_ext.capture_input_power computes it in the forward pass"
    )
  if isinstance(input_power, InputPower):
    if norm_order is not None and input_power.norm_order != norm_order:
      raise ValueError(
        f"`input_power` was captured with norm_order={input_power.norm_order}, but this "
        f"INSGD was built with norm_order={norm_order}; pass the same order to both, or "
        "leave INSGD's norm_order unset to follow the capture"
      )
    input_power = input_power.powers
  got = jax.tree.structure(input_power, is_leaf=_is_none)
  try:  # None stands for a whole subtree (a leaf, or optax.masked's MaskedNode)
    got.flatten_up_to(updates)
  except (ValueError, TypeError):
    raise ValueError(
      f"`input_power` must have the parameters' structure {jax.tree.structure(updates)}, "
      f"got {got}; pass None for leaves that are not normalised"
    ) from None
  return input_power


def _power_dtype(leaf: Any, power_dtype: Optional[jnp.dtype]) -> jnp.dtype:
  """The running power's dtype: ``power_dtype``, else the leaf's, at least float32."""
  if power_dtype is not None:
    return power_dtype
  return jnp.promote_types(jnp.result_type(leaf), jnp.float32)


def scale_by_input_norm(
  input_momentum: jax.typing.ArrayLike = 0.9,
  eps: jax.typing.ArrayLike = 0.01,
  norm_order: Optional[int] = None,
  power_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Divides each leaf's gradient by the log of its layer's running input power.

  With :math:`m_t` the batch mean of :math:`\|x\|_q^q` over the layer's input
  vectors (a dense layer's input row, a convolution's receptive-field patch):

  .. math::
    P_1 = m_1,\quad P_t = \beta P_{t-1} + (1-\beta)\,m_t,\qquad
    g_t \leftarrow g_t / \max(\log P_t, \varepsilon)

  :math:`P` and the division are per output unit of the layer (the
  parameter's last axis): a scalar power applies to the whole kernel, a
  vector to each output unit (grouped convolutions give one value per group,
  repeated over the group's outputs). Leaves whose ``input_power`` is ``None``
  (biases, normalisation scales) pass through unchanged. The first update
  sets :math:`P_1 = m_1`, whatever ``input_momentum`` is.

  The running power and the division are computed in the parameter's dtype
  (float32 at least: bfloat16 and float16 parameters compute in float32);
  updates leave in the gradient's dtype.

  Args:
    input_momentum: β, the decay of the running power (0: :math:`P_t = m_t`).
    eps: The floor ε of the log-power (Eq. 27; it also keeps the sign).
    norm_order: q of the input power, if this transform should insist on one:
      an :class:`~optax_ext.insgd.InputPower` captured with another order is
      refused. ``None`` (default) follows the order the power was captured
      with, which is then said once, to :func:`optax_ext.capture_input_power`.
    power_dtype: The dtype of the running power ``P`` in the state (default:
      each parameter's dtype, at least float32).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose ``update`` takes the
    keyword argument ``input_power``: an :class:`~optax_ext.insgd.InputPower`
    (what :func:`optax_ext.capture_input_power` returns), or a plain pytree
    with the parameters' structure whose leaves are ``None`` or the batch
    input power ``m_t`` of that leaf's layer: a scalar, or an array varying
    only along the leaf's last axis (shape ``(units,)``, ``(1, ..., 1, units)``
    or all ones). A plain tree carries no order and is not checked.

  Raises:
    ValueError: at construction for bad hyperparameters; at ``update`` when
      ``input_power`` is missing, does not match the parameters, or was
      captured with another ``norm_order``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_ext
    >>> tx = optax_ext.scale_by_input_norm(input_momentum=0.9)
    >>> params = {'w': jnp.ones((2, 3)), 'b': jnp.ones(3)}
    >>> state = tx.init(params)
    >>> power = {'w': jnp.exp(2.0), 'b': None}  # log P = 2 halves the kernel's gradient
    >>> u, state = tx.update(params, state, params, input_power=power)
    >>> print(u['w'][0, 0], u['b'][0])
    0.5 1.0

  References:
    Atici, Pan, Cetin, *Input Normalized Stochastic Gradient Descent Training
    for Deep Neural Networks* (Eq. 26-29, Algorithm 1).
  """
  _checks.check_range("input_momentum", input_momentum, 0.0, 1.0, high_open=True)
  _checks.check_positive("eps", eps)
  norm_order = _static_order(norm_order)
  power_dtype = None if power_dtype is None else jnp.dtype(power_dtype)

  def init_fn(params):
    power = jax.tree.map(
      lambda p: jnp.ones(jnp.shape(p)[-1:], _power_dtype(p, power_dtype)), params
    )
    nan = jax.tree.map(lambda p: jnp.full((), jnp.nan, jnp.float32), params)
    return InputNormState(jnp.zeros([], jnp.int32), power, nan, nan)

  def update_fn(updates, state, params=None, *, input_power=None, **extra_args):
    del params, extra_args
    powers = _powers_of(input_power, norm_order, updates)
    count = optax.safe_increment(state.count)
    first = count == 1

    def nan_like(subtree):
      return jax.tree.map(lambda _: jnp.full((), jnp.nan, jnp.float32), subtree)

    def leaf(g, m, p_prev):
      ct = jnp.promote_types(jnp.promote_types(g.dtype, p_prev.dtype), jnp.float32)
      m = jnp.asarray(m)
      units = p_prev.shape[-1] if p_prev.ndim else 1
      if m.ndim and (any(d != 1 for d in m.shape[:-1]) or m.shape[-1] not in (1, units)):
        raise ValueError(
          "`input_power` leaves must be scalars or arrays that vary only along the "
          f"parameter's last axis (its {units} output units), e.g. shape () or ({units},) "
          f"for a parameter of shape {jnp.shape(g)}; got shape {m.shape}"
        )
      m = m.reshape(m.shape[-1:] if p_prev.ndim else ()).astype(ct)
      beta = jnp.asarray(input_momentum, ct)
      p = jnp.where(first, m, beta * p_prev.astype(ct) + (1 - beta) * m)
      p = jnp.broadcast_to(p, p_prev.shape)
      log_p = jnp.log(p)
      scale = 1 / jnp.maximum(log_p, jnp.asarray(eps, ct))
      f32 = lambda a: jnp.mean(a).astype(jnp.float32)
      return (g.astype(ct) * scale).astype(g.dtype), p.astype(p_prev.dtype), f32(log_p), f32(scale)

    treedef = jax.tree.structure(powers, is_leaf=_is_none)
    outs = [
      # A leaf optax.masked masked out arrives as an empty node: it passes through too.
      leaf(g, m, p) if m is not None and jax.tree.leaves(g) else (g, p, nan_like(p), nan_like(p))
      for g, m, p in zip(
        treedef.flatten_up_to(updates),
        treedef.flatten_up_to(powers),
        treedef.flatten_up_to(state.power),
      )
    ]
    pick = lambda i: jax.tree.unflatten(treedef, [o[i] for o in outs])
    return pick(0), InputNormState(count, pick(1), pick(2), pick(3))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def insgd(
  learning_rate: optax.ScalarOrSchedule,
  momentum: jax.typing.ArrayLike = 0.9,
  nesterov: bool = False,
  input_momentum: jax.typing.ArrayLike = 0.9,
  norm_order: Optional[int] = None,
  eps: jax.typing.ArrayLike = 0.01,
  weight_decay: jax.typing.ArrayLike = 0.0,
  mask: Optional[Any] = None,
  power_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Input-normalized SGD (Algorithm 1 of the paper) with momentum and weight decay.

  .. math::
    g \leftarrow g / \max(\log P_t, \varepsilon),\quad
    g \leftarrow g + \lambda\theta,\quad
    b_t = \gamma b_{t-1} + g,\quad \theta \leftarrow \theta - \mu b_t

  Momentum has :func:`optax.trace` (PyTorch) semantics, as the paper's
  experiments ran; the paper's Algorithm 1 writes
  :math:`b_t = \gamma b_{t-1} + (1-\gamma) g_t`, which is the same method with
  the learning rate scaled by :math:`1-\gamma`.

  The norm order q (ℓ2: the paper's INSGD-ℓ2, ℓ1: INSGD-ℓ1) decides how the
  input power is computed, so it is given where the power is captured:
  ``capture_input_power(..., norm_order=q)``. The captured
  :class:`~optax_ext.insgd.InputPower` carries q into the update.

  Args:
    learning_rate: A fixed step size or an optax schedule.
    momentum: γ (0 disables momentum).
    nesterov: Nesterov momentum instead of heavy-ball.
    input_momentum: β of the running input power.
    norm_order: ``None`` (default) follows the captured power's order; 1 or 2
      makes the update refuse a power captured with the other order. Under
      :func:`optax.inject_hyperparams` list it in ``static_args``.
    eps: Floor of the log-power.
    weight_decay: λ, added after normalisation (as in Algorithm 1).
    mask: Which leaves weight decay applies to.
    power_dtype: The dtype of the running power in the state (default: the
      parameters' dtype, at least float32); see :func:`scale_by_input_norm`.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`; ``update`` takes the
    keyword argument ``input_power`` (see :func:`scale_by_input_norm`).

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax
    >>> import optax_ext
    >>> model = nn.Dense(2)
    >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    >>> params = model.init(jax.random.key(0), x)['params']
    >>> tx = optax_ext.insgd(learning_rate=0.1, norm_order=1)
    >>> state = tx.init(params)
    >>> def loss_fn(p):
    ...   z, power = optax_ext.capture_input_power(model.apply, {'params': p}, x, norm_order=1)
    ...   return jnp.mean((z - y) ** 2), power
    >>> (loss, power), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    >>> print(power.norm_order, power.powers)  # ||x||_1 = 3 for the kernel; no bias power
    1 {'bias': None, 'kernel': Array(3., dtype=float32)}
    >>> updates, state = tx.update(grads, state, params, input_power=power)

  References:
    Atici, Pan, Cetin, *Input Normalized Stochastic Gradient Descent Training
    for Deep Neural Networks* (Algorithm 1).

  .. note::
    The authors' published ``insgd.py`` departs from the paper (it standardises
    inputs per sample and adds an Adadelta-like accumulator); this follows the
    paper.

  .. note::
    :math:`m_t` is a batch mean, so with the batch sharded over devices under
    ``jax.jit`` it is the global-batch mean automatically. Under
    :func:`optax.MultiSteps` the inner update sees the ``input_power`` of the
    call that completes the accumulation (the last micro-batch); average the
    micro-batches' powers yourself if that matters.
  """
  _checks.check_learning_rate(learning_rate)
  _checks.check_range("momentum", momentum, 0.0, 1.0, high_open=True)
  _checks.check_nonnegative("weight_decay", weight_decay)
  return optax.chain(
    scale_by_input_norm(input_momentum, eps, norm_order, power_dtype),
    optax.add_decayed_weights(weight_decay, mask),
    optax.trace(decay=momentum, nesterov=nesterov),
    optax.scale_by_learning_rate(learning_rate),
  )


def _read_diagnostics(state: InputNormState) -> dict[str, jax.Array]:
  """log P and the step scale 1/max(log P, ε) per normalised leaf (NaN-free means)."""
  out = {}
  paths = jax.tree_util.tree_flatten_with_path(state.log_power)[0]
  scales = jax.tree.leaves(state.step_scale)
  for (path, log_p), scale in zip(paths, scales):
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[f"log_power/{name}"] = log_p
    out[f"step_scale/{name}"] = scale
  return out


_diagnostics.register(InputNormState, "insgd", _read_diagnostics)
