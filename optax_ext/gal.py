"""GAL: a learned adjustment of the gradient at the model's output.

GAL works where the loss meets the model: at the outputs ``z`` (logits or
regression outputs). A small MLP ``h(z; ϑ)`` (the regressor) proposes an
adjustment of the output gradient ``∂ℓ/∂z``; the adjusted gradient is used
only when a tentative step along it lowers the loss, and the regressor learns
to minimise the magnitude of the first-order Taylor remainder of that step.
The chosen output cotangent is back-propagated through the model once.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from optax_ext import _checks, _diagnostics


class GALState(NamedTuple):
  """State for :func:`gal`.

  The last four fields log the last step: whether the adjusted gradient was
  used (1.0) or the vanilla one (0.0), the tentative loss
  :math:`\\ell(z - \\tilde\\eta g)`, :math:`|r|`, and the cosine similarity
  between the adjustment :math:`\\tilde v` and the vanilla output gradient.
  """

  count: jax.Array  # shape=(), dtype=jnp.int32
  regressor_params: Any
  regressor_state: Any
  used_adjusted: jax.Array  # shape=(), float32
  tentative_loss: jax.Array  # shape=(), float32
  remainder: jax.Array  # shape=(), float32: |r|
  cosine: jax.Array  # shape=(), float32


class Regressor(nn.Module):
  """The GAL regressor: dense layers of widths ``hidden``, then back to ``out``.

  With ``activation=None`` the layers are stacked with nothing between them,
  as the published ``RNet`` does (the network is then linear).
  """

  hidden: Sequence[int]
  out: int
  activation: Optional[Callable[[jax.Array], jax.Array]] = None

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.Dense(width)(x)
      if self.activation is not None:
        x = self.activation(x)
    return nn.Dense(self.out)(x)


def _require(name: str, value: Any, what: str) -> None:
  if value is None:
    raise ValueError(
      f"gal needs the keyword argument `{name}` ({what}); "
      "optax_ext.gal_extra_args builds outputs, loss_fn and outputs_vjp in one call"
    )


def gal(
  output_dim: int,
  hidden: Sequence[int] = (100, 32, 16),
  alpha: jax.typing.ArrayLike = 1e-3,
  beta: jax.typing.ArrayLike = 1e-3,
  learning_rate: optax.ScalarOrSchedule = 1e-2,
  regressor_optimizer: Optional[optax.GradientTransformation] = None,
  activation: Optional[Callable[[jax.Array], jax.Array]] = None,
  *,
  reference_compat: bool = False,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient Adjustment Learning, as the first stage of an optax chain.

  With the outputs :math:`z` (per-sample rows :math:`z_n`), the loss
  :math:`\ell(z)` (batch mean), :math:`\nabla = \partial\ell/\partial z`, the
  model learning rate :math:`\eta` (read at the step count when a schedule)
  and :math:`\tilde\eta = \beta\eta`:

  .. math::
    v = h(z; \vartheta),\quad
    \tilde v_n = \alpha\,\|\nabla_n\|\,v_n / \|v_n\|,\quad g = \nabla + \tilde v

    \text{cotangent} = \begin{cases} g & \ell(z - \tilde\eta g) \le \ell(z)\\
    \nabla & \text{otherwise}\end{cases}

    r = \ell(z - \tilde\eta g) - \ell(z) + \tilde\eta \textstyle\sum_n \nabla_n \cdot g_n,
    \qquad \vartheta \leftarrow \text{regressor\_optimizer}(\partial |r| / \partial\vartheta)

  ``update(updates, state, params, *, outputs, loss_fn, outputs_vjp)``:
  ``outputs`` is :math:`z` (its last axis of size ``output_dim``),
  ``loss_fn(z)`` the batch-mean training loss, and ``outputs_vjp`` the model's
  VJP as :func:`jax.vjp` returns it (a cotangent of ``outputs`` in, a 1-tuple
  of parameter cotangents out). With ``updates=None`` (recommended) the stage
  back-propagates the chosen cotangent once and returns the parameter
  gradient for the rest of the chain. If ``updates`` holds the vanilla
  gradient instead, the stage adds :math:`\mathrm{VJP}(\tilde v)` when the
  adjusted gradient is used: a second backward pass, so slower.

  Args:
    output_dim: d, the width of the model's outputs.
    hidden: Widths of the regressor's hidden layers (the paper uses
      (100, 32, 16) for 10 classes and (128, 4) for its regression task).
    alpha: α, the adjustment's size relative to the output gradient (the
      paper's range: 1e-4 to 1e-2).
    beta: β, the tentative step :math:`\tilde\eta = \beta\eta` (0.001 to 10).
    learning_rate: η, the model's learning rate (float or schedule).
    regressor_optimizer: The regressor's optimizer; default
      ``optax.sgd(learning_rate)`` (the published code trains both in one SGD).
    activation: An activation between the regressor's layers (default none).
    reference_compat: Take the linear term as the batch mean
      :math:`\tilde\eta\,\mathrm{mean}_n(\nabla_n\cdot g_n)`, as the published
      ``adjustment.py`` does, instead of the paper's sum.
    seed: Seed of the regressor's initialisation.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax
    >>> import optax_ext
    >>> model = nn.Dense(3)
    >>> x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
    >>> params = model.init(jax.random.key(0), x)['params']
    >>> tx = optax.chain(optax_ext.gal(3, learning_rate=0.1), optax.sgd(0.1))
    >>> state = tx.init(params)
    >>> loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
    >>> extra = optax_ext.gal_extra_args(lambda p: model.apply({'params': p}, x), params, loss)
    >>> updates, state = tx.update(None, state, params, **extra)  # one backward pass
    >>> params = optax.apply_updates(params, updates)
    >>> print(float(state[0].used_adjusted) in (0.0, 1.0))
    True

  References:
    Luo, Wong, Kankanhalli, Zhao, *Learning to Minimize the Remainder in
    Supervised Learning*, IEEE Transactions on Multimedia, 2022 (Algorithm 1,
    Eq. 3-7).
  """
  _checks.check_range("output_dim", output_dim, 1)
  if not isinstance(output_dim, int):
    raise ValueError(f"output_dim must be a positive int, got {output_dim!r}")
  hidden = tuple(hidden)
  if any((not isinstance(h, int)) or h <= 0 for h in hidden):
    raise ValueError(f"hidden must hold positive ints, got {hidden!r}")
  _checks.check_positive("alpha", alpha)
  _checks.check_positive("beta", beta)
  _checks.check_learning_rate(learning_rate)
  regressor = Regressor(hidden, output_dim, activation)
  reg_opt = regressor_optimizer if regressor_optimizer is not None else optax.sgd(learning_rate)

  def init_fn(params):
    del params
    reg_params = regressor.init(jax.random.key(seed), jnp.zeros((1, output_dim)))["params"]
    zero = jnp.zeros([], jnp.promote_types(jnp.result_type(float), jnp.float32))
    return GALState(
      count=jnp.zeros([], jnp.int32),
      regressor_params=reg_params,
      regressor_state=reg_opt.init(reg_params),
      used_adjusted=zero,
      tentative_loss=zero,
      remainder=zero,
      cosine=zero,
    )

  def update_fn(
    updates, state, params=None, *, outputs=None, loss_fn=None, outputs_vjp=None, **extra_args
  ):
    del params, extra_args
    _require("outputs", outputs, "the model's outputs z")
    _require("loss_fn", loss_fn, "a function z -> batch-mean loss")
    _require("outputs_vjp", outputs_vjp, "the model's VJP from outputs to parameters")
    if outputs.ndim < 1 or outputs.shape[-1] != output_dim:
      raise ValueError(
        f"`outputs` must have a last axis of size output_dim={output_dim}, "
        f"got shape {outputs.shape}"
      )
    z = jax.lax.stop_gradient(outputs)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    ct = jnp.promote_types(outputs.dtype, jnp.float32)
    eta_t = jnp.asarray(beta * lr, ct)
    loss0, nabla = jax.value_and_grad(loss_fn)(z)
    rows = lambda a: a.reshape(-1, output_dim).astype(ct)
    nab = rows(nabla)

    def remainder(theta):
      v = regressor.apply({"params": theta}, rows(z))
      v_norm = jnp.linalg.norm(v, axis=-1, keepdims=True)
      g_norm = jnp.linalg.norm(nab, axis=-1, keepdims=True)
      v_adj = alpha * g_norm * v / jnp.where(v_norm > 0, v_norm, 1.0)
      g = nab + v_adj
      tentative = loss_fn(z - (eta_t * g).reshape(z.shape).astype(z.dtype))
      dots = jnp.sum(nab * g, axis=-1)
      linear = eta_t * (jnp.mean(dots) if reference_compat else jnp.sum(dots))
      r = tentative - loss0 + linear
      return jnp.abs(r), (g, v_adj, tentative)

    (r_abs, (g, v_adj, tentative)), reg_grads = jax.value_and_grad(remainder, has_aux=True)(
      state.regressor_params
    )
    use = tentative <= loss0
    shape_like = lambda a: a.reshape(outputs.shape).astype(outputs.dtype)
    if updates is None:
      (param_grads,) = outputs_vjp(shape_like(jnp.where(use, g, nab)))
    else:
      param_grads = jax.lax.cond(
        use,
        lambda: jax.tree.map(jnp.add, updates, outputs_vjp(shape_like(v_adj))[0]),
        lambda: updates,
      )
    reg_updates, reg_state = reg_opt.update(
      reg_grads, state.regressor_state, state.regressor_params
    )
    reg_params = optax.apply_updates(state.regressor_params, reg_updates)
    denom = jnp.linalg.norm(v_adj) * jnp.linalg.norm(nab)
    cosine = jnp.where(denom > 0, jnp.sum(v_adj * nab) / jnp.where(denom > 0, denom, 1.0), 0.0)
    new_state = GALState(
      count=optax.safe_increment(state.count),
      regressor_params=reg_params,
      regressor_state=reg_state,
      used_adjusted=use.astype(ct),
      tentative_loss=jnp.asarray(tentative, ct),
      remainder=jnp.asarray(r_abs, ct),
      cosine=cosine.astype(ct),
    )
    return param_grads, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gal_extra_args(
  model_fn: Callable[[Any], Any],
  params: Any,
  loss_fn: Callable[[jax.Array], jax.Array],
  has_aux: bool = False,
):
  """Runs the model once and returns GAL's extra arguments.

  Args:
    model_fn: ``params -> outputs`` (or ``params -> (outputs, aux)`` with
      ``has_aux``, e.g. updated BatchNorm statistics).
    params: The model's parameters.
    loss_fn: ``outputs -> batch-mean loss``.
    has_aux: Whether ``model_fn`` also returns auxiliary data.

  Returns:
    ``dict(outputs=z, loss_fn=loss_fn, outputs_vjp=vjp)`` for
    ``tx.update(None, state, params, **extra)``, and ``aux`` too (as
    ``(extra, aux)``) when ``has_aux``. The forward pass runs once here; the
    backward pass runs once, inside GAL's update.
  """
  if has_aux:
    z, vjp, aux = jax.vjp(model_fn, params, has_aux=True)
    return {"outputs": z, "loss_fn": loss_fn, "outputs_vjp": vjp}, aux
  z, vjp = jax.vjp(model_fn, params)
  return {"outputs": z, "loss_fn": loss_fn, "outputs_vjp": vjp}


def _read_diagnostics(state: GALState) -> dict[str, jax.Array]:
  return {
    "used_adjusted": state.used_adjusted,
    "tentative_loss": state.tentative_loss,
    "remainder": state.remainder,
    "cosine": state.cosine,
  }


_diagnostics.register(GALState, "gal", _read_diagnostics)
