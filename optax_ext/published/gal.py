"""GAL as the authors' published ``adjustment.py`` computes it, where it departs from the paper.

The paper's remainder (Eq. 7) sums the linear term over the batch,
:math:`\\tilde\\eta\\sum_n \\nabla_n\\cdot g_n`; the published code takes its
mean (``first_term.mean()``), which scales that term by one over the batch size.
:func:`optax_ext.gal` uses this module's reduction when built with
``reference_compat=True``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["linear_term"]


def linear_term(dots: jax.Array) -> jax.Array:
  r"""The remainder's linear term over the samples, as the published code reduces it.

  .. math::
    \mathrm{mean}_n (\nabla_n \cdot g_n)

  Args:
    dots: The per-sample dot products :math:`\nabla_n \cdot g_n`, shape ``(n,)``.

  Returns:
    Their mean (the paper's Eq. 7 has their sum).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_ext.published.gal import linear_term
    >>> print(linear_term(jnp.asarray([1.0, 2.0, 6.0])))
    3.0
  """
  return jnp.mean(dots)
