"""The counting search behind :func:`optax_ext.quantile.select`.

One NamedTuple holds the search; each function below does one step of it:
propose a key per group, count (or snap the bracket to the elements inside
it), move the bracket, and start the next stage of the order when a bracket
closes on a tie class that holds too many elements.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from optax_ext import _fusion
from optax_ext._quantile_order import (
  KEY_MAX,
  Entries,
  Selection,
  _entries,
  _key_of,
  _size,
  count_at_most,
  positions,
)

__all__: list[str] = []  # select is re-exported by optax_ext.quantile

_MAX_PASSES = 96  # enough for three stages of bisection over 31-bit keys
_DEFAULT_STEP = 2**20  # first outward step from a warm start: 1/8 of a binade
_MIN_STEP = 2**12
_INTERPOLATE_SPAN = 2**25  # brackets wider than this (a few binades) are bisected
_LARGEST_GROUP = 2**31 - 1  # counts are int32


class _Bracket(NamedTuple):
  lo: jax.Array  # (G,) int32: fewer than `need` elements at or below it
  hi: jax.Array  # (G,) int32: at least `need` elements at or below it
  c_lo: jax.Array  # (G,) int32 counts at lo and hi
  c_hi: jax.Array
  leaf_lo: tuple  # per group, (arrays,) int32 counts at lo and hi
  leaf_hi: tuple


class _Steering(NamedTuple):
  """How the next candidate key is chosen."""

  streak: jax.Array  # (G,) int32: passes in a row that moved the same end
  side: jax.Array  # (G,) int32: the end the last pass moved (1 lo, 2 hi, 0 none)
  seen_lo: jax.Array  # (G,) bool: whether each end has been counted
  seen_hi: jax.Array
  use_warm: jax.Array  # (G,) bool: the next candidate is the warm key
  warm: jax.Array  # (G,) int32
  step: jax.Array  # (G,) int32: the outward step while one end is unknown
  density: jax.Array  # (G,) float32: the previous call's elements per key
  newton_done: jax.Array  # (G,) bool
  new_density: jax.Array  # (G,) float32: this call's elements per key


class _Ties(NamedTuple):
  """Where the search is in the order (value, tie value, position)."""

  stage: jax.Array  # (G,) int32: 0 values, 1 tie values, 2 positions
  need: jax.Array  # (G,) int32: elements still to select within the current stage
  leaf_base: tuple  # per group, (arrays,) int32 selected by the stages before
  below: jax.Array  # (G,) int32: value key below the tie class (stages 1, 2)
  tied: jax.Array  # (G,) int32: value key of the tie class
  tie_below: jax.Array  # (G,) int32: tie key below the second tie class (stage 2)
  tie_tied: jax.Array  # (G,) int32: tie key of the second tie class
  snap: jax.Array  # (G,) bool: the next pass snaps the bracket (a stage starts)


class _Search(NamedTuple):
  bracket: _Bracket
  steering: _Steering
  ties: _Ties
  passes: jax.Array  # () int32


class _Problem(NamedTuple):
  """What stays fixed during a search."""

  groups: list  # per group, a list of Entries
  offsets: list  # per group, each array's first position
  sizes: list  # per group, the number of elements
  allowed: jax.Array  # (G,) int32 extra elements allowed (-1: the exact class)
  aim_extra: jax.Array  # (G,) float32: aim this far past `need`
  last_stage: int  # 0 without tie values, 2 with


def _problem(groups: list, allowed) -> _Problem:
  sizes = [sum(_size(e.shape) for e in g) for g in groups]
  if any(n > _LARGEST_GROUP for n in sizes):
    raise ValueError(f"a group of more than {_LARGEST_GROUP} elements cannot be counted in int32")
  offsets = [list(np.cumsum([0] + [_size(e.shape) for e in g])[:-1]) for g in groups]
  with_ties = allowed is not None and all(e.tie_values is not None for g in groups for e in g)
  if allowed is None:  # the whole class at the kth value: done only when the bracket closes
    allowed = jnp.full((len(groups),), -1, jnp.int32)
  allowed = jnp.asarray(allowed, jnp.int32)
  aim_extra = jnp.maximum(0.5 * allowed.astype(jnp.float32) + 0.5, 0.0)
  return _Problem(groups, offsets, sizes, allowed, aim_extra, 2 if with_ties else 0)


def _initial(problem: _Problem, target, warm, step, density) -> _Search:
  n = len(problem.groups)
  ints = lambda v: jnp.full((n,), v, jnp.int32)  # noqa: E731
  bools = lambda v: jnp.full((n,), v, bool)  # noqa: E731
  leaf_sizes = tuple(jnp.asarray([_size(e.shape) for e in g], jnp.int32) for g in problem.groups)
  zeros = tuple(jnp.zeros_like(s) for s in leaf_sizes)
  have_warm = warm is not None
  density = jnp.zeros((n,), jnp.float32) if density is None else jnp.asarray(density, jnp.float32)
  bracket = _Bracket(
    ints(-1), ints(KEY_MAX), ints(0), jnp.asarray(problem.sizes, jnp.int32), zeros, leaf_sizes
  )
  steering = _Steering(
    streak=ints(0),
    side=ints(0),
    seen_lo=bools(not have_warm),  # outward stepping only follows a warm start
    seen_hi=bools(not have_warm),
    use_warm=bools(have_warm),
    warm=jnp.clip(jnp.asarray(warm, jnp.int32), 0, KEY_MAX - 1) if have_warm else ints(0),
    step=ints(_DEFAULT_STEP) if step is None else jnp.clip(jnp.asarray(step, jnp.int32), 1, 2**28),
    density=density,
    newton_done=bools(False),
    new_density=density,
  )
  ties = _Ties(ints(0), target, zeros, ints(-1), ints(-1), ints(-1), ints(-1), bools(False))
  return _Search(bracket, steering, ties, jnp.zeros([], jnp.int32))


def _within(s: _Search, problem: _Problem) -> jax.Array:
  return s.bracket.c_hi - s.ties.need <= problem.allowed


def _done(s: _Search, problem: _Problem) -> jax.Array:
  closed = s.bracket.hi - s.bracket.lo <= 1
  return _within(s, problem) | (closed & (s.ties.stage >= problem.last_stage))


def _propose(s: _Search, problem: _Problem) -> jax.Array:
  """The key to count next, per group."""
  b, st = s.bracket, s.steering
  span = (b.hi - b.lo).astype(jnp.float32)
  aim = s.ties.need.astype(jnp.float32) + problem.aim_extra
  frac = (aim - b.c_lo.astype(jnp.float32)) / jnp.maximum(b.c_hi - b.c_lo, 1).astype(jnp.float32)
  interp = b.lo + jnp.floor(span * jnp.clip(frac, 0.0, 1.0)).astype(jnp.int32)
  bisect = b.lo + (b.hi - b.lo) // 2
  use_interp = (span <= _INTERPOLATE_SPAN) & (st.streak < 2)
  cand = jnp.where(use_interp, interp, bisect)
  # One end unknown (after a warm start): step outward, or one Newton step on
  # the count with the density the previous call saw.
  gap = jnp.maximum(b.hi - b.lo - 1, 0)
  outward = jnp.where(
    st.seen_lo, b.lo + jnp.minimum(st.step, gap), b.hi - jnp.minimum(st.step, gap)
  )
  anchor, c_anchor = jnp.where(st.seen_lo, b.lo, b.hi), jnp.where(st.seen_lo, b.c_lo, b.c_hi)
  move = (aim - c_anchor.astype(jnp.float32)) / jnp.maximum(st.density, 1e-30)
  newton = anchor.astype(jnp.float32) + jnp.clip(move, -(2.0**31), 2.0**31)
  newton = jnp.clip(newton, -1.0, float(KEY_MAX)).astype(jnp.int32)
  use_newton = (st.density > 0) & ~st.newton_done
  cand = jnp.where(st.seen_lo ^ st.seen_hi, jnp.where(use_newton, newton, outward), cand)
  cand = jnp.where(st.use_warm, st.warm, cand)
  return jnp.clip(cand, b.lo + 1, b.hi - 1)


def _stage_keys(entries: Entries, offset: int, ties: _Ties, g: int):
  """``(eligible, key)`` of one array's elements in the group's current stage.

  Stage 0: every element, by value key; stage 1: the elements of the value
  tie class, by tie key; stage 2: those also in the tie-key class, by position.
  """
  stage = ties.stage[g]
  value_key = _key_of(entries.values())
  if entries.tie_values is None:
    return jnp.ones(entries.shape, bool), value_key
  tie_key = _key_of(entries.tie_values())
  in_class = value_key == ties.tied[g]
  eligible = (stage == 0) | (in_class & ((stage == 1) | (tie_key == ties.tie_tied[g])))
  key = jnp.where(
    stage == 0, value_key, jnp.where(stage == 1, tie_key, positions(entries.shape, offset))
  )
  return eligible, key


def _count_values(entries_list, cand):
  """Per array, the elements whose value is at or below ``from_key(cand)`` (stage 0)."""
  return jnp.stack([count_at_most(e.values, cand) for e in entries_list])


def _count_in_stage(problem: _Problem, ties: _Ties, g: int, cand):
  """Per array of group ``g``, the eligible elements with key at or below ``cand`` (stages 1, 2)."""
  per = []
  for e, off in zip(problem.groups[g], problem.offsets[g]):
    eligible, key = _stage_keys(e, off, ties, g)
    per.append(_fusion.count_true(eligible & (key <= cand)))
  return jnp.stack(per)


def _snap(problem: _Problem, s: _Search, g: int):
  """The smallest eligible key above ``lo`` and the largest at or below ``hi``, in any stage."""
  big = jnp.int32(np.iinfo(np.int32).max)
  lows, highs = [], []
  for e, off in zip(problem.groups[g], problem.offsets[g]):
    eligible, key = _stage_keys(e, off, s.ties, g)
    lows.append(jnp.min(jnp.where(eligible & (key > s.bracket.lo[g]), key, big)))
    highs.append(jnp.max(jnp.where(eligible & (key <= s.bracket.hi[g]), key, -1)))
  return jnp.min(jnp.stack(lows)), jnp.max(jnp.stack(highs))


def _count_pass(s: _Search, problem: _Problem, cand, snap, first: bool):
  """Counts every unfinished group at its candidate (or snaps it); one pass over the data."""
  fin = _done(s, problem)
  counts, leaf_counts, lows, highs = [], [], [], []
  for g, group in enumerate(problem.groups):
    zeros = jnp.zeros((len(group),), jnp.int32)
    keep = (s.bracket.lo[g], s.bracket.hi[g])
    if first:
      # Every group counted at the top level of the program (a group already
      # done is counted and ignored); see _fusion.before_loop.
      per = _count_values([e._replace(values=_fusion.detached(e.values)) for e in group], cand[g])
      lo_snap, hi_snap = keep
    else:
      branches = [
        lambda: (zeros, *keep),
        lambda g=g, group=group: (_count_values(group, cand[g]), *keep),
        lambda g=g: (zeros, *_snap(problem, s, g)),
      ]
      if problem.last_stage:
        branches.append(lambda g=g: (_count_in_stage(problem, s.ties, g, cand[g]), *keep))
      counting = jnp.where(s.ties.stage[g] == 0, 1, 3)
      index = jnp.where(fin[g], 0, jnp.where(snap[g], 2, counting))
      per, lo_snap, hi_snap = lax.switch(index, branches)
    counts.append(jnp.sum(per, dtype=jnp.int32))
    leaf_counts.append(per)
    lows.append(lo_snap)
    highs.append(hi_snap)
  return jnp.stack(counts), tuple(leaf_counts), jnp.stack(lows), jnp.stack(highs), fin


def _wants_snap(s: _Search, fin) -> jax.Array:
  """Snap when a stage starts, or when a bracket is stuck on one end (ties, gaps)."""
  st = s.steering
  stuck = (st.streak >= 2) & (s.passes % 2 == 0) & st.seen_lo & st.seen_hi
  return ~fin & (s.ties.snap | stuck)


def _move(s: _Search, cand, counts, leaf_counts, lows, highs, fin, snap) -> _Search:
  """The bracket and steering after a pass."""
  b, st = s.bracket, s.steering
  below = counts < s.ties.need
  move_lo, move_hi = ~fin & ~snap & below, ~fin & ~snap & ~below
  pick = lambda m, new, old: jnp.where(m, new, old)  # noqa: E731
  bracket = _Bracket(
    lo=jnp.where(snap, jnp.maximum(b.lo, lows - 1), pick(move_lo, cand, b.lo)),
    hi=jnp.where(snap, jnp.minimum(b.hi, highs), pick(move_hi, cand, b.hi)),
    c_lo=pick(move_lo, counts, b.c_lo),
    c_hi=pick(move_hi, counts, b.c_hi),
    leaf_lo=tuple(pick(move_lo[g], p, o) for g, (p, o) in enumerate(zip(leaf_counts, b.leaf_lo))),
    leaf_hi=tuple(pick(move_hi[g], p, o) for g, (p, o) in enumerate(zip(leaf_counts, b.leaf_hi))),
  )
  side = jnp.where(move_lo, 1, jnp.where(move_hi, 2, 0)).astype(jnp.int32)
  one_sided = ~st.use_warm & (st.seen_lo ^ st.seen_hi)
  stepping = one_sided & ((st.density <= 0) | st.newton_done)
  span = bracket.hi - bracket.lo
  seen_lo, seen_hi = st.seen_lo | move_lo, st.seen_hi | move_hi
  wide = seen_lo & seen_hi & (span >= _MIN_STEP) & ~fin & (s.ties.stage == 0)
  density = (bracket.c_hi - bracket.c_lo).astype(jnp.float32) / span.astype(jnp.float32)
  steering = st._replace(
    streak=jnp.where(snap, 0, jnp.where(side == st.side, st.streak + 1, 1)).astype(jnp.int32),
    side=side,
    seen_lo=seen_lo,
    seen_hi=seen_hi,
    use_warm=jnp.zeros_like(st.use_warm),
    step=jnp.where(stepping, jnp.minimum(st.step, 2**28) * 4, st.step).astype(jnp.int32),
    newton_done=st.newton_done | one_sided,
    new_density=jnp.where(wide, density, st.new_density),
  )
  ties = s.ties._replace(snap=s.ties.snap & ~snap)
  passes = s.passes + jnp.any(~fin).astype(jnp.int32)
  return _Search(bracket, steering, ties, passes)


def _next_stage(s: _Search, problem: _Problem) -> _Search:
  """Groups whose bracket closed on a tie class holding too many elements search inside it."""
  if problem.last_stage == 0:
    return s
  b, t, st = s.bracket, s.ties, s.steering
  go = (b.hi - b.lo <= 1) & ~_within(s, problem) & (t.stage < problem.last_stage)
  pick = lambda new, old: jnp.where(go, new, old)  # noqa: E731
  per_group = lambda new, old: tuple(
    jnp.where(go[g], n, o) for g, (n, o) in enumerate(zip(new, old))
  )  # noqa: E731
  from_values, from_ties = go & (t.stage == 0), go & (t.stage == 1)
  ties = _Ties(
    stage=t.stage + go.astype(jnp.int32),
    need=pick(t.need - b.c_lo, t.need),
    leaf_base=per_group([base + lo for base, lo in zip(t.leaf_base, b.leaf_lo)], t.leaf_base),
    below=jnp.where(from_values, b.lo, t.below),
    tied=jnp.where(from_values, b.hi, t.tied),
    tie_below=jnp.where(from_ties, b.lo, t.tie_below),
    tie_tied=jnp.where(from_ties, b.hi, t.tie_tied),
    snap=t.snap | go,
  )
  top = jnp.where(t.stage == 0, KEY_MAX, jnp.asarray(problem.sizes, jnp.int32) - 1)
  bracket = _Bracket(
    lo=pick(-1, b.lo),
    hi=pick(top, b.hi),
    c_lo=pick(0, b.c_lo),
    c_hi=pick(b.c_hi - b.c_lo, b.c_hi),
    leaf_lo=per_group([jnp.zeros_like(lo) for lo in b.leaf_lo], b.leaf_lo),
    leaf_hi=per_group([hi - lo for hi, lo in zip(b.leaf_hi, b.leaf_lo)], b.leaf_hi),
  )
  steering = st._replace(
    streak=pick(0, st.streak),
    side=pick(0, st.side),
    seen_lo=st.seen_lo | go,
    seen_hi=st.seen_hi | go,
    newton_done=st.newton_done | go,
  )
  return _Search(bracket, steering, ties, s.passes)


def _refine(s: _Search, problem: _Problem, first: bool = False) -> _Search:
  """One counting pass: propose a key per group, count, move the bracket."""
  cand = _propose(s, problem)
  fin = _done(s, problem)
  snap = jnp.zeros_like(fin) if first else _wants_snap(s, fin)
  counts, leaf_counts, lows, highs, fin = _count_pass(s, problem, cand, snap, first)
  return _next_stage(_move(s, cand, counts, leaf_counts, lows, highs, fin, snap), problem)


def _result(s: _Search) -> Selection:
  b, t = s.bracket, s.ties
  stage, none = t.stage, jnp.full_like(b.hi, -1)
  leaf = [base + hi for base, hi in zip(t.leaf_base, b.leaf_hi)]
  key = jnp.where(stage == 0, b.hi, t.tied)
  return Selection(
    below=jnp.where(stage == 0, b.hi, t.below),
    tied=jnp.where(stage == 0, none, t.tied),
    tie_below=jnp.where(stage == 1, b.hi, jnp.where(stage == 2, t.tie_below, none)),
    tie_tied=jnp.where(stage == 2, t.tie_tied, none),
    position=jnp.where(stage == 2, b.hi, none),
    key=key,
    step=jnp.clip(jnp.abs(key - s.steering.warm), _MIN_STEP, _DEFAULT_STEP * 16),
    count=jnp.stack([jnp.sum(x, dtype=jnp.int32) for x in leaf]),
    leaf_counts=leaf,
    density=s.steering.new_density,
    passes=s.passes,
  )


def select(
  groups: Sequence[Sequence[Union[jax.Array, Callable[[], jax.Array], Entries]]],
  kth: jax.Array,
  allowed: Optional[jax.Array] = None,
  *,
  warm: Optional[jax.Array] = None,
  step: Optional[jax.Array] = None,
  density: Optional[jax.Array] = None,
  max_passes: int = _MAX_PASSES,
) -> Selection:
  """Per group, the first ``kth + 1`` elements in the order (value, tie value, position).

  Args:
    groups: ``G`` groups, each a list of arrays, of functions returning one,
      or of :class:`Entries` (values and tie values). A group's elements are
      the domain images (:func:`to_domain`) of all its arrays. A function is
      called inside each counting pass, so the array it computes need not be
      written to memory.
    kth: ``(G,)`` int32, the 0-based rank of the last element sought.
    allowed: ``(G,)`` int32: a group is done once between ``kth + 1`` and
      ``kth + 1 + allowed`` elements are selected, a prefix of the order.
      ``None``: all elements tied at the ``kth`` smallest value (the lower
      quantile); tie values are then ignored.
    warm: ``(G,)`` int32 keys to start from (the previous thresholds), or None.
    step: ``(G,)`` int32 first outward steps from ``warm``.
    density: ``(G,)`` float32 elements per key near the answer (a previous
      call's), for one Newton step after the warm pass; 0 or None: unknown.
    max_passes: Upper bound on counting passes.

  Returns:
    A :class:`Selection`.
  """
  problem = _problem([[_entries(x) for x in g] for g in groups], allowed)
  s = _initial(problem, jnp.asarray(kth, jnp.int32) + 1, warm, step, density)
  if max_passes > 0:
    s = _fusion.before_loop(lambda c: _refine(c, problem, first=True), s)
  s = lax.while_loop(
    lambda c: jnp.any(~_done(c, problem)) & (c.passes < max_passes),
    lambda c: _refine(c, problem),
    s,
  )
  return _result(s)
