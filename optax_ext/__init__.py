"""optax_ext: SP, AngularGrad, INSGD and GAL as composable optax transforms.

Every public name is re-exported here; the maths lives in one module per method.
"""

from optax_ext import config, quantile
from optax_ext._diagnostics import diagnostics
from optax_ext.angulargrad import AngularGradState, angulargrad, scale_by_angulargrad
from optax_ext.gal import GALState, Regressor, gal, gal_chain, gal_extra_args
from optax_ext.input_power import capture_input_power
from optax_ext.insgd import InputNormState, InputPower, insgd, scale_by_input_norm
from optax_ext.saliency import SaliencyProximalState, saliency_proximal
from optax_ext.spectral_damping import SpectralDampingState, scale_by_spectral_damping
from optax_ext.spectral_proximal import SPState, sp

__all__ = [
  "AngularGradState",
  "GALState",
  "InputNormState",
  "InputPower",
  "Regressor",
  "SPState",
  "SaliencyProximalState",
  "SpectralDampingState",
  "angulargrad",
  "capture_input_power",
  "config",
  "diagnostics",
  "gal",
  "gal_chain",
  "gal_extra_args",
  "insgd",
  "quantile",
  "saliency_proximal",
  "scale_by_angulargrad",
  "scale_by_input_norm",
  "scale_by_spectral_damping",
  "sp",
]

__version__ = "0.1.0"
