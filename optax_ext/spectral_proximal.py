"""SP: the spectral proximal method with saliency matrix (docs/design.md, SP).

Two stages, usable apart and together:

- :func:`optax_ext.scale_by_spectral_damping` turns the gradient into
  ``B⁻¹ g`` with the diagonal damping matrix ``B`` of the paper's Eq. 17-21
  (:mod:`optax_ext.spectral_damping`);
- :func:`optax_ext.saliency_proximal`, placed after the learning rate, prunes
  the least salient candidate parameters (Eq. 27-28), after any optimizer
  (``B = 1`` there; :mod:`optax_ext.saliency`);
- :func:`sp` is the paper's method: one transformation that computes ``B``
  once and hands it from the first stage to the second within the same step,
  so the saliency uses the damping of that step with no state or extra
  argument passed between transformations.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optax_ext import _checks, _diagnostics, saliency, spectral_damping
from optax_ext.saliency import MaskOrFn, SaliencyProximalState
from optax_ext.spectral_damping import DEFAULT_B_MAX, SpectralDampingState

__all__ = ["SPState", "sp"]


class SPState(NamedTuple):
  """State for :func:`sp`'s core: the damping and the proximal stage."""

  damping: SpectralDampingState
  proximal: SaliencyProximalState


def _scale_by_sp(learning_rate, sparsity, scope, interval, secant, quantile, ties, mask):
  """Damping, learning rate and pruning of one step, with the damping handed to the saliency."""

  def init_fn(params):
    return SPState(spectral_damping.init(params), saliency.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    binv_fns, damping_state = spectral_damping.step(
      updates, state.damping, params, scope, interval(), secant
    )
    lr = learning_rate(state.damping.count) if callable(learning_rate) else learning_rate
    leaves, treedef = jax.tree.flatten(updates)
    # u = -λ B⁻¹ g, and B u²/2 = B⁻¹ (λg)²/2: the same value without a division.
    items = [
      saliency.Leaf(
        step=lambda g=g, f=f: -lr * f() * g.astype(jnp.promote_types(g.dtype, jnp.float32)),
        weight=lambda g=g, f=f: jnp.square(lr * g.astype(jnp.float32)) * 0.5 * f(),
        dtype=g.dtype,
      )
      for g, f in zip(leaves, binv_fns)
    ]
    new_updates, proximal_state = saliency.prune(
      items,
      treedef,
      state.proximal,
      params,
      sparsity=sparsity,
      scope=scope,
      quantile=quantile,
      ties=ties,
      mask=mask,
      store_saliency=False,
    )
    return new_updates, SPState(damping_state, proximal_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sp(
  learning_rate: optax.ScalarOrSchedule,
  sparsity: jax.typing.ArrayLike = 0.1,
  momentum: Optional[jax.typing.ArrayLike] = None,
  nesterov: bool = False,
  *,
  scope: str = "leaf",
  b_max: jax.typing.ArrayLike = DEFAULT_B_MAX,
  secant: str = "delta",
  quantile: str = "fast",
  ties: str = "magnitude",
  mask: MaskOrFn = None,
  max_enlargement: Optional[jax.typing.ArrayLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The Spectral Proximal method with saliency matrix (Algorithm 1), optionally with momentum.

  .. math::
    d_t = B_t^{-1} g_t,\quad u_t = -\lambda d_t,\quad
    \theta_{t+1} = \operatorname{prox}_{p}(\theta_t + u_t)

  with :math:`B_t` from :func:`optax_ext.scale_by_spectral_damping` and the
  proximal step of :func:`optax_ext.saliency_proximal` using the same
  :math:`B_t` in the saliency
  :math:`S = B_t \odot u_t^2/2 \odot (\theta_t + u_t)^2/2`. With ``momentum``
  (the paper's "SP + Nesterov"), heavy-ball or Nesterov momentum
  (:func:`optax.trace` semantics) is applied to the gradient before damping,
  as the published code does.

  Args:
    learning_rate: λ, fixed or an optax schedule.
    sparsity: p, the fraction of each leaf pruned at each step.
    momentum: Momentum decay, or ``None`` (the plain SP method, with no
      momentum buffer in the state), as in :func:`optax.sgd`.
    nesterov: Nesterov instead of heavy-ball momentum.
    scope: ``"leaf"`` or ``"global"``, for both the secant sums and the quantile.
    b_max: Bound of the damping inverse: :math:`B^{-1} \in [1/b_{\max}, b_{\max}]`
      (see :func:`optax_ext.scale_by_spectral_damping`).
    secant: ``"delta"`` (paper) or ``"iterate"`` (published code).
    quantile: ``"fast"`` or ``"exact"`` (see :func:`optax_ext.saliency_proximal`).
    ties: ``"magnitude"`` or ``"all"`` (see :func:`optax_ext.saliency_proximal`).
    mask: Which leaves are pruned (default: ``ndim >= 2``).
    max_enlargement: The most the damping may enlarge a step
      (:math:`B^{-1} \le` this). ``None``: ``b_max`` without momentum, 1 with
      momentum, so that with momentum the damping only shrinks steps.

  .. note::
    Momentum already lengthens the steps; damping that enlarges them further
    makes SP with momentum diverge where SGD with the same momentum and
    learning rate converges (docs/design.md, SP — the bound b_max and the
    stable learning rate). Hence the default ``max_enlargement=1`` with
    momentum.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`; ``update`` needs ``params``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_ext
    >>> f = lambda p: jnp.sum((p['w'] - 1.0) ** 2)
    >>> params = {'w': jnp.array([[0.5, -0.3], [0.2, 0.9]])}
    >>> tx = optax_ext.sp(learning_rate=0.1, sparsity=0.0)
    >>> state = tx.init(params)
    >>> update = jax.jit(tx.update)  # one compiled program, not one per operation
    >>> for _ in range(3):
    ...   updates, state = update(jax.grad(f)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"{f(params):.4f}")
    1.6576
    1.3427
    1.0876

  References:
    Yong, Kwan, Ng, Sim, `Spectral Proximal Method and Saliency Matrix for
    Robust Deep Learning Optimization <https://doi.org/10.24138/jcomss-2023-0124>`_,
    JCOMSS 20(1), 2024.
  """
  _checks.check_learning_rate(learning_rate)
  if momentum is not None:
    _checks.check_range("momentum", momentum, 0.0, 1.0, high_open=True)
  spectral_damping.check_args(scope, b_max, secant, max_enlargement)
  saliency.check_args(sparsity, scope, quantile, ties)
  if max_enlargement is None and momentum is not None:
    max_enlargement = 1.0
  interval = lambda: spectral_damping.clip_interval(b_max, max_enlargement)  # noqa: E731
  return optax.chain(
    optax.identity() if momentum is None else optax.trace(decay=momentum, nesterov=nesterov),
    _scale_by_sp(learning_rate, sparsity, scope, interval, secant, quantile, ties, mask),
  )


def _diagnostics_of(state: SPState) -> dict[str, jax.Array]:
  return {**spectral_damping.diagnostics(state.damping), **saliency.diagnostics(state.proximal)}


_diagnostics.register(SPState, "sp", _diagnostics_of)
