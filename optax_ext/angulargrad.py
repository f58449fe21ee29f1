"""AngularGrad: Adam whose step is scaled by the angle between consecutive gradients."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optax_ext import _checks, _diagnostics


class AngularGradState(NamedTuple):
  """State for :func:`scale_by_angulargrad`.

  ``angle`` does not hold the angle ``A`` itself but ``sin²(A)``, which orders
  exactly like ``A`` on ``[0, π/2]`` and gives ``cos`` and ``tan`` of the
  minimum angle algebraically (see :func:`scale_by_angulargrad`). In
  ``reference_compat`` mode it holds the published code's stored angle in
  degrees instead, and ``final`` its stored cos/tan value.
  """

  count: jax.Array  # shape=(), dtype=jnp.int32
  mu: optax.Updates
  nu: optax.Updates
  prev_grad: optax.Updates
  angle: optax.Updates
  final: optax.Updates  # reference_compat only; empty tuple otherwise
  phi_stats: jax.Array  # shape=(4,), float32: mean, min, max of φ, fraction at the floor λ2


_PHI_KEYS = ("phi_mean", "phi_min", "phi_max", "phi_at_floor")


def _angle_sin2(g, g_prev):
  """``sin²(A)`` for ``A = arctan |(g − g_prev) / (1 + g·g_prev)|``, overflow-safe.

  With ``n = |g − g_prev|`` and ``d = |1 + g·g_prev|``, ``sin²(A) = n² / (n² + d²)``;
  both are scaled by ``max(n, d)`` first, ``n = d = 0`` (never reached by real
  gradients) gives 0, as ``atan2(0, 0)`` does, and an overflowed side decides.
  """
  n = jnp.abs(g - g_prev)
  d = jnp.abs(1.0 + g * g_prev)
  m = jnp.maximum(n, d)
  safe = jnp.where(m > 0, m, 1.0)
  nn, dd = n / safe, d / safe
  n2 = nn * nn
  s2 = n2 / jnp.where(m > 0, n2 + dd * dd, 1.0)
  # Overflowed products (|g| ~ 1e30): an infinite side sets the angle.
  inf_n, inf_d = jnp.isinf(n), jnp.isinf(d)
  return jnp.where(inf_d & ~inf_n, 0.0, jnp.where(inf_n & ~inf_d, 1.0, s2))


def _phi_from_sin2(s2, method, lambda1, lambda2):
  cos2 = 1.0 - s2  # cos²(A_min), in [0, 1]
  if method == "cos":
    x = jnp.sqrt(cos2)
  else:  # tan = sin / cos; cos = 0 gives +inf and tanh(inf) = 1
    x = jnp.sqrt(s2 / cos2)
  return jnp.tanh(x) * lambda1 + lambda2


def _phi_stats(phis, lambda2):
  leaves = [p.astype(jnp.float32) for p in jax.tree.leaves(phis)]
  size = sum(p.size for p in leaves)
  if size == 0:
    return jnp.array([jnp.nan, jnp.nan, jnp.nan, jnp.nan], jnp.float32)
  total = sum(jnp.sum(p) for p in leaves)
  lo = jnp.min(jnp.stack([jnp.min(p) for p in leaves if p.size]))
  hi = jnp.max(jnp.stack([jnp.max(p) for p in leaves if p.size]))
  floor = sum(jnp.sum(p <= lambda2) for p in leaves)
  return jnp.stack([total / size, lo, hi, floor / size]).astype(jnp.float32)


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
    A_t = \arctan\left|\frac{g_t - g_{t-1}}{1 + g_t g_{t-1}}\right|,\quad
    A_{\min} = \min(A_{t-1}, A_t)\ (A_{\min} = A_1 \text{ at } t = 1),

    \phi_t = \tanh(|\angle(A_{\min})|)\,\lambda_1 + \lambda_2,\quad
    \angle \in \{\cos, \tan\},\qquad
    u_t = \phi_t\,\hat m_t / (\sqrt{\hat v_t} + \varepsilon)

  with Adam's bias-corrected moments :math:`\hat m_t, \hat v_t`. The angle is
  never formed: arctan is monotone, so the minimum is taken over
  :math:`\sin^2 A = n^2 / (n^2 + d^2)` (``n`` and ``d`` the numerator and
  denominator above, in absolute value), and :math:`\cos A = \sqrt{1 - \sin^2 A}`,
  :math:`\tan A = \sqrt{\sin^2 A / (1 - \sin^2 A)}`. This gives the same φ as
  the literal formula up to rounding, computes the robust ``atan2`` form (a zero
  denominator is the angle π/2, never NaN), and leaves one transcendental
  function (tanh) per element instead of four.

  Args:
    method: ``"cos"`` or ``"tan"``: which function of the angle sets φ.
    b1: Decay rate of the first moment.
    b2: Decay rate of the second moment.
    eps: Added to the square root of the second moment.
    lambda1: Scale of the angular term; φ lies in ``[lambda2, lambda1 + lambda2]``.
    lambda2: Floor of φ.
    mu_dtype: Optional dtype of the first moment.
    reference_compat: Reproduce the authors' published PyTorch code instead of
      the paper (see the note below).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

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
    ``reference_compat=True`` follows the published ``cosangulargrad.py`` /
    ``tanangulargrad.py``: per leaf a stored angle (degrees, initially 0) and a
    stored cos/tan value (initially 0) are replaced by the current ones only
    when strictly fewer elements have an angle above the stored one than not
    (a majority vote over the leaf); φ uses the stored value; the step is
    PyTorch's Adam form :math:`\sqrt{1-\beta_2^t}/(1-\beta_1^t)\cdot m\phi /
    (\sqrt{v} + \varepsilon)`. Because the stored angle starts at 0, the vote
    passes only when some angle is exactly 0, so φ usually stays at 0.5.
  """
  _checks.check_choice("method", method, ("cos", "tan"))
  _checks.check_range("b1", b1, 0.0, 1.0, high_open=True)
  _checks.check_range("b2", b2, 0.0, 1.0, high_open=True)
  _checks.check_positive("eps", eps)
  _checks.check_nonnegative("lambda1", lambda1)
  _checks.check_nonnegative("lambda2", lambda2)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    mu = optax.tree.zeros_like(params, dtype=mu_dtype)
    nu = optax.tree.zeros_like(params)
    prev = optax.tree.zeros_like(params)
    if reference_compat:
      angle = optax.tree.zeros_like(params)
      final = optax.tree.zeros_like(params)
    else:  # sin²(A_0) = 1 (A_0 = π/2), so A_min = A_1 at the first step
      angle = optax.tree.ones_like(params)
      final = ()
    return AngularGradState(
      count=jnp.zeros([], jnp.int32),
      mu=mu,
      nu=nu,
      prev_grad=prev,
      angle=angle,
      final=final,
      phi_stats=jnp.full((4,), jnp.nan, jnp.float32),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    if reference_compat:
      new_updates, angle, final, phi = _reference_step(updates, state, mu, nu, count)
    else:
      mu_hat = optax.tree.bias_correction(mu, b1, count)
      nu_hat = optax.tree.bias_correction(nu, b2, count)

      def leaf(g, g_prev, s2_prev, m, v):
        ct = jnp.promote_types(g.dtype, jnp.float32)
        gf = g.astype(ct)
        s2 = _angle_sin2(gf, g_prev.astype(ct))
        phi = _phi_from_sin2(jnp.minimum(s2_prev, s2), method, lambda1, lambda2)
        u = phi * m / (jnp.sqrt(v) + eps)
        return u.astype(g.dtype), s2.astype(s2_prev.dtype), phi

      out = jax.tree.map(leaf, updates, state.prev_grad, state.angle, mu_hat, nu_hat)
      is_triple = lambda x: isinstance(x, tuple) and len(x) == 3
      new_updates = jax.tree.map(lambda o: o[0], out, is_leaf=is_triple)
      angle = jax.tree.map(lambda o: o[1], out, is_leaf=is_triple)
      phi = jax.tree.map(lambda o: o[2], out, is_leaf=is_triple)
      final = ()
    prev = optax.tree.cast_like(updates, state.prev_grad)
    new_state = AngularGradState(
      count=count,
      mu=optax.tree.cast(mu, mu_dtype),
      nu=nu,
      prev_grad=prev,
      angle=angle,
      final=final,
      phi_stats=_phi_stats(phi, lambda2),
    )
    return new_updates, new_state

  def _reference_step(updates, state, mu, nu, count):
    bc1 = 1.0 - jnp.asarray(b1) ** count
    bc2 = 1.0 - jnp.asarray(b2) ** count
    step_scale = jnp.sqrt(bc2) / bc1

    def leaf(g, g_prev, stored, fin, m, v):
      ct = jnp.promote_types(g.dtype, jnp.float32)
      gf, gp = g.astype(ct), g_prev.astype(ct)
      angle = jnp.degrees(jnp.arctan2(jnp.abs(gf - gp), jnp.abs(1.0 + gf * gp)))
      above = jnp.sum(angle > stored)
      replace = above < (angle.size - above)
      rad = jnp.radians(angle)
      current = jnp.cos(rad) if method == "cos" else jnp.tan(rad)
      stored = jnp.where(replace, angle, stored)
      fin = jnp.where(replace, current, fin)
      phi = jnp.tanh(jnp.abs(fin)) * lambda1 + lambda2
      u = step_scale * (m * phi) / (jnp.sqrt(v) + eps)
      return u.astype(g.dtype), stored, fin, phi

    out = jax.tree.map(leaf, updates, state.prev_grad, state.angle, state.final, mu, nu)
    is_quad = lambda x: isinstance(x, tuple) and len(x) == 4
    pick = lambda i: jax.tree.map(lambda o: o[i], out, is_leaf=is_quad)
    return pick(0), pick(1), pick(2), pick(3)

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
    weight_decay: Decoupled weight decay (AdamW style); 0 disables it.
    mask: Which leaves weight decay applies to (as in :func:`optax.adamw`).
    mu_dtype: Optional dtype of the first moment.
    reference_compat: Reproduce the authors' published code (see
      :func:`scale_by_angulargrad`).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

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
  return optax.chain(
    scale_by_angulargrad(
      method, b1, b2, eps, lambda1, lambda2, mu_dtype, reference_compat=reference_compat
    ),
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  )


def _read_diagnostics(state: AngularGradState) -> dict[str, jax.Array]:
  return {k: state.phi_stats[i] for i, k in enumerate(_PHI_KEYS)}


_diagnostics.register(AngularGradState, "angulargrad", _read_diagnostics)
