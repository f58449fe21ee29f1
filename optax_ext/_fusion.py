"""The one seam for constructs that only steer XLA's CPU compiler.

Everything here returns exactly what the plain expression it replaces
returns, bit for bit; it only changes how XLA's CPU backend lays the work out
in loops and memory. Each construct is taken only when

- the setting ``optax_ext.config.read("cpu_fusion")`` is on when the update is
  traced (it is by default), and
- the program is compiled for the CPU: the choice is made by
  :func:`jax.lax.platform_dependent`, so a program lowered for a GPU or TPU
  holds only the plain branch, with no barrier and no extra reduction.

Why these help on CPU (XLA as shipped with jax 0.10):

- An optimizer update is bound by memory traffic. XLA on GPU and TPU fuses
  sibling computations into one kernel with several outputs; XLA on CPU gives
  every output array its own loop, which reads its inputs again.
  :func:`one_pass` writes several arrays from one loop (a variadic reduction,
  the one CPU loop with several outputs), and :func:`fused_outputs` applies it
  to every leaf of a whole update and the state arrays shaped like it.
- Common-subexpression elimination merges an expression used by two loops and
  then writes it to memory once for both. :func:`detached` keeps a
  computation from being merged, and :func:`recomputed` lets each consumer
  compute a value inside its own loop instead of reading it back.
- A sum of a comparison as int32 is written to memory and summed in a second
  loop; as a two-output reduction (the sum and the max) it is one vectorised
  loop (:func:`count_true`).
- The conditionals inside a ``while_loop`` body run one after another, while
  independent work at the top level of the program runs on all cores
  (:func:`before_loop`).

``tests/test_fusion.py`` checks each construct's compiled program on CPU, so
that an XLA upgrade that undoes one fails a test instead of silently costing
speed, and checks that a program lowered for a GPU is the plain one.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from optax_ext import config

__all__: list[str] = []  # private to the package


def enabled() -> bool:
  """Whether the CPU constructs are taken in programs traced now."""
  return config.read("cpu_fusion")


def on_cpu(fused: Callable[..., Any], plain: Callable[..., Any], *args: Any) -> Any:
  """``fused(*args)`` in a program compiled for the CPU, ``plain(*args)`` elsewhere.

  Both must return the same values (and the same pytree of shapes and
  dtypes); with the setting off, only ``plain`` is traced.
  """
  if not enabled():
    return plain(*args)
  return lax.platform_dependent(*args, cpu=fused, default=plain)


# ----------------------------------------------------------------------------
# Several outputs from one loop.


def _reduce_together(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  """One variadic reduction that returns ``arrays`` bit for bit.

  Every array ``y`` is reduced with ``max`` over a new trailing axis of length
  2 holding ``(y, -inf)``: ``max(y, -inf) = y`` exactly for every float,
  signed zeros, infinities, subnormals and NaN included.
  """
  ndim = arrays[0].ndim
  operands = [jnp.stack([y, jnp.full_like(y, -jnp.inf)], axis=-1) for y in arrays]
  inits = [jnp.array(-jnp.inf, y.dtype) for y in arrays]

  def larger(a, b):
    return tuple(lax.max(x, y) for x, y in zip(a, b))

  return tuple(lax.reduce(operands, inits, larger, (ndim,)))


@jax.custom_jvp
def _together(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  return tuple(on_cpu(_reduce_together, lambda *a: tuple(a), *arrays))


@_together.defjvp
def _together_jvp(primals, tangents):
  return _together(*primals), tuple(tangents)  # the identity, for any platform


def one_pass(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Returns ``arrays`` unchanged, computed and written in one loop on CPU.

  Arrays of one shape and floating dtype are grouped by dtype (one reduction
  holds one float type); an array of another dtype, a shape that differs from
  the first array's, or an empty array is returned as it is. The result is the
  identity for values and for derivatives.
  """
  if not arrays or not enabled():
    return tuple(arrays)
  shape = arrays[0].shape
  groups: dict[jnp.dtype, list[int]] = {}
  for i, y in enumerate(arrays):
    if y.shape == shape and y.size and jnp.issubdtype(y.dtype, jnp.floating):
      groups.setdefault(jnp.dtype(y.dtype), []).append(i)
  out = list(arrays)
  for idx in groups.values():
    if len(idx) < 2:
      # One array gains nothing, and XLA:CPU emits a one-output reduction of
      # this shape as a slower kind of loop than a plain elementwise one.
      continue
    for i, y in zip(idx, _together(*(arrays[i] for i in idx))):
      out[i] = y
  return tuple(out)


_NESTING = threading.local()


def fused_outputs(
  tx: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
  """``tx`` with each leaf's update and the state arrays of that leaf written by one loop.

  The state arrays of a leaf are found structurally: every subtree of the new
  state with the updates' tree structure (Adam-like moments, a previous
  gradient, ...) holds one array per leaf. Only the outermost wrapper acts:
  a wrapped transformation inside a wrapped chain leaves the grouping to the
  chain, so that a stage's intermediate result (a direction the next stage
  scales) is not written to memory.
  """

  def update_fn(updates, state, params=None, **extra_args):
    if not enabled() or getattr(_NESTING, "depth", 0):
      return tx.update(updates, state, params, **extra_args)
    _NESTING.depth = 1
    try:
      new_updates, new_state = tx.update(updates, state, params, **extra_args)
    finally:
      _NESTING.depth = 0
    return _group_by_leaf(new_updates, new_state)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def _group_by_leaf(updates: Any, state: Any) -> tuple[Any, Any]:
  treedef = jax.tree.structure(updates)
  if treedef.num_leaves == 0:
    return updates, state
  like_updates = lambda node: jax.tree.structure(node) == treedef  # noqa: E731
  nodes, state_def = jax.tree.flatten(state, is_leaf=like_updates)
  matched = [k for k, node in enumerate(nodes) if like_updates(node)]
  columns = [treedef.flatten_up_to(updates)] + [treedef.flatten_up_to(nodes[k]) for k in matched]
  rows = [one_pass(*leaf_arrays) for leaf_arrays in zip(*columns)]
  new_updates = treedef.unflatten([row[0] for row in rows])
  for j, k in enumerate(matched, start=1):
    nodes[k] = treedef.unflatten([row[j] for row in rows])
  return new_updates, state_def.unflatten(nodes)


# ----------------------------------------------------------------------------
# Keeping intermediates out of memory.


def detached(fn: Callable[[], Any]) -> Callable[[], Any]:
  """``fn``, reading what it captures through an optimization barrier on CPU.

  It computes the same values, but XLA can no longer merge the computation
  with the same expression elsewhere in the program. Merged, the shared value
  has two consumers in two loops and is written to memory for both;
  detached, each loop computes it from the inputs on its own.
  """
  if not enabled():
    return fn
  converted, consts = jax.closure_convert(fn)
  if not consts or _any_bfloat16(consts):  # see recomputed
    return fn
  barrier = lambda *c: converted(*lax.optimization_barrier(tuple(c)))  # noqa: E731
  return lambda: on_cpu(barrier, converted, *consts)


def _any_bfloat16(arrays: Any) -> bool:
  return any(jnp.result_type(x) == jnp.bfloat16 for x in jax.tree.leaves(arrays))


def recomputed(fn: Callable[[], jax.Array], inputs: Any = ()) -> Callable[[], jax.Array]:
  """A function giving ``fn()``: recomputed where it is called on CPU, computed once elsewhere.

  On CPU a value that several loops read (the saliency in every counting
  pass) costs less computed inside each loop from its inputs than written
  once and read back. Elsewhere, and with the setting off, ``fn`` runs once
  and every call returns that array. So does it when any array in ``inputs``
  (what ``fn`` reads) is bfloat16: XLA's CPU backend then gives values that
  differ in the last bit between a loop that recomputes them and one that
  computes them once, and the seam must not change a value.
  """
  value = fn()
  if not enabled() or _any_bfloat16(inputs):
    return lambda: value
  return lambda: on_cpu(fn, lambda: value)


def count_true(mask: jax.Array) -> jax.Array:
  """``jnp.sum(mask, dtype=int32)``, as one vectorised loop on CPU.

  On CPU the sum is taken by a two-output reduction (the sum and the max of
  the same 0/1 values): the backend compiles it into one loop fused with
  whatever computes ``mask``, where a one-output integer sum writes the
  comparison to memory first. The max only guards the result, which it cannot
  change: with the max unused, XLA drops it and falls back to the one-output
  form.
  """
  v = mask.astype(jnp.int32)

  def two_outputs(v):
    z = jnp.zeros([], jnp.int32)
    total, largest = lax.reduce(
      (v, v), (z, z), lambda p, q: (p[0] + q[0], jnp.maximum(p[1], q[1])), tuple(range(v.ndim))
    )
    return jnp.where(largest > 0, total, 0)  # no element set: both are 0

  return on_cpu(two_outputs, lambda v: jnp.sum(v, dtype=jnp.int32), v)


def before_loop(first_pass: Callable[[Any], Any], carry: Any) -> Any:
  """``first_pass(carry)`` at the top level on CPU; ``carry`` unchanged elsewhere.

  For a loop whose first iteration does independent work per group: on CPU
  that work then runs on all cores (conditionals inside a loop body run one
  after another), and the loop starts from the result. ``first_pass`` must be
  an iteration of the loop that leaves the loop's result unchanged, so both
  programs compute the same values.
  """
  return on_cpu(first_pass, lambda c: c, carry)


# ----------------------------------------------------------------------------
# Expressions written so that the CPU backend fuses them.


def negated_difference(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a − b``, computed as ``b − a`` on CPU, for consumers that ignore its sign.

  Squares, absolute values and products of two such differences are the same
  for either sign (IEEE subtraction is exactly antisymmetric). Written the
  other way round, the difference is not merged with an ``a − b`` computed
  for another loop, which XLA would then write to memory once for both
  instead of fusing it into each.
  """
  return on_cpu(lambda a, b: b - a, lambda a, b: a - b, a, b)


def select_by_scalar(pred: jax.Array, on_true: jax.Array, on_false: jax.Array) -> jax.Array:
  """``jnp.where(pred, on_true, on_false)`` for a scalar ``pred`` and finite ``on_true``.

  On CPU it is formed as ``base + w * on_true`` with scalars ``w`` (1 or 0)
  and ``base`` (0 or ``on_false``): a loop with no select per element fuses
  into the vectorised reductions that consume it. The values are the same for
  every finite ``on_true`` (``0 · x`` is ``0`` and ``0 + x`` is ``x``).
  """

  def blended(pred, on_true, on_false):
    w = pred.astype(on_true.dtype)
    base = jnp.where(pred, jnp.zeros_like(on_false), on_false).astype(on_true.dtype)
    return base + w * on_true

  def plain(pred, on_true, on_false):
    return jnp.where(pred, on_true, on_false.astype(on_true.dtype))

  return on_cpu(blended, plain, pred, on_true, on_false)
