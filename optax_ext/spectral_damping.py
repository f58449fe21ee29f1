"""SP's multiple-damping spectral direction ``B⁻¹ g`` (docs/design.md, SP — spectral damping)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from optax_ext import _checks, _diagnostics, _fusion
from optax_ext.published import sp as published_sp

__all__ = ["DEFAULT_B_MAX", "SpectralDampingState", "scale_by_spectral_damping"]

#: The default bound on the damping, ``B⁻¹`` kept in ``[1/b_max, b_max]`` (docs/design.md,
#: SP — The bound b_max and the stable learning rate).
DEFAULT_B_MAX = 10.0
# Below and above these the raw secant sums may underflow or overflow: the
# sums are then taken again on s / max|s|.
_SAFE_SCALE = (1e-9, 1e9)


class SpectralDampingState(NamedTuple):
  """State for :func:`scale_by_spectral_damping`.

  The damping ``B`` of the last step is described by per-leaf scalars rather
  than stored whole: ``diagonal`` (1 where the diagonal case was taken, 0 for
  the scalar case, -1 where ``B = I``), and the range of ``B⁻¹`` (``binv_min``,
  ``binv_max``) after clipping.
  """

  count: jax.Array  # shape=(), dtype=jnp.int32
  prev_params: optax.Params
  prev_grads: optax.Updates
  diagonal: Any  # per leaf, shape=(), int32
  binv_min: Any  # per leaf, shape=(), float32
  binv_max: Any  # per leaf, shape=(), float32


class _Damping(NamedTuple):
  """One leaf's ``B⁻¹`` as scalars: ``diag ? min(1 + ω̂ (s/σ)², upper) : scalar``."""

  diagonal: jax.Array  # bool: the diagonal case
  moved: jax.Array  # bool: not the first step, and s is not 0
  omega_hat: jax.Array  # ω σ², with σ = max|s|
  inv_sigma: jax.Array
  scalar: jax.Array  # B⁻¹ where it is one value (1 if the leaf did not move)


def init(params) -> SpectralDampingState:
  """The state before the first step (``B = I``)."""
  return SpectralDampingState(
    count=jnp.zeros([], jnp.int32),
    prev_params=optax.tree.zeros_like(params),
    prev_grads=optax.tree.zeros_like(params),
    diagonal=jax.tree.map(lambda _: jnp.full([], -1, jnp.int32), params),
    binv_min=jax.tree.map(lambda _: jnp.ones([], jnp.float32), params),
    binv_max=jax.tree.map(lambda _: jnp.ones([], jnp.float32), params),
  )


def _compute(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _reduce_all(operands, ops):
  """One reduction of several same-shaped operands over every axis (no reshape)."""
  zero = jnp.zeros([], operands[0].dtype)
  return lax.reduce(
    tuple(operands),
    (zero,) * len(operands),
    lambda a, b: tuple(op(x, y) for op, x, y in zip(ops, a, b)),
    tuple(range(operands[0].ndim)),
  )


def _raw_sums(s, y):
  """``(max|s|, Σs², Σsy, Σs⁴)`` of one leaf in one pass."""
  if not s.size:
    z = jnp.zeros([], s.dtype)
    return z, z, z, z
  s2 = s * s
  return _reduce_all((jnp.abs(s), s2, s * y, s2 * s2), (jnp.maximum, jnp.add, jnp.add, jnp.add))


def _scaled_sums(pairs, sigma):
  """``(Σŝ², Σŝy, Σŝ⁴)`` with ``ŝ = s/σ`` over the given ``(s, y)`` leaves: safe at any magnitude."""
  safe = jnp.where(sigma > 0, sigma, 1.0)
  total = [jnp.zeros([], sigma.dtype)] * 3
  for s, y in pairs:
    if s.size:
      sh = s / safe
      sh2 = sh * sh
      part = _reduce_all((sh2, sh * y, sh2 * sh2), (jnp.add,) * 3)
      total = [t + p for t, p in zip(total, part)]
  return tuple(total)


def _secant_sums(make_pairs: Callable[[], list], groups: list) -> list:
  """Per group of leaves, ``(σ, Σŝ², Σŝy, Σŝ⁴)`` with ``σ = max|s|`` and ``ŝ = s/σ``.

  Taken in one pass from the unscaled sums wherever ``σ`` is moderate and the
  sums are finite (the usual case); only if some group is outside that range
  does a second, scaled pass run, under one conditional for the whole tree.
  """
  if not groups:
    return []
  raw = [_raw_sums(s, y) for s, y in make_pairs()]
  out, oks = [], []
  for g in groups:
    sigma = jnp.max(jnp.stack([raw[i][0] for i in g]))
    a, b, c = (sum(raw[i][k] for i in g) for k in (1, 2, 3))
    ok = (sigma >= _SAFE_SCALE[0]) & (sigma <= _SAFE_SCALE[1]) & jnp.isfinite(a + b + c)
    safe = jnp.where(ok, sigma, 1.0)
    out.append((sigma, a / safe**2, b / safe, (c / safe**2) / safe**2))
    oks.append(ok)
  oks = jnp.stack(oks)

  def scaled():
    pairs = make_pairs()  # rebuilt here, so no s or y is an operand written for the branch
    res = []
    for g, (sigma, a, b, c4), ok in zip(groups, out, oks):
      sa, sb, sc = _scaled_sums([pairs[i] for i in g], sigma)
      res.append((jnp.where(ok, a, sa), jnp.where(ok, b, sb), jnp.where(ok, c4, sc)))
    return res

  fixed = lax.cond(jnp.all(oks), lambda: [o[1:] for o in out], scaled)
  return [(o[0], *f) for o, f in zip(out, fixed)]


def _damping(sums, first, bounds) -> _Damping:
  r"""Eq. 17-21 from one leaf's (group's) scaled secant sums.

  With :math:`\hat s = s/\sigma`: :math:`s^\top s > s^\top y` picks the diagonal
  case, :math:`\omega s_i^2 = \hat\omega \hat s_i^2` with
  :math:`\hat\omega = (\sum\hat s^2 - \sum\hat s y/\sigma)/\sum\hat s^4`;
  otherwise :math:`B^{-1} = s^\top s / s^\top y`, clipped to ``bounds``.
  """
  sigma, a, b, c4 = sums
  safe = jnp.where(sigma > 0, sigma, 1.0)
  moved = (sigma > 0) & ~first
  diagonal = moved & (sigma * a > b)  # sᵀs > sᵀy
  omega_hat = jnp.clip((a - b / safe) / jnp.where(c4 > 0, c4, 1.0), 0.0, 1e30)
  ratio = jnp.clip(safe * a / jnp.where(b > 0, b, 1.0), *bounds)
  scalar = jnp.where(moved, ratio, 1.0).astype(safe.dtype)
  return _Damping(diagonal, moved, omega_hat, 1.0 / safe, scalar)


def _binv(s: jax.Array, d: _Damping, bounds) -> jax.Array:
  """``B⁻¹`` of one leaf: ``min(1 + ω̂ ŝ², upper)`` in the diagonal case, else the scalar.

  ``1 + ω̂ŝ² >= 1 >= lower``, so only the upper bound applies there.
  """
  sh = s * d.inv_sigma
  return _fusion.select_by_scalar(
    d.diagonal, jnp.minimum(1.0 + d.omega_hat * (sh * sh), bounds[1]), d.scalar
  )


def _range(d: _Damping, bounds) -> tuple[jax.Array, jax.Array]:
  """The smallest and largest ``B⁻¹`` of the leaf, without another pass (max ŝ² = 1)."""
  one = jnp.ones([], jnp.float32)
  lo_d = jnp.clip(one, *bounds)
  hi_d = jnp.clip(1.0 + d.omega_hat.astype(jnp.float32), *bounds)
  sc = d.scalar.astype(jnp.float32)
  return jnp.where(d.diagonal, lo_d, sc), jnp.where(d.diagonal, hi_d, sc)


def step(grads, state: SpectralDampingState, params, scope: str, bounds, secant: str):
  """One damping step: per leaf a function giving ``B⁻¹``, and the new state.

  ``bounds`` is ``(lower, upper)``, the interval ``B⁻¹`` is clipped to.

  ``B⁻¹`` is handed out as functions so that on CPU each consumer computes it
  inside its own loop from the parameters (see :func:`optax_ext._fusion.recomputed`).
  """
  if params is None:
    raise ValueError("spectral damping needs `params` (the current parameters) in update")
  treedef = jax.tree.structure(params)
  flat = lambda t: treedef.flatten_up_to(t)  # noqa: E731
  p_l, g_l, pp_l, pg_l = flat(params), flat(grads), flat(state.prev_params), flat(state.prev_grads)
  pair = _SECANTS[secant]

  def make_pairs():  # (s, y) per leaf, signs flipped where that keeps them out of memory
    return [
      pair(_compute(p), _compute(q), _compute(g), _compute(h), for_sums=True)
      for p, q, g, h in zip(p_l, pp_l, g_l, pg_l)
    ]

  n = len(p_l)
  groups = [list(range(n))] if (scope == "global" and n) else [[i] for i in range(n)]
  sums = _secant_sums(make_pairs, groups)
  per_leaf = sums * n if scope == "global" else sums
  first = state.count == 0
  dampings = [_damping(s, first, bounds) for s in per_leaf]

  def binv_of(i):
    s, _ = pair(_compute(p_l[i]), _compute(pp_l[i]), _compute(g_l[i]), _compute(pg_l[i]))
    return _binv(s, dampings[i], bounds)

  binv_fns = [_fusion.recomputed(lambda i=i: binv_of(i), (p_l[i], g_l[i])) for i in range(n)]
  ranges = [_range(d, bounds) for d in dampings]
  flags = [jnp.where(d.diagonal, 1, jnp.where(d.moved, 0, -1)).astype(jnp.int32) for d in dampings]
  new_state = SpectralDampingState(
    count=optax.safe_increment(state.count),
    prev_params=optax.tree.cast_like(params, state.prev_params),
    prev_grads=optax.tree.cast_like(grads, state.prev_grads),
    diagonal=treedef.unflatten(flags),
    binv_min=treedef.unflatten([r[0] for r in ranges]),
    binv_max=treedef.unflatten([r[1] for r in ranges]),
  )
  return binv_fns, new_state


def _delta_pair(p, p_prev, g, g_prev, for_sums=False):
  """The paper's secant pair ``s = θ_t − θ_{t−1}``, ``y = g_t − g_{t−1}``."""
  if for_sums:  # the sums are even in (s, y) jointly: any sign does
    return _fusion.negated_difference(p, p_prev), _fusion.negated_difference(g, g_prev)
  return p - p_prev, g - g_prev


_SECANTS = {"delta": _delta_pair, "iterate": published_sp.iterate_pair}


def check_args(scope, b_max, secant, max_enlargement=None) -> None:
  """Raises ``ValueError`` for a bad scope, bound or secant rule."""
  _checks.check_choice("scope", scope, ("leaf", "global"))
  _checks.check_choice("secant", secant, tuple(_SECANTS))
  _checks.check_range("b_max", b_max, 1.0)
  if max_enlargement is not None:
    _checks.check_range("max_enlargement", max_enlargement, 1.0)


def clip_interval(b_max, max_enlargement=None) -> tuple:
  """``(1/b_max, upper)``: the interval of ``B⁻¹``, upper ``max_enlargement`` or ``b_max``."""
  upper = b_max if max_enlargement is None else jnp.minimum(max_enlargement, b_max)
  return 1.0 / b_max, upper


def scale_by_spectral_damping(
  scope: str = "leaf",
  b_max: jax.typing.ArrayLike = DEFAULT_B_MAX,
  secant: str = "delta",
  *,
  max_enlargement: Optional[jax.typing.ArrayLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The multiple-damping direction :math:`d = B^{-1} g` (Eq. 17-21).

  With :math:`s = \theta_t - \theta_{t-1}` and :math:`y = g_t - g_{t-1}`,
  the sums taken per leaf (``scope="leaf"``, as the published code does) or
  over all leaves (``scope="global"``):

  .. math::
    B^{-1}_i = \begin{cases}
      1 + \omega s_i^2,\ \ \omega = \dfrac{s^\top s - s^\top y}{\sum_i s_i^4}
        & \text{if } s^\top s > s^\top y,\\[4pt]
      s^\top s / s^\top y & \text{otherwise,}
    \end{cases}
    \qquad B^{-1} \leftarrow \operatorname{clip}(B^{-1}, 1/b_{\max}, e_{\max})

  and :math:`B = I` at the first step and wherever :math:`s^\top s = 0` (a leaf
  that did not move). The sums are computed on :math:`s / \max|s|`, so
  magnitudes from 1e-30 to 1e30 neither overflow nor underflow.

  The bound :math:`b_{\max}` is the boundedness that the paper's Lemma 3.3
  assumes (:math:`m \le B \le M`); without it minibatch noise makes
  :math:`\omega s_i^2` unbounded (``bench/sp_train.py`` shows an unbounded
  transcription diverging). The diagonal case enlarges the step, by up to
  :math:`e_{\max}` (``max_enlargement``, by default :math:`b_{\max}`); the
  scalar case (:math:`s^\top s \le s^\top y`) never enlarges it. SP's stable
  learning rate therefore lies between SGD's divided by :math:`e_{\max}` and
  SGD's multiplied by :math:`b_{\max}` (docs/design.md, SP — the bound b_max
  and the stable learning rate).

  Args:
    scope: ``"leaf"`` or ``"global"``: where the secant sums are taken.
    b_max: Bound of :math:`B^{-1}`: it lies in :math:`[1/b_{\max}, b_{\max}]`.
    secant: ``"delta"`` (the paper) or ``"iterate"`` (the published code's
      effective rule, :mod:`optax_ext.published.sp`).
    max_enlargement: A tighter upper bound of :math:`B^{-1}` (at least 1): the
      most the damping may enlarge a step. 1 makes the damping only shrink
      steps. ``None``: ``b_max``.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`; ``update`` needs ``params``.

  References:
    Yong, Kwan, Ng, Sim, `Spectral Proximal Method and Saliency Matrix for
    Robust Deep Learning Optimization <https://doi.org/10.24138/jcomss-2023-0124>`_,
    JCOMSS 20(1), 2024.
  """
  check_args(scope, b_max, secant, max_enlargement)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    interval = clip_interval(b_max, max_enlargement)
    binv_fns, new_state = step(updates, state, params, scope, interval, secant)
    return jax.tree.map(
      lambda g, f: (f() * g).astype(g.dtype), updates, _tree(updates, binv_fns)
    ), new_state

  return optax.GradientTransformationExtraArgs(init, update_fn)


def _tree(like, leaves):
  return jax.tree.structure(like).unflatten(leaves)


def diagnostics(state: SpectralDampingState) -> dict[str, jax.Array]:
  """The damping case per leaf (fractions) and the range of ``B⁻¹`` over the tree."""
  flags = jax.tree.leaves(state.diagonal)
  if not flags:
    return {}
  flags = jnp.stack(flags)
  return {
    "diagonal_fraction": jnp.mean((flags == 1).astype(jnp.float32)),
    "scalar_fraction": jnp.mean((flags == 0).astype(jnp.float32)),
    "binv_min": jnp.min(jnp.stack(jax.tree.leaves(state.binv_min))),
    "binv_max": jnp.max(jnp.stack(jax.tree.leaves(state.binv_max))),
  }


_diagnostics.register(SpectralDampingState, "spectral_damping", diagnostics)
