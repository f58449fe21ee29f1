"""Library settings, read when a transformation's update is traced.

There is one setting:

- ``"cpu_fusion"`` (default ``True``): on the CPU backend, compile each
  update with the constructs that make XLA's CPU compiler write several
  arrays from one loop and keep intermediates out of memory
  (``optax_ext/_fusion.py``). They change no value: from the same inputs the
  update and the new state are those of the plain program, element for element
  (docs/design.md, Conventions — CPU fusion seam, says where a caller's own
  fusion can still differ in the last bit). Off CPU the plain program is
  compiled whatever the setting. Turn it off to compile the plain program on
  CPU too (to compare speeds, or to read the program as the maths is written).

The environment variable ``OPTAX_EXT_CPU_FUSION=0`` sets the default to off.
A setting takes effect for functions traced after it changes: ``jax.jit``
keeps the programs it has already traced.

Examples:
  >>> import optax_ext
  >>> optax_ext.config.read("cpu_fusion")
  True
  >>> optax_ext.config.update("cpu_fusion", False)
  >>> optax_ext.config.read("cpu_fusion")
  False
  >>> optax_ext.config.update("cpu_fusion", True)
"""

from __future__ import annotations

import os

__all__ = ["read", "update"]


def _env_flag(name: str, default: bool) -> bool:
  value = os.environ.get(name)
  if value is None or value.strip() == "":
    return default
  if value.strip().lower() in ("0", "false", "no", "off"):
    return False
  if value.strip().lower() in ("1", "true", "yes", "on"):
    return True
  raise ValueError(f"{name} must be 0 or 1 (or true/false), got {value!r}")


_SETTINGS: dict[str, bool] = {"cpu_fusion": _env_flag("OPTAX_EXT_CPU_FUSION", True)}


def read(name: str) -> bool:
  """Returns the current value of the setting ``name``."""
  if name not in _SETTINGS:
    raise KeyError(f"unknown optax_ext setting {name!r}; known: {sorted(_SETTINGS)}")
  return _SETTINGS[name]


def update(name: str, value: bool) -> None:
  """Sets ``name`` to ``value`` for every update traced from now on."""
  if name not in _SETTINGS:
    raise KeyError(f"unknown optax_ext setting {name!r}; known: {sorted(_SETTINGS)}")
  if not isinstance(value, bool):
    raise TypeError(f"optax_ext setting {name!r} takes a bool, got {value!r}")
  _SETTINGS[name] = value
