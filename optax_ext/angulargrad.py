"""AngularGrad: Adam whose step is scaled by the angle between consecutive gradients."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_ext import _checks, _diagnostics, _fusion


class AngularGradState(NamedTuple):
  """State for :func:`scale_by_angulargrad`.

  The paper's Algorithm 2 keeps the previous angle :math:`A_{t-1}`. This state
  keeps its tangent instead (``tan_angle``), which orders exactly like the
  angle (arctan is increasing) and gives :math:`\\cos A` and :math:`\\tan A`
  without any trigonometric function. Fields a mode does not use are empty
  tuples.
  """

  count: jax.Array  # shape=(), dtype=jnp.int32
  mu: optax.Updates  # Adam first moment (dtype mu_dtype or the parameter's)
  nu: optax.Updates  # Adam second moment
  prev_grad: optax.Updates  # g_{t-1}
  # Paper mode: tan A_{t-1} = |g - g_prev| / |1 + g g_prev| in [0, inf] (inf is A = π/2).
  tan_angle: optax.Updates
  ref_angle: optax.Updates  # reference_compat: the stored angle `min`, in degrees
  ref_final: optax.Updates  # reference_compat: the stored cos/tan value `final`
  # shape=(4,), float32: mean, min, max of φ_t and the fraction of entries at the
  # floor λ2, over a block of up to STATS_SAMPLE entries of every leaf (a prefix
  # of each axis, see _sample; NaN before step 1 and for a tree with no entries).
  phi_stats: jax.Array


_PHI_KEYS = ("phi_mean", "phi_min", "phi_max", "phi_at_floor")


def _tan_of_angle(g, g_prev):
  """``tan A`` for ``A = atan2(|g − g_prev|, |1 + g·g_prev|)``, in ``[0, inf]``.

  A zero denominator gives ``inf`` (the angle π/2), never NaN; ``0/0`` gives
  0, as ``atan2(0, 0) = 0``. An overflowed product (``|1 + g·g_prev| = inf``)
  gives 0, as ``atan2`` of a finite over an infinite value does.
  """
  num = jnp.abs(g - g_prev)
  den = jnp.abs(1.0 + g * g_prev)
  return jnp.where(num == 0, jnp.zeros_like(num), num / den)


def _coefficient(tan_min, method, lambda1, lambda2):
  """φ = tanh(|cos A|)·λ1 + λ2 or tanh(|tan A|)·λ1 + λ2, from ``tan A``."""
  if method == "cos":  # cos(arctan r) = 1 / sqrt(1 + r²); r = inf gives 0
    x = jax.lax.rsqrt(1.0 + tan_min * tan_min)
  else:  # tan(arctan r) = r; tanh(inf) = 1
    x = tan_min
  return jnp.tanh(x) * lambda1 + lambda2


STATS_SAMPLE = 1024


def _sample(x):
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


def _leaf_stats(phi, lambda2):
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


def _stats(per_leaf) -> jax.Array:
  """Mean, min, max of the sampled φ and the fraction at the floor λ2."""
  n = sum(s[4] for s in per_leaf)
  if not n:
    return jnp.full((4,), jnp.nan, jnp.float32)
  total = sum(s[0] for s in per_leaf)
  lo = jnp.min(jnp.stack([s[1] for s in per_leaf]))
  hi = jnp.max(jnp.stack([s[2] for s in per_leaf]))
  at_floor = sum(s[3] for s in per_leaf)
  return jnp.stack([total / n, lo, hi, at_floor / n]).astype(jnp.float32)


def _compute_dtype(x):
  return jnp.promote_types(x.dtype, jnp.float32)  # bfloat16/float16 work in float32


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
  :math:`\cos(\arctan r) = 1/\sqrt{1 + r^2}`, :math:`\tan(\arctan r) = r`.
  This is the paper's φ up to float rounding, with one division and one
  ``tanh`` per element in place of an arctan, a cos or tan, and a tanh.

  Args:
    method: ``"cos"`` or ``"tan"``: which function of the angle sets φ.
    b1: Decay rate of the first moment, in ``[0, 1)``.
    b2: Decay rate of the second moment, in ``[0, 1)``.
    eps: Added to the square root of the second moment; positive.
    lambda1: Scale of the angular term, non-negative; φ lies in
      ``[lambda2, lambda1 + lambda2]``.
    lambda2: Floor of φ, non-negative.
    mu_dtype: Optional dtype of the first moment.
    reference_compat: Reproduce the authors' published PyTorch code instead of
      the paper (see the note below).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`. Its state records
    statistics of φ (``phi_stats``; read them with :func:`optax_ext.diagnostics`)
    over a block of up to ``STATS_SAMPLE`` entries of every leaf, cut as a
    prefix of each axis without reshaping: the diagnostics cost almost nothing
    next to the update, and a leaf sharded over devices is never gathered.

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
    ``reference_compat=True`` follows the published ``myoptims/cosangulargrad.py``
    and ``tanangulargrad.py``. Per leaf they keep a stored angle ``min``
    (degrees, initially 0) and a stored cos/tan value ``final`` (initially 0).
    Each step they count the elements whose current angle exceeds the stored
    one (``torch.unique`` counts) and replace both stored arrays by the current
    ones only when both outcomes occur and strictly fewer elements are above
    than not. When every element is above, or none is, ``count[1]`` does not
    exist and the fallback branch compares a tensor with the string
    ``"False"``, which is never true: the stored values are kept. φ uses the
    stored value, and the step is PyTorch Adam's
    :math:`\sqrt{1-\beta_2^t}/(1-\beta_1^t)\cdot m\phi/(\sqrt{v} + \varepsilon)`.
    With ``min`` starting at 0, a replacement needs a majority of angles that
    are exactly 0 (bit-identical consecutive gradients), so φ usually stays
    at 0.5; on a one-element leaf it always does. The published code adds
    weight decay to the gradient (L2); :func:`angulargrad`'s ``weight_decay``
    stays decoupled in this mode too.
  """
  _check_args(method, b1, b2, eps, lambda1, lambda2)
  return _transform(method, b1, b2, eps, lambda1, lambda2, mu_dtype, reference_compat)


def _check_args(method, b1, b2, eps, lambda1, lambda2):
  _checks.check_choice("method", method, ("cos", "tan"))
  _checks.check_range("b1", b1, 0.0, 1.0, high_open=True)
  _checks.check_range("b2", b2, 0.0, 1.0, high_open=True)
  _checks.check_positive("eps", eps)
  _checks.check_nonnegative("lambda1", lambda1)
  _checks.check_nonnegative("lambda2", lambda2)


def _leaf_flags(mask, params):
  """Per leaf of ``params``: whether weight decay applies (``optax.masked`` rules)."""
  if mask is None:
    return [True] * len(jax.tree.leaves(params))
  flags = _checks.mask_leaves(mask, params)
  for f in flags:
    if not isinstance(f, (bool, np.bool_)):
      raise TypeError(f"mask leaves must be Python booleans, got {type(f).__name__}.")
  return [bool(f) for f in flags]


def _transform(
  method,
  b1,
  b2,
  eps,
  lambda1,
  lambda2,
  mu_dtype,
  reference_compat,
  learning_rate=None,
  weight_decay=0.0,
  mask=None,
) -> optax.GradientTransformationExtraArgs:
  """The AngularGrad direction, and with ``learning_rate`` the whole step.

  With ``learning_rate`` (a number or a schedule of the step count) the update
  is ``-lr_t · (direction + wd_t · params)`` on the leaves ``mask`` selects
  (``direction`` elsewhere), the same numbers as ``optax.chain`` of this
  direction, ``optax.add_decayed_weights`` and ``optax.scale_by_learning_rate``
  but formed in the pass that writes the state, so that the step costs no
  extra pass over memory.
  """
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    zeros = lambda: optax.tree.zeros_like(params)  # noqa: E731
    return AngularGradState(
      count=jnp.zeros([], jnp.int32),
      mu=optax.tree.zeros_like(params, dtype=mu_dtype),
      nu=zeros(),
      prev_grad=zeros(),
      tan_angle=() if reference_compat else zeros(),
      ref_angle=zeros() if reference_compat else (),
      ref_final=zeros() if reference_compat else (),
      phi_stats=jnp.full((4,), jnp.nan, jnp.float32),
    )

  decays = not (isinstance(weight_decay, (int, float)) and weight_decay == 0.0)

  def step_fns(updates, state, params):
    """Per leaf, ``f(direction, param)`` giving the update this transform returns,
    and the parameter leaves it reads (``None`` where it reads none)."""
    n = jax.tree.structure(updates).num_leaves
    if learning_rate is None:
      return [lambda d, p: d] * n, [None] * n
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def plain(d, p):
      return jnp.asarray(-lr, d.dtype) * d

    if not decays:
      return [plain] * n, [None] * n
    if params is None:
      raise ValueError("angulargrad with weight_decay needs `params` in update().")
    wd = weight_decay(state.count) if callable(weight_decay) else weight_decay

    def decayed(d, p):
      return jnp.asarray(-lr, d.dtype) * (d + wd * p).astype(d.dtype)

    fns = [decayed if f else plain for f in _leaf_flags(mask, params)]
    return fns, jax.tree.structure(updates).flatten_up_to(params)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    steps = step_fns(updates, state, params)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    if reference_compat:
      new_updates, fields, phi_sample = _reference_step(updates, state, mu, nu, count, steps)
    else:
      new_updates, fields, phi_sample = _paper_step(updates, state, mu, nu, count, steps)
    new_state = AngularGradState(count=count, phi_stats=_stats(phi_sample), **fields)
    return new_updates, new_state

  def _paper_step(updates, state, mu, nu, count, steps):
    first = count == 1  # A_min = A_1: there is no A_0
    inv_bc1 = 1.0 / (1.0 - jnp.asarray(b1) ** count)
    inv_sqrt_bc2 = jax.lax.rsqrt(1.0 - jnp.asarray(b2) ** count)

    def phi_of(g, g_prev, tan_prev):
      ct = _compute_dtype(g)
      r = _tan_of_angle(g.astype(ct), g_prev.astype(ct))
      r_min = jnp.where(first, r, jnp.minimum(r, tan_prev.astype(ct)))
      return _coefficient(r_min, method, lambda1, lambda2), r

    def direction(g, g_prev, tan_prev, m, v):
      ct = _compute_dtype(g)
      phi, _ = phi_of(g, g_prev, tan_prev)
      m_hat = m.astype(ct) * inv_bc1.astype(ct)
      denom = jnp.sqrt(v.astype(ct)) * inv_sqrt_bc2.astype(ct) + eps
      return (phi * m_hat / denom).astype(g.dtype)

    def tangent(g, g_prev, tan_prev):
      ct = _compute_dtype(g)
      return _tan_of_angle(g.astype(ct), g_prev.astype(ct)).astype(tan_prev.dtype)

    def outputs(g, g_prev, tan_prev, m, v, step, p):
      # Every array this leaf writes, in one pass over memory where the
      # compiler would otherwise give each its own loop (see _fusion).
      return _fusion.one_pass(
        step(direction(g, g_prev, tan_prev, m, v), p),
        tangent(g, g_prev, tan_prev),
        m if mu_dtype is None else m.astype(mu_dtype),
        v,
        g.astype(g_prev.dtype),
      )

    treedef = jax.tree.structure(updates)
    leaves = [treedef.flatten_up_to(t) for t in (updates, state.prev_grad, state.tan_angle, mu, nu)]
    out = [outputs(*xs) for xs in zip(*leaves, *steps)]
    new_updates, tan_angle, mu, nu, prev_grad = (
      treedef.unflatten([o[i] for o in out]) for i in range(5)
    )
    phi_sample = [
      _leaf_stats(phi_of(_sample(g), _sample(gp), _sample(tp))[0], lambda2)
      for g, gp, tp in zip(
        *(jax.tree.leaves(t) for t in (updates, state.prev_grad, state.tan_angle))
      )
    ]
    fields = {"mu": mu, "nu": nu, "prev_grad": prev_grad, "tan_angle": tan_angle}
    return new_updates, {**fields, "ref_angle": (), "ref_final": ()}, phi_sample

  def _reference_step(updates, state, mu, nu, count, steps):
    step_scale = jnp.sqrt(1.0 - jnp.asarray(b2) ** count) / (1.0 - jnp.asarray(b1) ** count)

    def leaf(g, g_prev, stored, final, m, v, step, p):
      ct = _compute_dtype(g)
      gf, gp = g.astype(ct), g_prev.astype(ct)
      tan = jnp.abs((gp - gf) / (1.0 + gp * gf))  # literal, as published
      angle = jnp.degrees(jnp.arctan(tan))
      above = jnp.sum(angle > stored)
      replace = (above > 0) & (above < angle.size - above)
      current = jax.lax.rsqrt(1.0 + tan * tan) if method == "cos" else tan
      stored = jnp.where(replace, angle.astype(stored.dtype), stored)
      final = jnp.where(replace, current.astype(final.dtype), final)
      phi = jnp.tanh(jnp.abs(final.astype(ct))) * lambda1 + lambda2
      u = step_scale.astype(ct) * (m.astype(ct) * phi) / (jnp.sqrt(v.astype(ct)) + eps)
      return step(u.astype(g.dtype), p), stored, final, _leaf_stats(_sample(phi), lambda2)

    treedef = jax.tree.structure(updates)
    args = [
      treedef.flatten_up_to(t)
      for t in (updates, state.prev_grad, state.ref_angle, state.ref_final, mu, nu)
    ]
    out = [leaf(*xs) for xs in zip(*args, *steps)]
    u, stored, final = (jax.tree.unflatten(treedef, [o[i] for o in out]) for i in range(3))
    fields = {
      "mu": optax.tree.cast(mu, mu_dtype),
      "nu": nu,
      "prev_grad": optax.tree.cast_like(updates, state.prev_grad),
      "tan_angle": (),
    }
    return u, {**fields, "ref_angle": stored, "ref_final": final}, [o[3] for o in out]

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
    A :class:`optax.GradientTransformationExtraArgs` with the state and the
    updates of ``optax.chain(scale_by_angulargrad(...),
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate))`` (so ``state[0]`` is the
    :class:`AngularGradState`), but the update is formed in the same pass over
    memory as the state, where a chain spends one more pass on the learning
    rate on CPU. Schedules are evaluated at the number of steps taken before
    this one, as optax's are.

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
  _check_args(method, b1, b2, eps, lambda1, lambda2)
  whole_step = _transform(
    method, b1, b2, eps, lambda1, lambda2, mu_dtype, reference_compat,
    learning_rate=learning_rate, weight_decay=weight_decay, mask=mask,
  )  # fmt: skip
  decay = optax.add_decayed_weights(weight_decay, mask)
  scale = optax.scale_by_learning_rate(learning_rate)
  # The numbers and the state of optax.chain(scale_by_angulargrad(...), decay,
  # scale), but the update is formed in the pass that writes AngularGrad's
  # state (see _transform); its init does not depend on the learning rate.

  def init_fn(params):
    return (whole_step.init(params), decay.init(params), scale.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    new_updates, ag_state = whole_step.update(updates, state[0], params, **extra_args)
    # The other stages only count steps here; the arrays they would compute are
    # unused, and the compiler drops them.
    _, decay_state = decay.update(updates, state[1], params)
    _, scale_state = scale.update(updates, state[2], params)
    return new_updates, (ag_state, decay_state, scale_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _read_diagnostics(state: AngularGradState) -> dict[str, jax.Array]:
  return {k: state.phi_stats[i] for i, k in enumerate(_PHI_KEYS)}


_diagnostics.register(AngularGradState, "angulargrad", _read_diagnostics)
