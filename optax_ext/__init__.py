"""optax_ext: SP, AngularGrad, INSGD and GAL as composable optax transforms.

Every public name is re-exported here; the maths lives in one module per method.
"""

from optax_ext._diagnostics import diagnostics

# --- angulargrad ---
from optax_ext.angulargrad import AngularGradState, angulargrad, scale_by_angulargrad

# --- spectral_proximal ---

# --- insgd ---
from optax_ext.input_power import capture_input_power
from optax_ext.insgd import InputNormState, insgd, scale_by_input_norm

# --- gal ---

__version__ = "0.1.0"
