"""Capture each layer's input power from a Flax model (linen or NNX) in its forward pass.

INSGD (:func:`optax_ext.insgd`) divides a layer's gradient by the log of
:math:`m_t`, the mean of :math:`\\|x\\|_q^q` over the layer's input vectors in
the batch. The input vector of a neuron is the set of input values its output
contracts with (docs/design.md, INSGD — Input vectors and capture):

- ``Dense`` / ``nnx.Linear``: the input row (the last axis; every leading axis
  counts as a sample);
- ``DenseGeneral`` / ``nnx.LinearGeneral`` (hence the query, key, value and
  output projections of attention): the values on the contracted axes
  ``axis``; every other axis, ``batch_dims`` included, is a sample;
- ``Einsum``: the input's values on the axes contracted with the kernel
  (input letters the kernel has and the output lacks); the rest are samples;
- ``Conv``: the receptive-field patch of ``kh·kw·C_in/groups`` values (zero
  padding included as zeros), so :math:`m_t` is the mean over samples *and
  output positions* of the patch's :math:`\\|\\cdot\\|_q^q`, per feature group.

No patch or copy of the input is built: a contraction's power is one reduction
of :math:`|x|^q`, a convolution's a weighted one whose weights (how many
windows hold each input position) are computed in NumPy at trace time
(``_input_power_maths``). Embedding tables are indexed, not contracted: their
input is one-hot, so :math:`\\log P = 0` and Eq. 27 would divide by ε; they
(and output projections tied to them, ``Embed.attend``) are left ``None``.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx

from optax_ext._input_power_linen import capture_linen
from optax_ext._input_power_maths import _warned  # noqa: F401 - the once-per-process record
from optax_ext._input_power_nnx import capture_nnx
from optax_ext.insgd import InputPower

__all__ = ["capture_input_power"]


def capture_input_power(
  apply_fn: Callable[..., Any] | nnx.Module,
  *args: Any,
  norm_order: int = 2,
  wrt: Any = nnx.Param,
  **apply_kwargs: Any,
) -> tuple[Any, InputPower]:
  r"""Runs a Flax model's forward pass and records each layer's input power.

  Linen: ``capture_input_power(model.apply, variables, *args, **kwargs)`` runs
  ``model.apply(variables, *args, **kwargs)``. NNX:
  ``capture_input_power(model, *args, **kwargs)`` runs ``model(*args,
  **kwargs)`` (state updates such as BatchNorm's happen in place, as in any
  NNX call). For each ``Dense``/``Linear``, ``DenseGeneral``/``LinearGeneral``,
  ``Einsum`` and ``Conv`` kernel it records

  .. math::
    m_t = \frac{1}{|B|}\sum_{x \in B} \|x\|_q^q

  where :math:`B` is the set of the layer's input vectors in this batch (see
  the module docstring). The values are computed under ``stop_gradient`` in
  the same forward pass, so this sits inside a loss given to
  ``jax.value_and_grad`` or ``nnx.value_and_grad`` (return the power as
  auxiliary output).

  Args:
    apply_fn: A linen ``Module.apply`` (or an unjitted function calling one),
      or an NNX module.
    *args: Linen: ``variables`` (with a ``'params'`` collection), then the
      positional arguments of ``apply_fn``. NNX: the model's positional
      arguments.
    norm_order: q in :math:`\|x\|_q^q`: 2 (INSGD-ℓ2) or 1 (INSGD-ℓ1). This
      is the one place the order is said: the result carries it to
      :func:`optax_ext.insgd`, which refuses a power of another order if it was
      given one itself.
    wrt: NNX only: the filter of the parameters INSGD updates, as given to
      ``nnx.Optimizer(model, tx, wrt=...)`` (default ``nnx.Param``).
    **apply_kwargs: Keyword arguments of ``apply_fn`` or the model
      (``train``, ``rngs``, ``mutable``, ...).

  Returns:
    ``(outputs, input_power)``: ``outputs`` is exactly what the call returned
    (linen: ``(y, mutated_variables)`` when ``mutable`` is given);
    ``input_power`` is an :class:`~optax_ext.insgd.InputPower` holding
    ``norm_order`` and ``powers``, a tree with the structure of
    ``variables['params']`` (linen) or of ``nnx.as_pure(nnx.state(model,
    wrt))`` (NNX, what ``nnx.Optimizer.update(model, grads,
    input_power=...)`` hands to the transform): :math:`m_t` (a scalar, or a
    vector over the output features for a convolution with
    ``feature_group_count > 1``, in the layer input's dtype, at least
    float32) at each kernel above and ``None`` at every other leaf. A layer
    called several times gets the mean of its calls.

  Raises:
    ValueError: if ``norm_order`` is not 1 or 2, or linen ``variables`` have
      no ``'params'``.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> import optax_ext
    >>> model = nn.Conv(4, (3, 3), padding='VALID')
    >>> x = jnp.ones((2, 5, 5, 2))
    >>> variables = model.init(jax.random.key(0), x)
    >>> y, power = optax_ext.capture_input_power(model.apply, variables, x)
    >>> print(power.powers['kernel'])  # each 3x3x2 patch of ones has squared norm 18
    18.0
    >>> print(power.powers['bias'], power.norm_order)
    None 2
    >>> from flax import nnx
    >>> proj = nnx.LinearGeneral((3, 4), 5, axis=(-2, -1), rngs=nnx.Rngs(0))
    >>> y, power = optax_ext.capture_input_power(proj, jnp.ones((2, 7, 3, 4)))
    >>> print(power.powers['kernel'])  # each input vector is 3x4 ones
    12.0

  .. warning::
    Parameters of any other layer (``ConvTranspose``, a custom module's own
    ``param``, a ``Conv`` with a ``mask`` or an unknown padding, an ``Einsum``
    whose equation has no single input vector) are left ``None``, so INSGD
    updates them as plain SGD, and a warning names the layer (once per layer
    and process). Normalisation layers (BatchNorm, LayerNorm, ...),
    embeddings and biases are left ``None`` silently. Layers run inside
    lifted transforms (``nn.scan``, ``nnx.scan``, ``nn.vmap``, ``nnx.vmap``,
    ``remat``) or a jitted ``apply_fn`` are not seen (and so reported).
  """
  if norm_order not in (1, 2):
    raise ValueError(f"norm_order must be 1 or 2, got {norm_order!r}")
  if isinstance(apply_fn, nnx.Module):
    outputs, powers = capture_nnx(apply_fn, args, apply_kwargs, norm_order, wrt)
  else:
    if "variables" in apply_kwargs:  # given by name, as the linen signature allows
      args = (apply_kwargs.pop("variables"), *args)
    if not args:
      raise ValueError("capture_input_power(apply_fn, variables, *args) needs the variables")
    outputs, powers = capture_linen(apply_fn, args[0], args[1:], apply_kwargs, norm_order)
  return outputs, InputPower(powers, norm_order)
