"""SP's saliency-weighted L0 proximal step (docs/design.md, SP — saliency proximal step)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_ext import _checks, _diagnostics, _fusion
from optax_ext import quantile as quantile_lib

__all__ = ["SaliencyProximalState", "saliency_proximal"]

_FAST_TOL = 0.0045  # the fast quantile's allowed excess pruned fraction (< 0.005)
_COLD_THRESHOLD = 1e-12  # where the first step's threshold search starts
_COLD_STEP = 2**26  # and its first outward step (8 binades)

MaskOrFn = Union[Any, Callable[[optax.Params], Any], None]


class SaliencyProximalState(NamedTuple):
  """State for :func:`saliency_proximal`: per-leaf scalars only.

  ``threshold``: the largest saliency pruned at the last step (the next
  step's search starts there; 0 outside the mask); ``step`` and ``density``
  (int32 key distance, float32 entries per key): what the search learned about
  the saliency distribution near the threshold; ``pruned``: the fraction of
  the leaf's entries set to zero at the last step (0 outside the mask);
  ``pruned_total``: the fraction of all masked entries; ``passes``: the
  counting passes the last search took.
  """

  count: jax.Array  # shape=(), dtype=jnp.int32
  threshold: Any  # per leaf, shape=(), float32
  step: Any  # per leaf, shape=(), int32
  density: Any  # per leaf, shape=(), float32
  pruned: Any  # per leaf, shape=(), float32
  pruned_total: jax.Array  # shape=(), dtype=jnp.float32
  passes: jax.Array  # shape=(), dtype=jnp.int32


class Leaf(NamedTuple):
  """What the proximal step needs of one leaf, as functions of nothing.

  ``step`` gives the update ``u`` about to be applied, in the precision it is
  computed in (at least float32); ``weight`` gives ``B ⊙ u²/2`` (the
  saliency's first factor); ``dtype`` is the update's dtype. Handing
  functions lets the CPU program compute them inside each counting pass. The
  candidate ``c = θ + u`` is formed from the unrounded step, so that it does
  not depend on whether the compiler keeps a rounding to a narrower ``dtype``
  inside a fused loop (docs/design.md, Conventions — CPU fusion seam).
  """

  step: Callable[[], jax.Array]
  weight: Callable[[], jax.Array]
  dtype: Any


def init(params) -> SaliencyProximalState:
  """The state before the first step."""
  per_leaf = lambda value, dtype: jax.tree.map(lambda _: jnp.full([], value, dtype), params)  # noqa: E731
  return SaliencyProximalState(
    count=jnp.zeros([], jnp.int32),
    threshold=per_leaf(_COLD_THRESHOLD, jnp.float32),
    step=per_leaf(_COLD_STEP, jnp.int32),
    density=per_leaf(0.0, jnp.float32),
    pruned=per_leaf(0.0, jnp.float32),
    pruned_total=jnp.zeros([], jnp.float32),
    passes=jnp.zeros([], jnp.int32),
  )


def mask_leaves(mask: MaskOrFn, params) -> list[bool]:
  """Per leaf, whether it is pruned (default: ``ndim >= 2``, kernels)."""
  if mask is None:
    return [jnp.ndim(p) >= 2 for p in jax.tree.leaves(params)]
  return [bool(f) for f in _checks.mask_leaves(mask, params)]


def _entries(leaf: Leaf, p: jax.Array, shape, ties: str, store: bool) -> quantile_lib.Entries:
  """The saliency ``S = B u²/2 · c²/2`` and the tie value ``|c|`` of one leaf, ``c = θ + u``."""

  def candidate():
    return p.astype(jnp.float32) + leaf.step().astype(jnp.float32)

  def saliency():
    c = candidate()
    return leaf.weight() * (c * c * 0.5)

  if store:
    # Computed once; detached so that the step inside it is not merged with
    # the final select's, which would write the step to memory as well.
    stored = _fusion.detached(saliency)()
    values = lambda: stored  # noqa: E731
  else:
    values = _fusion.recomputed(saliency, p)
  tie_values = (lambda: jnp.abs(candidate())) if ties == "magnitude" else None
  return quantile_lib.Entries(values, tie_values, tuple(shape))


def _groups(flags, sizes, scope):
  active = [i for i, (on, n) in enumerate(zip(flags, sizes)) if on and n]
  if scope == "global":
    return [active] if active else []
  return [[i] for i in active]


def prune(
  leaves: list[Leaf],
  treedef,
  state: SaliencyProximalState,
  params,
  *,
  sparsity,
  scope: str,
  quantile: str,
  ties: str,
  mask: MaskOrFn,
  store_saliency: bool,
):
  """The pruned update and the new state, from each leaf's step and saliency weight.

  With ``store_saliency`` false (and the fast quantile) the saliency is
  recomputed inside each counting pass on CPU (:func:`_fusion.recomputed`);
  otherwise it is computed once.
  """
  if params is None:
    raise ValueError("saliency_proximal needs `params` (the current parameters) in update")
  p_leaves = treedef.flatten_up_to(params)
  shapes = [jax.eval_shape(leaf.step).shape for leaf in leaves]
  sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
  groups = _groups(mask_leaves(mask, params), sizes, scope)
  old = [treedef.flatten_up_to(x) for x in (state.threshold, state.step, state.density)]
  store = store_saliency or quantile == "exact"
  entries = {i: _entries(leaves[i], p_leaves[i], shapes[i], ties, store) for g in groups for i in g}

  new_thr = [jnp.zeros([], jnp.float32)] * len(leaves)
  new_step, new_dens = list(old[1]), list(old[2])
  pruned = [jnp.zeros([], jnp.float32)] * len(leaves)
  updates = [leaf.step().astype(leaf.dtype) for leaf in leaves]
  passes, n_pruned = jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32)
  if groups:
    n_group = jnp.asarray([sum(sizes[i] for i in g) for g in groups], jnp.float32)
    p = jnp.asarray(sparsity, jnp.float32)
    allowed = jnp.floor((_FAST_TOL if quantile == "fast" else 0.0) * n_group).astype(jnp.int32)
    firsts = [g[0] for g in groups]
    sel = quantile_lib.select(
      [[entries[i] for i in g] for g in groups],
      jnp.floor(p * (n_group - 1.0)).astype(jnp.int32),
      allowed,
      warm=quantile_lib.to_key(quantile_lib.to_domain(jnp.stack([old[0][i] for i in firsts]))),
      step=jnp.stack([old[1][i] for i in firsts]),
      density=jnp.stack([old[2][i] for i in firsts]),
    )
    passes = sel.passes
    on = p > 0  # sparsity 0 prunes nothing
    threshold = quantile_lib.from_key(sel.key)
    for gi, g in enumerate(groups):
      offset = 0
      for j, i in enumerate(g):
        e, u = entries[i], updates[i]
        positions = quantile_lib.positions(shapes[i], offset) if ties == "magnitude" else None
        tie_values = e.tie_values() if ties == "magnitude" else None
        cut = quantile_lib.selected(sel, gi, e.values(), tie_values, positions) & on
        updates[i] = jnp.where(cut, -p_leaves[i].astype(u.dtype), u)
        count = jnp.where(on, sel.leaf_counts[gi][j], 0).astype(jnp.float32)
        pruned[i] = count / sizes[i]
        n_pruned = n_pruned + count
        new_thr[i], new_step[i], new_dens[i] = threshold[gi], sel.step[gi], sel.density[gi]
        offset += sizes[i]
  n_masked = sum(sizes[i] for g in groups for i in g)
  new_state = SaliencyProximalState(
    count=optax.safe_increment(state.count),
    threshold=treedef.unflatten(new_thr),
    step=treedef.unflatten(new_step),
    density=treedef.unflatten(new_dens),
    pruned=treedef.unflatten(pruned),
    pruned_total=n_pruned / max(n_masked, 1),
    passes=passes,
  )
  return treedef.unflatten(updates), new_state


def check_args(sparsity, scope, quantile, ties) -> None:
  """Raises ``ValueError`` for a bad sparsity, scope, quantile mode or tie rule."""
  _checks.check_range("sparsity", sparsity, 0.0, 1.0, high_open=True)
  _checks.check_choice("scope", scope, ("leaf", "global"))
  _checks.check_choice("quantile", quantile, ("fast", "exact"))
  _checks.check_choice("ties", ties, ("magnitude", "all"))


def saliency_proximal(
  sparsity: jax.typing.ArrayLike = 0.1,
  scope: str = "leaf",
  quantile: str = "fast",
  mask: MaskOrFn = None,
  *,
  ties: str = "magnitude",
) -> optax.GradientTransformationExtraArgs:
  r"""The saliency-weighted L0 proximal step, placed after the learning rate.

  It sees the step :math:`u = \theta_{t+1} - \theta_t` about to be applied and
  the current parameters :math:`\theta_t`. With the candidate
  :math:`c = \theta_t + u` and the saliency

  .. math::
    S = B \odot \tfrac{u^2}{2} \odot \tfrac{c^2}{2},

  it prunes (sets to zero) the :math:`k = \lfloor p\,(n-1) \rfloor + 1` entries
  of each leaf (or of all masked entries with ``scope="global"``; none when
  :math:`p = 0`) that come first in the order (:math:`S` ascending, then
  :math:`|c|` ascending, then flat index), and keeps :math:`c` elsewhere. The
  returned update is :math:`u_i` where kept and :math:`-\theta_{t,i}` where
  pruned. ``B = 1`` here; inside :func:`optax_ext.sp` it is the damping of the
  same step. Without ties in :math:`S` this is the paper's rule "prune where
  :math:`S \le Q_p(S)`" with the lower :math:`p`-quantile :math:`Q_p`.

  Ties are common: :math:`S = 0` wherever the step is zero (a unit that a
  batch leaves inactive has zero gradient on every incoming weight) or the
  candidate is zero. The literal rule prunes every entry tied at the quantile,
  so far more than :math:`p` of a leaf can end at zero; ``ties="all"`` keeps
  that literal rule, the default ``ties="magnitude"`` breaks ties by the size
  of the candidate, smallest first.

  The entries are found by counting, never sorting (:mod:`optax_ext.quantile`).
  ``quantile="exact"`` prunes exactly the :math:`k` entries above;
  ``quantile="fast"`` (the default) starts from the previous step's threshold
  and stops once it prunes between :math:`k` and :math:`k + \lfloor 0.0045\,n
  \rfloor` entries, always a prefix of the same order. The state records the
  fraction pruned per leaf and the counting passes each step took.

  Args:
    sparsity: p, the fraction of each leaf (or of all masked entries) pruned.
    scope: ``"leaf"`` or ``"global"``: where the quantile is taken.
    quantile: ``"fast"`` or ``"exact"``.
    mask: Which leaves are pruned: a pytree of bools like the parameters, or a
      function of the parameters returning one. Default: leaves with
      ``ndim >= 2`` (kernels), never biases or normalisation scales.
    ties: ``"magnitude"`` (prune exactly k entries, ties broken by ``|c|`` then
      position) or ``"all"`` (prune every entry at or below the quantile).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`; ``update`` needs ``params``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_ext
    >>> tx = optax.chain(optax.sgd(0.1), optax_ext.saliency_proximal(sparsity=0.25))
    >>> params = {'w': jnp.array([[1.0, 0.1], [2.0, -1.0]]), 'b': jnp.ones(2)}
    >>> grads = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
    >>> updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    >>> print(optax.apply_updates(params, updates)['w'])  # the least salient entry -> 0
    [[ 0.9  0. ]
     [ 1.9 -1.1]]

  References:
    Yong, Kwan, Ng, Sim, `Spectral Proximal Method and Saliency Matrix for
    Robust Deep Learning Optimization <https://doi.org/10.24138/jcomss-2023-0124>`_,
    JCOMSS 20(1), 2024 (Eq. 24-28).

  .. note::
    The published ``optimizer/sp.py`` rebinds a local name in its
    sparsification loop, so it never prunes; this prunes as the paper says.
  """
  check_args(sparsity, scope, quantile, ties)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    leaves, treedef = jax.tree.flatten(updates)
    items = [
      Leaf(lambda u=u: u, lambda u=u: jnp.square(u.astype(jnp.float32)) * 0.5, u.dtype)
      for u in leaves
    ]
    return prune(
      items,
      treedef,
      state,
      params,
      sparsity=sparsity,
      scope=scope,
      quantile=quantile,
      ties=ties,
      mask=mask,
      store_saliency=True,
    )

  return optax.GradientTransformationExtraArgs(init, update_fn)


def diagnostics(state: SaliencyProximalState) -> dict[str, jax.Array]:
  """The counting passes, the pruned fractions and the thresholds per leaf."""
  out = {
    "quantile_passes": state.passes.astype(jnp.float32),
    "pruned_total": state.pruned_total,
  }
  paths = jax.tree_util.tree_flatten_with_path(state.pruned)[0]
  for (path, frac), t in zip(paths, jax.tree.leaves(state.threshold)):
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[f"pruned/{name}"] = frac
    out[f"threshold/{name}"] = t
  return out


_diagnostics.register(SaliencyProximalState, "saliency_proximal", diagnostics)
