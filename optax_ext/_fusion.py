"""Writing several arrays of one shape in a single pass over memory.

An optimizer update that keeps several per-parameter state arrays (moments, the
previous gradient, ...) is bound by memory traffic: the least it can move is one
read of every input and one write of every output. XLA on GPU and TPU gets close
to that by fusing sibling computations into one kernel with several outputs. XLA
on CPU (as of jax 0.10) does not fuse outputs by default: every output array gets
its own loop, which reads its inputs again, and an output that another output
needs is written to memory and read back.

A variadic ``lax.reduce`` is the one CPU loop that writes several arrays. Here
every array ``y`` is reduced with ``max`` over a new trailing axis of length 2
holding ``(y, -inf)``: ``max(y, -inf) = y`` exactly for every float, signed
zeros, infinities, subnormals and NaN included, so the arrays come out bit for
bit unchanged, and every elementwise producer of them is fused into that one
loop. On an AngularGrad update of a ResNet-50-sized tree this cuts the arrays
moved from 16 to 10 (``python -m bench.angulargrad_speed``). The loop itself
runs on one thread; independent leaves run concurrently.

On other platforms :func:`one_pass` returns its arguments untouched: their
compilers fuse multiple outputs on their own, and a reduction there would only
get in the way.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def _reduce_together(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  """The CPU form: one variadic reduction that returns ``arrays`` bit for bit."""
  ndim = arrays[0].ndim
  operands = [jnp.stack([y, jnp.full_like(y, -jnp.inf)], axis=-1) for y in arrays]
  inits = [jnp.array(-jnp.inf, y.dtype) for y in arrays]

  def larger(a, b):
    return tuple(jax.lax.max(x, y) for x, y in zip(a, b))

  return tuple(jax.lax.reduce(operands, inits, larger, (ndim,)))


@jax.custom_jvp
def _together(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  return tuple(
    jax.lax.platform_dependent(*arrays, cpu=_reduce_together, default=lambda *a: tuple(a))
  )


@_together.defjvp
def _together_jvp(primals, tangents):
  return _together(*primals), tuple(tangents)  # the identity, for any platform


def one_pass(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Returns ``arrays`` unchanged, computed and written in one loop where that helps.

  Arrays of one shape and floating dtype are grouped by dtype (one reduction
  holds one float type); an array of another dtype, a shape that differs from
  the first array's, or an empty array is returned as it is. The result is the
  identity for values and for derivatives.

  Args:
    *arrays: Arrays to materialize together, typically the per-leaf outputs of
      an optimizer update.

  Returns:
    A tuple of the same arrays, in the same order.
  """
  if not arrays:
    return ()
  shape = arrays[0].shape
  groups: dict[jnp.dtype, list[int]] = {}
  for i, y in enumerate(arrays):
    if y.shape == shape and y.size and jnp.issubdtype(y.dtype, jnp.floating):
      groups.setdefault(jnp.dtype(y.dtype), []).append(i)
  out = list(arrays)
  for idx in groups.values():
    if len(idx) < 2:
      # One array gains nothing, and XLA:CPU emits a one-output reduction of
      # this shape as a slower kind of loop (5x a plain loop measured).
      continue
    for i, y in zip(idx, _together(*(arrays[i] for i in idx))):
      out[i] = y
  return tuple(out)


def detached(fn: Callable[[], Any]) -> Callable[[], Any]:
  """``fn`` reading what it captures through an optimization barrier.

  It computes the same values, but XLA can no longer merge the computation
  with the same expression elsewhere in the program. Merged, the shared
  value has two consumers in two loops and is written to memory for both;
  detached, each loop computes it from the inputs on its own.
  """
  converted, consts = jax.closure_convert(fn)
  if not consts:
    return fn
  return lambda: converted(*jax.lax.optimization_barrier(tuple(consts)))
