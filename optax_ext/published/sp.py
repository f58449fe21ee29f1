"""SP as the published ``optimizer/sp.py`` computes it in effect.

The published code never writes the previous parameters and gradients back
to its state, so its secant pair is the iterate itself: ``s = θ_t``,
``y = g_t`` (``secant="iterate"`` in :func:`optax_ext.sp` and
:func:`optax_ext.scale_by_spectral_damping`). Its sparsification loop rebinds
a local name, so it never prunes (``sparsity=0`` trains the same way), and it
has no bound on ``B⁻¹`` (a large ``b_max`` and ``max_enlargement``). Its other
departures (a per-element scalar case, momentum applied after the damping)
are not reproduced; docs/design.md, SP — Published code, lists them.
"""

from __future__ import annotations

__all__ = ["iterate_pair"]


def iterate_pair(p, p_prev, g, g_prev, for_sums=False):
  """The published code's secant pair: ``s = θ_t``, ``y = g_t``."""
  del p_prev, g_prev, for_sums
  return p, g
