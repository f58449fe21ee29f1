"""The pieces of a train step: how a model API runs, and what each optimizer needs.

A train step is ``forward + backward → tx.update → apply``. Two things vary, each
behind one small interface, so the step itself has no branches:

- :class:`ModelApi`, how a model is run and updated: :class:`LinenApi` (``apply``
  with a ``params`` tree, ``tx.update`` and ``optax.apply_updates``) and
  :class:`NnxApi` (``nnx.merge`` of the same pure-dict state, ``nnx.Optimizer``).
  Both keep the state as pure pytrees of arrays, so a :class:`train.loop.TrainState`
  of either checkpoints and resumes alike.
- :class:`Need`, what the optimizer's update takes besides the parameters:
  :class:`Gradient` (a plain gradient), :class:`InputPower` (INSGD's input power,
  captured in the same forward pass) and :class:`GalArgs` (GAL's outputs, loss and
  output VJP; the backward pass runs inside GAL's update, once, on its chosen
  cotangent). Each returns a :class:`Pass`: the loss, the outputs, the model's
  updated non-parameter state, the gradient (or ``None``) and the keyword
  arguments for ``tx.update``.

A new optimizer need is one new :class:`Need`; a new model API one new
:class:`ModelApi`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

__all__ = [
  "GalArgs",
  "Gradient",
  "InputPower",
  "LinenApi",
  "ModelApi",
  "Need",
  "NnxApi",
  "Pass",
  "WithValue",
  "make_api",
]


class Pass(NamedTuple):
  """What one forward (and backward) pass hands to the update."""

  loss: jax.Array
  outputs: jax.Array
  model_state: Any
  grads: Optional[Any]
  extra: dict


class ModelApi(Protocol):
  """How a model is initialised, run and updated; every tree is a pytree of arrays."""

  def init(self, rngs: dict, x0: Any) -> tuple[Any, Any]:
    """``(params, model_state)`` from the keys ``rngs`` (``params``, ``dropout``);
    model_state holds e.g. BatchNorm statistics ({} if none)."""

  def apply(self, params, model_state, x, key) -> tuple[jax.Array, Any]:
    """A training forward pass: ``(outputs, new_model_state)``."""

  def capture(self, params, model_state, x, key, norm_order: int):
    """As :meth:`apply`, also recording input power: ``((outputs, new_state), power)``."""

  def predict(self, params, model_state, x) -> jax.Array:
    """An evaluation forward pass: the outputs."""

  def init_opt(self, tx: optax.GradientTransformation, params) -> Any:
    """The optimizer state for ``params``."""

  def update(self, tx, grads, opt_state, params, extra: dict):
    """``(new_params, new_opt_state, optax_state)``; ``optax_state`` is the transform's
    own state (NamedTuples intact) for :func:`optax_ext.diagnostics`."""

  def as_update_params(self, tree) -> Any:
    """A tree shaped like ``params``, in the layout the transform sees its parameters in."""


class LinenApi:
  """A linen module: ``model.apply({'params': p, 'batch_stats': s}, x, train=...)``."""

  def __init__(self, model: nn.Module):
    self.model = model

  def init(self, rngs, x0):
    variables = self.model.init(rngs, x0, train=False)
    return variables["params"], variables.get("batch_stats", {})

  def _call(self, call, params, model_state, x, key, **kw):
    """``call(variables, x, train=True, ...)``, with the batch statistics mutable if any."""
    variables = {"params": params}
    kwargs = dict(train=True, rngs={"dropout": key}, **kw)
    if not model_state:
      return call(variables, x, **kwargs)
    variables["batch_stats"] = model_state
    return call(variables, x, mutable=["batch_stats"], **kwargs)

  @staticmethod
  def _outputs(out, model_state):
    """``(outputs, new_model_state)`` from what ``apply`` returned."""
    return (out[0], out[1]["batch_stats"]) if model_state else (out, model_state)

  def apply(self, params, model_state, x, key):
    return self._outputs(self._call(self.model.apply, params, model_state, x, key), model_state)

  def capture(self, params, model_state, x, key, norm_order):
    import optax_ext

    def call(variables, x, **kw):
      return optax_ext.capture_input_power(
        self.model.apply, variables, x, norm_order=norm_order, **kw
      )

    out, power = self._call(call, params, model_state, x, key)
    return self._outputs(out, model_state), power

  def predict(self, params, model_state, x):
    variables = {"params": params}
    if model_state:
      variables["batch_stats"] = model_state
    return self.model.apply(variables, x, train=False)

  def init_opt(self, tx, params):
    return tx.init(params)

  def update(self, tx, grads, opt_state, params, extra):
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state, opt_state

  def as_update_params(self, tree):
    return tree


class NnxApi:
  """A Flax NNX module, updated through ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.

  The model arrives initialised (its own ``nnx.Rngs`` seed); :meth:`init` reads its
  parameters. Inside a step the model and the optimizer are rebuilt with
  ``nnx.merge`` from the pure-dict state (free once traced) and split again after
  ``optimizer.update(model, grads, **extra)``.
  """

  def __init__(self, model):
    from flax import nnx

    self.nnx = nnx
    self.graphdef, self.params_tmpl, self.rest_tmpl = nnx.split(model, nnx.Param, ...)
    self._opt = None  # (graphdef, state template, tx) of the nnx.Optimizer

  def _fill(self, template, pure):
    state = jax.tree.map(lambda a: a, template)  # fresh Variables, template untouched
    self.nnx.replace_by_pure_dict(state, pure)
    return state

  def _model(self, params, model_state):
    rest = self._fill(self.rest_tmpl, model_state)
    return self.nnx.merge(self.graphdef, self._fill(self.params_tmpl, params), rest)

  def _rest_of(self, model):
    return self.nnx.state(model, self.nnx.Not(self.nnx.Param)).to_pure_dict()

  def init(self, rngs, x0):
    del rngs, x0
    copy = lambda t: jax.tree.map(jnp.copy, t.to_pure_dict())  # a step donates its state
    return copy(self.params_tmpl), copy(self.rest_tmpl)

  def apply(self, params, model_state, x, key):
    del key  # no dropout stream in the NNX models
    model = self._model(params, model_state)
    return model(x, train=True), self._rest_of(model)

  def capture(self, params, model_state, x, key, norm_order):
    import optax_ext

    del key
    model = self._model(params, model_state)
    z, power = optax_ext.capture_input_power(model, x, train=True, norm_order=norm_order)
    return (z, self._rest_of(model)), power

  def predict(self, params, model_state, x):
    return self._model(params, model_state)(x, train=False)

  def as_update_params(self, pure) -> Any:
    """A pure-dict parameter tree as ``nnx.Optimizer`` hands parameters to the transform:
    ``nnx.as_pure(nnx.state(model, nnx.Param))``."""
    return self.nnx.as_pure(self._fill(self.params_tmpl, pure))

  def _optimizer(self, tx, params=None):
    """An ``nnx.Optimizer`` of ``tx`` on a model holding ``params`` (default: the initial
    ones), and its split; the split of the first is kept as the template of the state."""
    nnx = self.nnx
    if params is None:
      params = self.params_tmpl.to_pure_dict()
    model = self._model(params, self.rest_tmpl.to_pure_dict())
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    if self._opt is None or self._opt[2] is not tx:
      graphdef, state = nnx.split(optimizer)
      self._opt = (graphdef, state, tx)
    return optimizer

  def init_opt(self, tx, params):
    return self.nnx.state(self._optimizer(tx, params)).to_pure_dict()

  def update(self, tx, grads, opt_state, params, extra):
    nnx = self.nnx
    if self._opt is None or self._opt[2] is not tx:
      self._optimizer(tx)  # the state's template (concrete, outside the trace's values)
    model = self._model(params, self.rest_tmpl.to_pure_dict())
    optimizer = nnx.merge(self._opt[0], self._fill(self._opt[1], opt_state))
    grads = None if grads is None else self._fill(self.params_tmpl, grads)
    optimizer.update(model, grads, **extra)
    new_params = nnx.state(model, nnx.Param).to_pure_dict()
    return new_params, nnx.state(optimizer).to_pure_dict(), nnx.as_pure(optimizer.opt_state)


def make_api(model: Any) -> ModelApi:
  """The API that runs ``model``: :class:`NnxApi` for an ``nnx.Module``, else linen."""
  from flax import nnx

  return NnxApi(model) if isinstance(model, nnx.Module) else LinenApi(model)


# --------------------------------------------------------------------------- needs

LossOf = Callable[[jax.Array], jax.Array]


class Need(Protocol):
  """What one kind of update needs from the forward pass (docs/design.md, Conventions — Extra
  arguments). Each optimizer's description (:class:`train.methods.Method`) names its own."""

  def __call__(self, api: ModelApi, params, model_state, x, key, loss_of: LossOf) -> Pass:
    """One forward (and backward) pass with what the update needs."""


@dataclasses.dataclass(frozen=True)
class Gradient:
  """A plain gradient: one ``jax.value_and_grad`` of the training loss."""

  def __call__(self, api, params, model_state, x, key, loss_of):
    def loss_fn(p):
      z, new_state = api.apply(p, model_state, x, key)
      return loss_of(z), (z, new_state)

    (loss, (z, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return Pass(loss, z, new_state, grads, {})


@dataclasses.dataclass(frozen=True)
class InputPower:
  """A gradient and INSGD's input power of norm order ``norm_order`` (1 or 2), captured in
  the same forward pass."""

  norm_order: int = 2

  def __call__(self, api, params, model_state, x, key, loss_of):
    def loss_fn(p):
      (z, new_state), power = api.capture(p, model_state, x, key, self.norm_order)
      return loss_of(z), (z, new_state, power)

    (loss, (z, new_state, power)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return Pass(loss, z, new_state, grads, {"input_power": power})


@dataclasses.dataclass(frozen=True)
class GalArgs:
  """GAL's ``outputs``, ``loss_fn`` and ``outputs_vjp`` from one forward pass; no gradient.

  The VJP's parameter cotangent is handed over in the layout the transform sees the
  parameters in (:meth:`ModelApi.as_update_params`).
  """

  def __call__(self, api, params, model_state, x, key, loss_of):
    import optax_ext

    extra, new_state = optax_ext.gal_extra_args(
      lambda p: api.apply(p, model_state, x, key), params, loss_of, has_aux=True
    )
    vjp = extra["outputs_vjp"]
    extra["outputs_vjp"] = lambda ct: (api.as_update_params(vjp(ct)[0]),)
    return Pass(loss_of(extra["outputs"]), extra["outputs"], new_state, None, extra)


@dataclasses.dataclass(frozen=True)
class WithValue:
  """Another need, plus the loss as ``value`` (the reduce-on-plateau schedule reads it)."""

  need: Need

  def __call__(self, api, params, model_state, x, key, loss_of):
    p = self.need(api, params, model_state, x, key, loss_of)
    return p._replace(extra={**p.extra, "value": p.loss})
