"""AngularGrad as the authors' published PyTorch code computes it.

The paper's rule is :func:`optax_ext.scale_by_angulargrad`; this module
reproduces ``myoptims/cosangulargrad.py`` and ``tanangulargrad.py`` of the
published repository, reached with ``reference_compat=True``. The departures
are listed in ``docs/design.md`` (AngularGrad).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optax_ext import _diagnostics
from optax_ext.angulargrad import (
  _check_args,
  _compute_dtype,
  _phi_statistics,
  _read_diagnostics,
)

__all__ = ["PublishedAngularGradState", "scale_by_published_angulargrad"]


class PublishedAngularGradState(NamedTuple):
  """State for :func:`scale_by_published_angulargrad`."""

  count: jax.Array  # shape=(), dtype=jnp.int32
  mu: optax.Updates  # first moment, in mu_dtype (the parameter's dtype by default)
  nu: optax.Updates  # second moment
  prev_grad: optax.Updates  # g_{t-1}
  ref_angle: optax.Updates  # the stored angle `min`, in degrees
  ref_final: optax.Updates  # the stored cos or tan value `final`
  # shape=(4,), dtype=jnp.float32: statistics of φ, as AngularGradState.phi_stats.
  phi_stats: jax.Array


def _published_tan(g: jax.Array, g_prev: jax.Array) -> jax.Array:
  """``|(g_prev − g) / (1 + g_prev·g)|`` as written (``0/0`` is NaN), in float32 at least."""
  ct = _compute_dtype(g)
  g, g_prev = g.astype(ct), g_prev.astype(ct)
  return jnp.abs((g_prev - g) / (1.0 + g_prev * g))


def _vote(angle: jax.Array, stored: jax.Array) -> jax.Array:
  """Whether the published code replaces a leaf's stored angle and value.

  It counts the outcomes of ``angle > stored`` with ``torch.unique`` and
  replaces when the second count (elements above) is below the first. With
  one outcome only, that count does not exist; the fallback compares the
  outcome with the string ``"False"``, which is never equal, and keeps.
  """
  above = jnp.sum(angle > stored, dtype=jnp.int32)
  return (above > 0) & (above < angle.size - above)


def scale_by_published_angulargrad(
  method: str = "cos",
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  lambda1: jax.typing.ArrayLike = 0.5,
  lambda2: jax.typing.ArrayLike = 0.5,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates as the published AngularGrad code does.

  Per leaf, with the current angle :math:`A_t` in degrees and the stored
  angle :math:`\bar A` and value :math:`\bar c` (both initially 0):

  .. math::
    n_> = \#\{i : A_{t,i} > \bar A_i\},\qquad
    (\bar A, \bar c) \leftarrow (A_t, \angle(A_t)) \text{ if } 0 < n_> < n - n_>,

    \phi_t = \tanh(|\bar c|)\,\lambda_1 + \lambda_2,\qquad
    u_t = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,\frac{m_t\,\phi_t}{\sqrt{v_t} + \varepsilon},

  with :math:`\angle \in \{\cos, \tan\}` and Adam's moments :math:`m_t, v_t`.
  The tangent is taken as written, :math:`|(g_{t-1} - g_t) / (1 + g_{t-1}
  g_t)|`, so ``0/0`` is NaN (and counts as not above). See the note of
  :func:`optax_ext.scale_by_angulargrad` for what the vote means.

  Args:
    method: ``"cos"`` or ``"tan"``: which function of the angle is stored.
    b1: Decay rate of the first moment, in ``[0, 1)``.
    b2: Decay rate of the second moment, in ``[0, 1)``.
    eps: Added to the square root of the second moment; positive.
    lambda1: Scale of the angular term (0.5 in the published code).
    lambda2: Floor of φ (0.5 in the published code).
    mu_dtype: Optional dtype of the first moment.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose state records the
    same φ statistics as the paper's (read them with :func:`optax_ext.diagnostics`).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from optax_ext.published.angulargrad import scale_by_published_angulargrad
    >>> tx = optax.chain(scale_by_published_angulargrad(), optax.scale(-0.1))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(2 * params, state)
    >>> print(float(state[0].phi_stats[2]))  # every angle is above 0: φ stays at 0.5
    0.5

  References:
    Roy et al., `AngularGrad <https://arxiv.org/abs/2105.10190>`_, IEEE TNNLS,
    2022; the code published with it, ``myoptims/cosangulargrad.py`` and
    ``myoptims/tanangulargrad.py``.
  """
  _check_args(method, b1, b2, eps, lambda1, lambda2)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    return PublishedAngularGradState(
      count=jnp.zeros([], jnp.int32),
      mu=optax.tree.zeros_like(params, dtype=mu_dtype),
      nu=optax.tree.zeros_like(params),
      prev_grad=optax.tree.zeros_like(params),
      ref_angle=optax.tree.zeros_like(params),
      ref_final=optax.tree.zeros_like(params),
      phi_stats=jnp.full((4,), jnp.nan, jnp.float32),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    step_scale = jnp.sqrt(1.0 - jnp.asarray(b2) ** count) / (1.0 - jnp.asarray(b1) ** count)

    def trig(tan):
      return jax.lax.rsqrt(1.0 + tan * tan) if method == "cos" else tan

    def keep_or_replace(replace, current, stored):
      return jnp.where(replace, current.astype(stored.dtype), stored)

    def coefficient(final, g):
      return jnp.tanh(jnp.abs(final.astype(_compute_dtype(g)))) * lambda1 + lambda2

    def step(g, phi, m, v):
      ct = phi.dtype
      u = step_scale.astype(ct) * (m.astype(ct) * phi) / (jnp.sqrt(v.astype(ct)) + eps)
      return u.astype(g.dtype)

    tan = jax.tree.map(_published_tan, updates, state.prev_grad)
    angle = jax.tree.map(lambda r: jnp.degrees(jnp.arctan(r)), tan)
    replace = jax.tree.map(_vote, angle, state.ref_angle)
    ref_angle = jax.tree.map(keep_or_replace, replace, angle, state.ref_angle)
    ref_final = jax.tree.map(keep_or_replace, replace, jax.tree.map(trig, tan), state.ref_final)
    phi = jax.tree.map(coefficient, ref_final, updates)
    new_updates = jax.tree.map(step, updates, phi, mu, nu)
    new_state = PublishedAngularGradState(
      count=count,
      mu=optax.tree.cast(mu, mu_dtype),
      nu=optax.tree.cast_like(nu, state.nu),
      prev_grad=optax.tree.cast_like(updates, state.prev_grad),
      ref_angle=ref_angle,
      ref_final=ref_final,
      phi_stats=_phi_statistics(phi, lambda2),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_diagnostics.register(PublishedAngularGradState, "angulargrad", _read_diagnostics)
