"""GAL's arguments: the checks of its hyperparameters and extra arguments, and
the one-forward-pass builder of those extra arguments (docs/design.md, GAL — Interface)."""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
from flax import nnx

from optax_ext import _checks

__all__ = ["check_extra_args", "check_hyperparameters", "gal_extra_args"]


def check_hyperparameters(output_dim, hidden, alpha, beta, learning_rate):
  """Checks GAL's hyperparameters; returns ``output_dim`` and ``hidden`` as ints."""
  if isinstance(output_dim, bool) or not isinstance(output_dim, numbers.Integral):
    raise ValueError(f"output_dim must be a positive int, got {output_dim!r}")
  _checks.check_range("output_dim", output_dim, 1)
  hidden = tuple(hidden)
  if any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h <= 0 for h in hidden):
    raise ValueError(f"hidden must hold positive ints, got {hidden!r}")
  _checks.check_nonnegative("alpha", alpha)
  _checks.check_positive("beta", beta)
  if learning_rate is None:  # no default: it must be the following optimizer's
    raise ValueError(
      "gal needs learning_rate, the model's learning rate (the optimizer after it uses the "
      "same); gal_chain(optimizer, learning_rate, output_dim) gives it to both at once"
    )
  _checks.check_learning_rate(learning_rate)
  return int(output_dim), tuple(int(h) for h in hidden)


def check_extra_args(outputs: Any, loss_fn: Any, outputs_vjp: Any, output_dim: int) -> None:
  """Raises ``ValueError`` naming the first of GAL's extra arguments that is missing or wrong."""
  for name, value, what in (
    ("outputs", outputs, "the model's outputs z"),
    ("loss_fn", loss_fn, "a function z -> batch-mean loss"),
    ("outputs_vjp", outputs_vjp, "the model's VJP from outputs to parameters, as jax.vjp gives"),
  ):
    if value is None or (name != "outputs" and not callable(value)):
      raise ValueError(
        f"gal needs the keyword argument `{name}` ({what}), got {value!r}; "
        "optax_ext.gal_extra_args builds outputs, loss_fn and outputs_vjp in one call"
      )
  if not hasattr(outputs, "shape") or outputs.ndim < 1 or outputs.shape[-1] != output_dim:
    raise ValueError(
      f"`outputs` must be an array whose last axis has size output_dim={output_dim}, "
      f"got shape {getattr(outputs, 'shape', type(outputs))}"
    )


def gal_extra_args(
  model_fn: Callable[[Any], Any],
  params: Any,
  loss_fn: Callable[[jax.Array], jax.Array],
  has_aux: bool = False,
  wrt: Any = nnx.Param,
):
  """Runs the model forward once and returns GAL's extra arguments.

  Linen (or any function of a parameter tree):
  ``gal_extra_args(lambda p: model.apply({'params': p}, x), params, loss_fn)``.
  Flax NNX: ``gal_extra_args(lambda m: m(x), model, loss_fn)``; the model's
  ``wrt`` parameters are differentiated, and its other state (BatchNorm
  statistics, RNG counts) is updated in place, as by a plain call. The VJP
  then maps to the tree ``nnx.Optimizer(model, tx, wrt=wrt).update(model,
  None, **extra)`` hands to the transform.

  Args:
    model_fn: ``params -> outputs`` (or ``params -> (outputs, aux)`` with
      ``has_aux``, e.g. BatchNorm's updated ``batch_stats``); for NNX,
      ``model -> outputs``.
    params: The parameters to differentiate (for ``optax.lookahead``, the fast
      parameters), or an NNX module.
    loss_fn: ``outputs -> batch-mean loss``.
    has_aux: Whether ``model_fn`` also returns auxiliary data.
    wrt: NNX only: the filter of the parameters, as given to
      ``nnx.Optimizer`` (default ``nnx.Param``).

  Returns:
    ``dict(outputs=z, loss_fn=loss_fn, outputs_vjp=vjp)`` for
    ``tx.update(None, state, params, **extra)``, or ``(extra, aux)`` when
    ``has_aux``. The forward pass runs here, through :func:`jax.vjp`; the
    backward pass runs once, inside GAL's update.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_ext
    >>> extra = optax_ext.gal_extra_args(lambda w: jnp.ones((2, 3)) @ w, jnp.ones((3, 4)),
    ...                                  lambda z: jnp.mean(z ** 2))
    >>> sorted(extra), extra['outputs'].shape
    (['loss_fn', 'outputs', 'outputs_vjp'], (2, 4))
  """
  if isinstance(params, nnx.Module):
    model_fn, params, apply_state = _nnx_forward(model_fn, params, has_aux, wrt)
    z, vjp, (aux, state) = jax.vjp(model_fn, params, has_aux=True)
    apply_state(state)
    extra = {"outputs": z, "loss_fn": loss_fn, "outputs_vjp": vjp}
    return (extra, aux) if has_aux else extra
  if has_aux:
    z, vjp, aux = jax.vjp(model_fn, params, has_aux=True)
    return {"outputs": z, "loss_fn": loss_fn, "outputs_vjp": vjp}, aux
  z, vjp = jax.vjp(model_fn, params)
  return {"outputs": z, "loss_fn": loss_fn, "outputs_vjp": vjp}


def _nnx_forward(model_fn, model: nnx.Module, has_aux: bool, wrt: Any):
  """An NNX model as a function of its plain ``wrt`` arrays.

  Returns ``(forward, params, apply_state)``: ``forward(params)`` runs
  ``model_fn`` on a copy of the model holding ``params`` and returns
  ``(outputs, (aux, other_state))``; ``apply_state`` writes that other state
  (what the call changed besides the parameters) back into ``model``.
  """
  graphdef, params, rest = nnx.split(model, wrt, ...)
  rest = nnx.as_pure(rest)  # plain arrays: the copy's variables are made inside the trace

  def forward(p):
    copy = nnx.merge(graphdef, p, rest)
    out = model_fn(copy)
    z, aux = out if has_aux else (out, None)
    return z, (aux, nnx.as_pure(nnx.split(copy, wrt, ...)[2]))

  return forward, nnx.as_pure(params), lambda state: nnx.update(model, state)
