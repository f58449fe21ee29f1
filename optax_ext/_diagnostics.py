"""What each method did on its last step, read from an optimizer state.

:func:`diagnostics` walks any optimizer state — through ``optax.chain``,
``optax.inject_hyperparams``, ``optax.MultiSteps``, ``optax.masked``,
``optax.apply_if_finite`` and any other wrapper whose state is a tuple,
NamedTuple, list or dict — and returns a flat ``{name: scalar}`` dict of the
signals that show whether each method is doing what its paper says. It only
reads scalars the update already stored (or reduces arrays the state holds
anyway), so it is cheap and can run inside a jitted train step.

Each method module registers a function for its state class with
:func:`register`; the keys are ``<prefix>/<signal>``, where the prefix is the
method's name, numbered when one state holds several instances.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

_REGISTRY: dict[type, tuple[str, Callable[[Any], dict[str, jax.Array]]]] = {}


def register(state_cls: type, prefix: str, fn: Callable[[Any], dict[str, jax.Array]]) -> None:
  """Declares how to read diagnostics out of a state class.

  Args:
    state_cls: The NamedTuple state class of a transformation.
    prefix: The method's name, used as the key prefix.
    fn: Maps one state to a dict of scalar arrays.
  """
  _REGISTRY[state_cls] = (prefix, fn)


def _walk(node: Any, found: list) -> None:
  entry = _REGISTRY.get(type(node))
  if entry is not None:
    found.append((entry, node))
    return
  if isinstance(node, (tuple, list)):
    for child in node:
      _walk(child, found)
  elif isinstance(node, dict):
    for child in node.values():
      _walk(child, found)


def diagnostics(state: Any) -> dict[str, jax.Array]:
  """Returns the diagnostics of every optax_ext method found in ``state``.

  Args:
    state: An optimizer state, as returned by ``tx.init`` or ``tx.update``,
      or ``nnx.Optimizer``'s ``opt_state``.

  Returns:
    A flat dict of scalar arrays; empty if ``state`` holds no optax_ext method.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_ext
    >>> tx = optax.chain(optax.clip(1.0), optax_ext.angulargrad(1e-3))
    >>> params = {'w': jnp.ones(3)}
    >>> state = tx.init(params)
    >>> _, state = tx.update({'w': jnp.ones(3)}, state, params)
    >>> sorted(optax_ext.diagnostics(state))
    ['angulargrad/phi_at_floor', 'angulargrad/phi_max', 'angulargrad/phi_mean', 'angulargrad/phi_min']
  """
  found: list = []
  _walk(nnx.as_pure(state), found)  # NNX wraps each array of the state in a Variable
  counts: dict[str, int] = {}
  for (prefix, _), _node in found:
    counts[prefix] = counts.get(prefix, 0) + 1
  seen: dict[str, int] = {}
  out: dict[str, jax.Array] = {}
  for (prefix, fn), node in found:
    i = seen.get(prefix, 0)
    seen[prefix] = i + 1
    name = prefix if counts[prefix] == 1 else f"{prefix}{i}"
    for key, value in fn(node).items():
      out[f"{name}/{key}"] = value
  return out
