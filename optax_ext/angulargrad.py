"""AngularGrad: Adam whose step is scaled by the angle between consecutive gradients."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optax_ext import _checks, _diagnostics, _fusion

__all__ = ["STATS_SAMPLE", "AngularGradState", "angulargrad", "scale_by_angulargrad"]

STATS_SAMPLE = 1024
"""How many entries of each leaf, at most, the φ statistics look at."""

_PHI_KEYS = ("phi_mean", "phi_min", "phi_max", "phi_at_floor")


class AngularGradState(NamedTuple):
  """State for :func:`scale_by_angulargrad`.

  The paper's Algorithm 2 keeps the previous angle :math:`A_{t-1}`. This state
  keeps its tangent instead (``tan_angle``), which orders exactly like the
  angle (arctan is increasing) and gives :math:`\\cos A` and :math:`\\tan A`
  without any trigonometric function.
  """

  count: jax.Array  # shape=(), dtype=jnp.int32
  mu: optax.Updates  # first moment, in mu_dtype (the parameter's dtype by default)
  nu: optax.Updates  # second moment
  prev_grad: optax.Updates  # g_{t-1}
  tan_angle: optax.Updates  # tan A_{t-1} in [0, inf]; inf is the angle π/2
  # shape=(4,), dtype=jnp.float32: mean, min, max of φ_t and the fraction of
  # entries at the floor λ2, over a block of up to STATS_SAMPLE entries of every
  # leaf (see _sample); NaN before step 1 and for a tree with no entries.
  phi_stats: jax.Array


def _compute_dtype(x: jax.Array) -> jnp.dtype:
  return jnp.promote_types(x.dtype, jnp.float32)  # bfloat16/float16 work in float32


def _tan_of_angle(g: jax.Array, g_prev: jax.Array) -> jax.Array:
  """``tan A`` for ``A = atan2(|g − g_prev|, |1 + g·g_prev|)``, in ``[0, inf]``.

  A zero denominator gives ``inf`` (the angle π/2), never NaN; ``0/0`` gives
  0, as ``atan2(0, 0) = 0``. An overflowed product (``|1 + g·g_prev| = inf``)
  gives 0, as ``atan2`` of a finite over an infinite value does. Computed in
  float32 at least.
  """
  ct = _compute_dtype(g)
  g, g_prev = g.astype(ct), g_prev.astype(ct)
  num = jnp.abs(g - g_prev)
  den = jnp.abs(1.0 + g * g_prev)
  return jnp.where(num == 0, jnp.zeros_like(num), num / den)


def _coefficient(tan_min: jax.Array, method: str, lambda1, lambda2) -> jax.Array:
  """φ = tanh(|cos A|)·λ1 + λ2 or tanh(|tan A|)·λ1 + λ2, from ``tan A``."""
  if method == "cos":  # cos(arctan r) = 1 / sqrt(1 + r²); r = inf gives 0
    x = jax.lax.rsqrt(1.0 + tan_min * tan_min)
  else:  # tan(arctan r) = r; tanh(inf) = 1
    x = tan_min
  return jnp.tanh(x) * lambda1 + lambda2


def _sample(x: jax.Array) -> jax.Array:
  """A block of at most ``STATS_SAMPLE`` entries of ``x``: a prefix of every axis.

  The block is cut without reshaping, from the last axis first, so that a
  leaf sharded over devices is sampled where it lies.
  """
  index, budget = [], STATS_SAMPLE
  for d in reversed(x.shape):
    take = max(1, min(d, budget))
    index.append(slice(0, take))
    budget //= take
  return x[tuple(reversed(index))]


def _leaf_stats(phi: jax.Array, lambda2) -> tuple:
  """``(Σφ, min φ, max φ, #{φ <= λ2}, n)`` of one (sampled) leaf, in one reduction.

  The reduction runs over every axis without reshaping, so that a leaf
  sharded over devices is reduced in place (one all-reduce of four scalars).
  """
  phi = phi.astype(jnp.float32)
  zero = jnp.zeros([], jnp.float32)
  if not phi.size:
    return zero, jnp.float32(jnp.inf), jnp.float32(-jnp.inf), zero, 0
  out = jax.lax.reduce(
    (phi, phi, phi, (phi <= lambda2).astype(jnp.float32)),
    (zero, jnp.float32(jnp.inf), jnp.float32(-jnp.inf), zero),
    lambda a, b: (a[0] + b[0], jnp.minimum(a[1], b[1]), jnp.maximum(a[2], b[2]), a[3] + b[3]),
    tuple(range(phi.ndim)),
  )
  return (*out, phi.size)


def _phi_statistics(phi: optax.Updates, lambda2) -> jax.Array:
  """Mean, min, max of φ over a prefix block of every leaf, and the fraction at λ2.

  Shared with the published-code variant (:mod:`optax_ext.published.angulargrad`).
  """
  per_leaf = [_leaf_stats(_sample(p), lambda2) for p in jax.tree.leaves(phi)]
  n = sum(s[4] for s in per_leaf)
  if not n:
    return jnp.full((4,), jnp.nan, jnp.float32)
  total = sum(s[0] for s in per_leaf)
  lo = jnp.min(jnp.stack([s[1] for s in per_leaf]))
  hi = jnp.max(jnp.stack([s[2] for s in per_leaf]))
  at_floor = sum(s[3] for s in per_leaf)
  return jnp.stack([total / n, lo, hi, at_floor / n]).astype(jnp.float32)


def _check_args(method, b1, b2, eps, lambda1, lambda2) -> None:
  """Raises ``ValueError`` naming the first hyperparameter out of its range."""
  _checks.check_choice("method", method, ("cos", "tan"))
  _checks.check_range("b1", b1, 0.0, 1.0, high_open=True)
  _checks.check_range("b2", b2, 0.0, 1.0, high_open=True)
  _checks.check_positive("eps", eps)
  _checks.check_nonnegative("lambda1", lambda1)
  _checks.check_nonnegative("lambda2", lambda2)


def scale_by_angulargrad(
  method: str = "cos",
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  lambda1: jax.typing.ArrayLike = 0.5,
  lambda2: jax.typing.ArrayLike = 0.5,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
  *,
  reference_compat: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates by Adam's direction times the angular coefficient φ.

  For each element, with the previous gradient :math:`g_{t-1}` (:math:`g_0 = 0`):

  .. math::
    A_t = \arctan\left|\frac{g_t - g_{t-1}}{1 + g_t g_{t-1}}\right|,\qquad
    A_{\min} = \min(A_{t-1}, A_t)\ \ (A_{\min} = A_1 \text{ at } t = 1),

    \phi_t = \tanh(|\angle(A_{\min})|)\,\lambda_1 + \lambda_2,\quad
    \angle \in \{\cos, \tan\},\qquad
    u_t = \phi_t\,\hat m_t / (\sqrt{\hat v_t} + \varepsilon),

  with Adam's bias-corrected moments :math:`\hat m_t, \hat v_t`. The angle is
  taken robustly, as ``atan2(|g_t − g_{t−1}|, |1 + g_t g_{t−1}|)``, so that
  :math:`g_t g_{t-1} = -1` is the angle π/2 rather than NaN.

  No angle is ever formed. Since arctan is increasing, the minimum over angles
  is the minimum over their tangents :math:`r = |g_t - g_{t-1}| / |1 + g_t
  g_{t-1}|`, which the state keeps in place of the angle, and
  :math:`\cos(\arctan r) = 1/\sqrt{1 + r^2}`, :math:`\tan(\arctan r) = r`:
  the paper's φ up to float rounding, with one division and one ``tanh`` per
  element in place of an arctan, a cos or tan, and a tanh. Leaves in
  bfloat16 or float16 are computed in float32; the state keeps the
  parameters' dtype (the first moment ``mu_dtype`` if given).

  Args:
    method: ``"cos"`` or ``"tan"``: which function of the angle sets φ.
    b1: Decay rate of the first moment, in ``[0, 1)``.
    b2: Decay rate of the second moment, in ``[0, 1)``.
    eps: Added to the square root of the second moment; positive.
    lambda1: Scale of the angular term, non-negative; φ lies in
      ``[lambda2, lambda1 + lambda2]``.
    lambda2: Floor of φ, non-negative.
    mu_dtype: Optional dtype of the first moment.
    reference_compat: Return the transformation of the authors' published
      PyTorch code instead of the paper's (see the note below).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`. Its state records
    statistics of φ (``phi_stats``; read them with :func:`optax_ext.diagnostics`)
    over a block of up to ``STATS_SAMPLE`` entries of every leaf, cut as a
    prefix of each axis without reshaping, so that the diagnostics cost little
    next to the update and a leaf sharded over devices is never gathered.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_ext
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> tx = optax.chain(optax_ext.scale_by_angulargrad(), optax.scale(-0.1))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(jax.grad(f)(params), state)
    ...   params = optax.apply_updates(params, updates)
    >>> print([f"{x:.3f}" for x in params])
    ['0.754', '-1.762']

  References:
    Roy et al., `AngularGrad: A New Optimization Technique for Angular
    Convergence of Convolutional Neural Networks
    <https://arxiv.org/abs/2105.10190>`_, IEEE TNNLS, 2022 (Algorithm 2).

  .. note::
    ``reference_compat=True`` returns
    :func:`optax_ext.published.angulargrad.scale_by_published_angulargrad`,
    which follows the published ``myoptims/cosangulargrad.py`` and
    ``tanangulargrad.py``. Per leaf they keep a stored angle ``min`` (degrees,
    initially 0) and a stored cos/tan value ``final`` (initially 0), and each
    step count, with ``torch.unique``, the elements whose current angle
    exceeds the stored one. Both stored arrays are replaced by the current ones
    only when some elements are above and strictly fewer are above than not.
    When every element is above, or none is, the count of the second outcome
    does not exist, and the fallback compares a tensor with the string
    ``"False"``, which PyTorch answers with ``False``: the stored values are
    kept. So, with ``min`` starting at 0, a replacement needs a majority of
    angles that are exactly 0 (bit-identical consecutive gradients) next to
    some that are not, φ usually stays at 0.5, and on a one-element leaf it
    always does. φ uses the stored value, and the step is PyTorch Adam's
    :math:`\sqrt{1-\beta_2^t}/(1-\beta_1^t)\cdot m\phi/(\sqrt{v} + \varepsilon)`.
    The published code adds weight decay to the gradient (L2);
    :func:`angulargrad`'s ``weight_decay`` stays decoupled in this mode too.
    ``docs/design.md`` (AngularGrad) lists the departures.
  """
  _check_args(method, b1, b2, eps, lambda1, lambda2)
  if reference_compat:
    # Imported here: the published variant builds on this module's helpers.
    from optax_ext.published import angulargrad as published  # noqa: PLC0415

    return published.scale_by_published_angulargrad(method, b1, b2, eps, lambda1, lambda2, mu_dtype)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    return AngularGradState(
      count=jnp.zeros([], jnp.int32),
      mu=optax.tree.zeros_like(params, dtype=mu_dtype),
      nu=optax.tree.zeros_like(params),
      prev_grad=optax.tree.zeros_like(params),
      tan_angle=optax.tree.zeros_like(params),
      phi_stats=jnp.full((4,), jnp.nan, jnp.float32),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    inv_bc1 = 1.0 / (1.0 - jnp.asarray(b1) ** count)
    inv_sqrt_bc2 = jax.lax.rsqrt(1.0 - jnp.asarray(b2) ** count)

    def smaller_angle(tan_now, tan_prev):  # A_min = A_1 at t = 1: there is no A_0
      return jnp.where(count == 1, tan_now, jnp.minimum(tan_now, tan_prev.astype(tan_now.dtype)))

    def direction(g, phi, m, v):
      m_hat = m.astype(phi.dtype) * inv_bc1.astype(phi.dtype)
      denom = jnp.sqrt(v.astype(phi.dtype)) * inv_sqrt_bc2.astype(phi.dtype) + eps
      return (phi * m_hat / denom).astype(g.dtype)

    def phi_of(g, g_prev, tan_prev):
      tan_min = smaller_angle(_tan_of_angle(g, g_prev), tan_prev)
      return _coefficient(tan_min, method, lambda1, lambda2)

    phi = jax.tree.map(phi_of, updates, state.prev_grad, state.tan_angle)
    new_updates = jax.tree.map(direction, updates, phi, mu, nu)

    # φ is elementwise: the statistics take it on a block of the inputs, and
    # never read the whole of it back.
    phi_block = jax.tree.map(
      lambda *leaves: phi_of(*map(_sample, leaves)), updates, state.prev_grad, state.tan_angle
    )
    new_state = AngularGradState(
      count=count,
      mu=optax.tree.cast(mu, mu_dtype),
      nu=optax.tree.cast_like(nu, state.nu),
      prev_grad=optax.tree.cast_like(updates, state.prev_grad),
      tan_angle=jax.tree.map(
        lambda g, g_prev, t: _tan_of_angle(g, g_prev).astype(t.dtype),
        updates,
        state.prev_grad,
        state.tan_angle,
      ),
      phi_stats=_phi_statistics(phi_block, lambda2),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def angulargrad(
  learning_rate: optax.ScalarOrSchedule,
  method: str = "cos",
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  lambda1: jax.typing.ArrayLike = 0.5,
  lambda2: jax.typing.ArrayLike = 0.5,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask=None,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
  *,
  reference_compat: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AngularGrad (cos or tan variant) with optional decoupled weight decay.

  .. math::
    \theta_t = \theta_{t-1} - \alpha_t\,\bigl(\phi_t\,\hat m_t /
    (\sqrt{\hat v_t} + \varepsilon) + \lambda_{wd}\,\theta_{t-1}\bigr)

  See :func:`scale_by_angulargrad` for φ and the arguments.

  Args:
    learning_rate: A fixed step size or an optax schedule.
    method: ``"cos"`` or ``"tan"``.
    b1: Decay rate of the first moment.
    b2: Decay rate of the second moment.
    eps: Added to the square root of the second moment.
    lambda1: Scale of the angular term.
    lambda2: Floor of φ.
    weight_decay: Decoupled weight decay (AdamW style), fixed or a schedule.
    mask: Which leaves weight decay applies to (as in :func:`optax.adamw`).
    mu_dtype: Optional dtype of the first moment.
    reference_compat: Follow the authors' published code (see
      :func:`scale_by_angulargrad`).

  Returns:
    ``optax.chain(scale_by_angulargrad(...), optax.add_decayed_weights(weight_decay,
    mask), optax.scale_by_learning_rate(learning_rate))`` (so ``state[0]`` is
    the :class:`AngularGradState`), whose update, on CPU, writes each leaf's
    update and its state arrays from one loop (``optax_ext.config``,
    ``"cpu_fusion"``), with the same values. Schedules are evaluated at the
    number of steps taken before this one, as optax's are.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_ext
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> tx = optax_ext.angulargrad(learning_rate=0.1, method="tan")
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(jax.grad(f)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"{f(params):.3f}")
    4.423
    4.143
    3.876

  References:
    Roy et al., `AngularGrad <https://arxiv.org/abs/2105.10190>`_, IEEE TNNLS, 2022.
  """
  _checks.check_learning_rate(learning_rate)
  _checks.check_nonnegative("weight_decay", weight_decay)
  return _fusion.fused_outputs(
    optax.chain(
      scale_by_angulargrad(
        method, b1, b2, eps, lambda1, lambda2, mu_dtype, reference_compat=reference_compat
      ),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
    )
  )


def _read_diagnostics(state) -> dict[str, jax.Array]:
  """The φ statistics of an AngularGrad state, by name."""
  return {k: state.phi_stats[i] for i, k in enumerate(_PHI_KEYS)}


_diagnostics.register(AngularGradState, "angulargrad", _read_diagnostics)
