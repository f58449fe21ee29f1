"""GAL: a learned adjustment of the gradient at the model's output.

GAL works where the loss meets the model: at the outputs ``z`` (logits or
regression outputs). A small MLP ``h(z; ϑ)`` (the regressor) proposes an
adjustment of the output gradient ``∂ℓ/∂z``; the adjusted gradient is used
only when a tentative step along it does not raise the loss, and the regressor
learns to minimise the magnitude of the first-order Taylor remainder of that
step. The chosen output cotangent is back-propagated through the model once.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from optax_ext import _diagnostics
from optax_ext._gal_arguments import check_extra_args, check_hyperparameters, gal_extra_args
from optax_ext.published import gal as _published

__all__ = ["GALState", "Regressor", "gal", "gal_chain", "gal_extra_args"]


class GALState(NamedTuple):
  """State for :func:`gal`.

  ``regressor_params`` and ``regressor_state`` are the regressor's Flax
  parameters and its optimizer's state, in the model parameters' dtype (at
  least float32). The last four fields log the last step, as scalars of that
  dtype: whether the adjusted gradient was used (1.0) or the vanilla one
  (0.0), the tentative loss :math:`\\ell(z - \\tilde\\eta g)`, :math:`|r|`, and
  the cosine similarity between the adjustment :math:`\\tilde v` and the
  vanilla output gradient over the whole batch (0 where either is zero).
  """

  count: jax.Array  # shape=(), dtype=jnp.int32
  regressor_params: Any
  regressor_state: Any
  used_adjusted: jax.Array  # shape=(), dtype of the regressor (all four)
  tentative_loss: jax.Array
  remainder: jax.Array  # |r|
  cosine: jax.Array


class Regressor(nn.Module):
  """The GAL regressor: dense layers of widths ``hidden``, then back to ``out``.

  With ``activation=None`` the layers are stacked with nothing between them,
  as the published ``RNet`` does (the network is then linear).
  """

  hidden: Sequence[int]
  out: int
  activation: Optional[Callable[[jax.Array], jax.Array]] = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.Dense(width, param_dtype=self.param_dtype)(x)
      if self.activation is not None:
        x = self.activation(x)
    return nn.Dense(self.out, param_dtype=self.param_dtype)(x)


def _state_dtype(params: Any) -> jnp.dtype:
  """The regressor's dtype: the model parameters' (promoted), at least float32."""
  return jnp.result_type(jnp.float32, *[jnp.result_type(p) for p in jax.tree.leaves(params)])


def _linear_term(dots: jax.Array) -> jax.Array:
  """The remainder's linear term summed over the samples, as in Eq. 7."""
  return jnp.sum(dots)


def _row_norm(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-row Euclidean norm with a gradient that stays finite at zero."""
  sq = jnp.sum(jnp.square(a), axis=-1, keepdims=True)
  nonzero = sq > 0
  return jnp.sqrt(jnp.where(nonzero, sq, 1.0)), nonzero


def _keep_if_finite(r_abs, reg_grads, new, old):
  """``new`` where the remainder and its regressor gradient are finite, else ``old``."""
  finite = jnp.isfinite(r_abs)
  for leaf in jax.tree.leaves(reg_grads):
    finite &= jnp.all(jnp.isfinite(leaf))
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """cos(a, b) over all entries; 0 when either is zero."""
  denom = jnp.linalg.norm(a) * jnp.linalg.norm(b)
  return jnp.where(denom > 0, jnp.sum(a * b) / jnp.where(denom > 0, denom, 1.0), 0.0)


def gal(
  output_dim: int,
  hidden: Sequence[int] = (100, 32, 16),
  alpha: jax.typing.ArrayLike = 1e-3,
  beta: jax.typing.ArrayLike = 1.0,
  learning_rate: Optional[optax.ScalarOrSchedule] = None,
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
    v_n = h(z_n; \vartheta),\quad
    \tilde v_n = \alpha\,\|\nabla_n\|\,v_n / \|v_n\|,\quad g = \nabla + \tilde v

    \text{cotangent} = \begin{cases} g & \ell(z - \tilde\eta g) \le \ell(z)\\
    \nabla & \text{otherwise}\end{cases}

    r = \ell(z - \tilde\eta g) - \ell(z) + \tilde\eta \textstyle\sum_n \nabla_n \cdot g_n,
    \qquad \vartheta \leftarrow \text{regressor\_optimizer}(\partial |r| / \partial\vartheta)

  The update is ``update(updates, state, params, *, outputs, loss_fn,
  outputs_vjp)``: ``outputs`` is :math:`z` (its last axis of size
  ``output_dim``; leading axes are samples), ``loss_fn(z)`` the batch-mean
  training loss, and ``outputs_vjp`` the model's VJP as :func:`jax.vjp`
  returns it (an ``outputs`` cotangent in, a 1-tuple of parameter cotangents
  out). :func:`gal_extra_args` builds the three in one forward pass.

  - ``updates=None`` (recommended): the stage back-propagates the chosen
    cotangent once and hands the parameter gradient to the rest of the chain,
    so a GAL step costs one forward and one backward pass, like a plain step.
    An ``updates`` tree without leaves means the same: ``nnx.Optimizer``'s
    ``update(model, None, **extra)`` hands the transform an empty ``State``.
  - ``updates`` = the vanilla parameter gradient: the stage adds
    :math:`\mathrm{VJP}(\tilde v)` when the adjusted gradient is used (zero
    otherwise). That is a second backward pass on every step, so slower; use
    it only when the gradient has to come from elsewhere.

  Args:
    output_dim: d, the width of the model's outputs.
    hidden: Widths of the regressor's hidden layers (the paper uses
      (100, 32, 16) for 10 classes and (128, 4) for its diabetes regression).
    alpha: α ≥ 0, the adjustment's size relative to the output gradient (the
      paper's useful range: 1e-4 to 1e-2; 0 switches the adjustment off).
    beta: β > 0, the tentative step :math:`\tilde\eta = \beta\eta` (the paper
      uses 0.001 to 10, depending on the optimizer).
    learning_rate: η, the model's learning rate (float or schedule): the one
      the optimizer after this stage uses. Required; :func:`gal_chain` takes it
      once for both stages.
    regressor_optimizer: The regressor's optimizer; default
      ``optax.sgd(learning_rate)`` (the published code trains the regressor in
      the model's own optimizer).
    activation: An activation between the regressor's layers (default none,
      as the published ``RNet``).
    reference_compat: Take the linear term as the batch mean
      :math:`\tilde\eta\,\mathrm{mean}_n(\nabla_n\cdot g_n)`, as the published
      ``adjustment.py`` does, instead of the paper's sum (Eq. 7); see
      :mod:`optax_ext.published.gal`.
    seed: Seed of the regressor's initialisation.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`. The regressor and the
    remainder are computed in the model parameters' dtype (at least float32).

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax
    >>> import optax_ext
    >>> model = nn.Dense(3)
    >>> x, y = jax.random.normal(jax.random.key(0), (8, 4)), jnp.arange(8) % 3
    >>> params = model.init(jax.random.key(1), x)['params']
    >>> loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
    >>> tx = optax.chain(optax_ext.gal(3, learning_rate=0.5), optax.sgd(0.5))  # one rate, twice
    >>> @jax.jit
    ... def step(params, state):
    ...   extra = optax_ext.gal_extra_args(lambda p: model.apply({'params': p}, x), params, loss)
    ...   updates, state = tx.update(None, state, params, **extra)  # one backward pass
    ...   return optax.apply_updates(params, updates), state, loss(extra['outputs'])
    >>> params, state, first = step(params, tx.init(params))
    >>> for _ in range(4):
    ...   params, state, last = step(params, state)
    >>> bool(last < first)
    True
    >>> sorted(optax_ext.diagnostics(state))
    ['gal/cosine', 'gal/remainder', 'gal/tentative_loss', 'gal/used_adjusted']

  References:
    Luo, Wong, Kankanhalli, Zhao, *Learning to Minimize the Remainder in
    Supervised Learning*, IEEE Transactions on Multimedia, 2022 (Algorithm 1,
    Eq. 3-7); published code: `gradient_adjustment
    <https://github.com/luoyan407/gradient_adjustment>`_.

  .. note::
    Put GAL first in the chain and wrap only the optimizer after it:
    ``optax.chain(gal(...), optax.apply_if_finite(base, 5))``,
    ``optax.chain(gal(...), optax.MultiSteps(base, k).gradient_transformation())``
    and ``optax.chain(gal(...), optax.lookahead(base, ...))`` (the VJP is taken
    with respect to the fast parameters) work; wrappers that read ``updates``
    before GAL has made them (``apply_if_finite``, ``MultiSteps`` around GAL)
    or drop extra arguments (``lookahead`` around GAL) need the vanilla
    gradient path. A non-finite remainder leaves the regressor unchanged.
    Under :func:`optax.inject_hyperparams` pass
    ``static_args=('output_dim', 'seed', 'activation')``.
  """
  output_dim, hidden = check_hyperparameters(output_dim, hidden, alpha, beta, learning_rate)
  if activation is not None and not callable(activation):
    raise ValueError(f"activation must be callable or None, got {activation!r}")
  reg_opt = regressor_optimizer if regressor_optimizer is not None else optax.sgd(learning_rate)
  linear_term = _published.linear_term if reference_compat else _linear_term

  regressor_of = lambda dtype: Regressor(hidden, output_dim, activation, param_dtype=dtype)

  def init_fn(params):
    dtype = _state_dtype(params)
    regressor = regressor_of(dtype)
    reg_params = regressor.init(jax.random.key(seed), jnp.zeros((1, output_dim), dtype))["params"]
    zero = jnp.zeros([], dtype)  # the four logged scalars
    return GALState(jnp.zeros([], jnp.int32), reg_params, reg_opt.init(reg_params), *[zero] * 4)

  def update_fn(
    updates, state, params=None, *, outputs=None, loss_fn=None, outputs_vjp=None, **extra_args
  ):
    del params, extra_args
    check_extra_args(outputs, loss_fn, outputs_vjp, output_dim)
    z = jax.lax.stop_gradient(outputs)
    dtype = state.remainder.dtype  # the regressor's
    regressor = regressor_of(dtype)
    ct = jnp.promote_types(outputs.dtype, dtype)  # computation dtype
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    eta_t = jnp.asarray(beta * lr, ct)
    loss0, nabla = jax.value_and_grad(loss_fn)(z)
    loss0 = jnp.asarray(loss0, ct)
    rows = lambda a: a.reshape(-1, output_dim).astype(ct)
    as_outputs = lambda a: a.reshape(outputs.shape).astype(outputs.dtype)
    nab = rows(nabla)
    nab_norm, _ = _row_norm(nab)

    def remainder(theta):
      v = regressor.apply({"params": theta}, rows(z)).astype(ct)
      v_norm, v_nonzero = _row_norm(v)
      v_adj = jnp.where(v_nonzero, alpha * nab_norm * v / v_norm, 0.0)  # per sample
      g = nab + v_adj
      tentative = jnp.asarray(loss_fn(z - as_outputs(eta_t * g)), ct)
      dots = jnp.sum(nab * g, axis=-1)
      r = tentative - loss0 + eta_t * linear_term(dots)
      return jnp.abs(r), (g, v_adj, tentative)

    (r_abs, (g, v_adj, tentative)), reg_grads = jax.value_and_grad(remainder, has_aux=True)(
      state.regressor_params
    )
    use = tentative <= loss0  # False when either is NaN
    if updates is None or not jax.tree.leaves(updates):  # nnx.Optimizer turns None into {}
      (param_grads,) = outputs_vjp(as_outputs(jnp.where(use, g, nab)))
    else:
      # VJP is linear: vanilla + VJP(ṽ) = VJP(g). The extra pass runs every step
      # with a zero cotangent when ṽ is not used: under lax.cond, XLA on CPU ran
      # the convolution backward pass slower than outside it.
      (extra_grads,) = outputs_vjp(as_outputs(jnp.where(use, v_adj, 0.0)))
      param_grads = jax.tree.map(lambda u, a: (u + a).astype(u.dtype), updates, extra_grads)
    reg_updates, reg_state = reg_opt.update(
      reg_grads, state.regressor_state, state.regressor_params
    )
    new_params = optax.apply_updates(state.regressor_params, reg_updates)
    reg_params, reg_state = _keep_if_finite(
      r_abs, reg_grads, (new_params, reg_state), (state.regressor_params, state.regressor_state)
    )
    cosine = _cosine(v_adj, nab)
    logged = [jnp.asarray(a, dtype) for a in (use, tentative, r_abs, cosine)]
    count = optax.safe_increment(state.count)
    return param_grads, GALState(count, reg_params, reg_state, *logged)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gal_chain(
  optimizer: Callable[[optax.ScalarOrSchedule], optax.GradientTransformation],
  learning_rate: optax.ScalarOrSchedule,
  output_dim: int,
  hidden: Sequence[int] = (100, 32, 16),
  alpha: jax.typing.ArrayLike = 1e-3,
  beta: jax.typing.ArrayLike = 1.0,
  regressor_optimizer: Optional[optax.GradientTransformation] = None,
  activation: Optional[Callable[[jax.Array], jax.Array]] = None,
  *,
  reference_compat: bool = False,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""GAL in front of ``optimizer(learning_rate)``, the learning rate said once.

  GAL's tentative step :math:`\tilde\eta = \beta\eta` uses the model's
  learning rate; this builds ``optax.chain(gal(output_dim, ...,
  learning_rate=learning_rate), optimizer(learning_rate))`` so that the two
  cannot differ. Under :func:`optax.inject_hyperparams` pass
  ``static_args=('optimizer', 'output_dim', 'seed', 'activation')``: the
  injected learning rate then reaches both stages.

  Args:
    optimizer: A factory from a learning rate (float or schedule) to the
      model's optimizer, e.g. ``optax.sgd`` or
      ``lambda lr: optax.apply_if_finite(optax.adam(lr), 5)``.
    learning_rate: η, a float or an optax schedule.
    output_dim: d, the width of the model's outputs.
    hidden: As for :func:`gal`, and so are ``alpha``, ``beta``,
      ``regressor_optimizer``, ``activation``, ``reference_compat`` and ``seed``.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` taking GAL's extra
    arguments (and any the optimizer needs).

  Examples:
    >>> import optax
    >>> from optax_ext.gal import gal_chain
    >>> tx = gal_chain(optax.sgd, optax.exponential_decay(0.1, 10, 0.5), output_dim=3)
  """
  flags = {"reference_compat": reference_compat, "seed": seed}
  stage = gal(
    output_dim, hidden, alpha, beta, learning_rate, regressor_optimizer, activation, **flags
  )
  tail = optimizer(learning_rate) if callable(optimizer) else None
  if not isinstance(tail, optax.GradientTransformation):
    raise ValueError(
      "optimizer must map a learning rate to an optax transformation (e.g. optax.sgd), "
      f"got {optimizer!r}"
    )
  return optax.chain(stage, tail)


def _read_diagnostics(state: GALState) -> dict[str, jax.Array]:
  """The four logged scalars: used_adjusted, tentative_loss, remainder, cosine."""
  return {name: getattr(state, name) for name in GALState._fields[3:]}


_diagnostics.register(GALState, "gal", _read_diagnostics)
