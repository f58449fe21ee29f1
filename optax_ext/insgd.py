"""INSGD: SGD with each layer's gradient divided by the log-power of its input."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optax_ext import _checks, _diagnostics


class InputNormState(NamedTuple):
  """State for :func:`scale_by_input_norm`.

  ``power`` has one leaf per parameter leaf, shaped like the leaf's last axis
  (its output units; ``()`` for scalars): the running input power ``P``.
  ``log_power`` and ``step_scale`` hold, for the last step, the mean of
  ``log P`` and of ``1 / max(log P, ε)`` per parameter leaf (NaN where the leaf
  had no input power).
  """

  count: jax.Array  # shape=(), dtype=jnp.int32
  power: optax.Updates
  log_power: optax.Updates
  step_scale: optax.Updates


def _is_none(x: Any) -> bool:
  return x is None


def check_input_power(input_power: Any, updates: Any) -> None:
  """Raises ``ValueError`` unless ``input_power`` has the updates' structure."""
  if input_power is None:
    raise ValueError(
      "scale_by_input_norm needs the keyword argument `input_power`: a pytree with "
      "the parameters' structure holding each normalised layer's input power (None "
      "elsewhere); optax_ext.capture_input_power computes it in the forward pass"
    )
  got = jax.tree.structure(input_power, is_leaf=_is_none)
  try:  # None stands for a whole subtree (a leaf, or optax.masked's MaskedNode)
    got.flatten_up_to(updates)
  except (ValueError, TypeError):
    raise ValueError(
      f"`input_power` must have the parameters' structure {jax.tree.structure(updates)}, "
      f"got {got}; pass None for leaves that are not normalised"
    ) from None


def scale_by_input_norm(
  input_momentum: jax.typing.ArrayLike = 0.9,
  eps: jax.typing.ArrayLike = 0.01,
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

  Args:
    input_momentum: β, the decay of the running power (0: :math:`P_t = m_t`).
    eps: The floor ε of the log-power (Eq. 27; it also keeps the sign).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose ``update`` takes the
    keyword argument ``input_power``: a pytree with the parameters' structure
    whose leaves are ``None`` or the batch input power ``m_t`` of that leaf's
    layer: a scalar, or an array varying only along the leaf's last axis
    (shape ``(units,)``, ``(1, ..., 1, units)`` or all ones).
    :func:`optax_ext.capture_input_power` builds it from a Flax model.

  Raises:
    ValueError: at construction for bad hyperparameters; at ``update`` when
      ``input_power`` is missing or does not match the parameters.

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

  def init_fn(params):
    power = jax.tree.map(lambda p: jnp.ones(jnp.shape(p)[-1:], jnp.float32), params)
    nan = jax.tree.map(lambda p: jnp.full((), jnp.nan, jnp.float32), params)
    return InputNormState(jnp.zeros([], jnp.int32), power, nan, nan)

  def update_fn(updates, state, params=None, *, input_power=None, **extra_args):
    del params, extra_args
    check_input_power(input_power, updates)
    count = optax.safe_increment(state.count)
    first = count == 1

    def nan_like(subtree):
      return jax.tree.map(lambda _: jnp.full((), jnp.nan, jnp.float32), subtree)

    def leaf(g, m, p_prev):
      m = jnp.asarray(m, jnp.float32)
      units = p_prev.shape[-1] if p_prev.ndim else 1
      if m.ndim and (any(d != 1 for d in m.shape[:-1]) or m.shape[-1] not in (1, units)):
        raise ValueError(
          "`input_power` leaves must be scalars or arrays that vary only along the "
          f"parameter's last axis (its {units} output units), e.g. shape () or ({units},) "
          f"for a parameter of shape {jnp.shape(g)}; got shape {m.shape}"
        )
      m = m.reshape(m.shape[-1:] if p_prev.ndim else ())
      p = jnp.where(first, m, input_momentum * p_prev + (1.0 - input_momentum) * m)
      p = jnp.broadcast_to(p, p_prev.shape)
      log_p = jnp.log(p)
      scale = 1.0 / jnp.maximum(log_p, eps)
      return (g * scale).astype(g.dtype), p, jnp.mean(log_p), jnp.mean(scale)

    treedef = jax.tree.structure(input_power, is_leaf=_is_none)
    outs = [
      leaf(g, m, p) if m is not None else (g, p, nan_like(p), nan_like(p))
      for g, m, p in zip(
        treedef.flatten_up_to(updates),
        treedef.flatten_up_to(input_power),
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
  norm_order: int = 2,
  eps: jax.typing.ArrayLike = 0.01,
  weight_decay: jax.typing.ArrayLike = 0.0,
  mask: Optional[Any] = None,
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

  Args:
    learning_rate: A fixed step size or an optax schedule.
    momentum: γ (0 disables momentum).
    nesterov: Nesterov momentum instead of heavy-ball.
    input_momentum: β of the running input power.
    norm_order: q of the input power :math:`\|x\|_q^q` (2: the paper's INSGD-ℓ2,
      1: INSGD-ℓ1). It is validated and recorded here, but the power itself is
      computed outside the optimizer: pass the same value to
      ``capture_input_power(..., norm_order=q)``. Under
      :func:`optax.inject_hyperparams` list it in ``static_args``.
    eps: Floor of the log-power.
    weight_decay: λ, added after normalisation (as in Algorithm 1).
    mask: Which leaves weight decay applies to.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`; ``update`` takes the
    keyword argument ``input_power`` (see :func:`scale_by_input_norm`).

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax
    >>> import optax_ext
    >>> model = nn.Dense(2)
    >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    >>> params = model.init(jax.random.key(0), x)['params']
    >>> tx = optax_ext.insgd(learning_rate=0.1)
    >>> state = tx.init(params)
    >>> def loss_fn(p):
    ...   z, power = optax_ext.capture_input_power(model.apply, {'params': p}, x)
    ...   return jnp.mean((z - y) ** 2), power
    >>> (loss, power), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    >>> print(power)  # ||x||^2 = 3 for the kernel; the bias is not normalised
    {'bias': None, 'kernel': Array(3., dtype=float32)}
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
  if not isinstance(norm_order, jax.core.Tracer):  # static_args under inject_hyperparams
    _checks.check_choice("norm_order", norm_order, (1, 2))
  _checks.check_nonnegative("weight_decay", weight_decay)
  return optax.chain(
    scale_by_input_norm(input_momentum, eps),
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
