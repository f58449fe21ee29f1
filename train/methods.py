"""Every optimizer the training command knows, each described once.

A :class:`Method` is all the rest of the code needs to know about one optimizer: the
name ``--optimizers`` takes; how it is built from a learning rate and its own
hyperparameters (the keyword arguments of its optax or optax_ext factory, with that
factory's defaults); the learning rate used when none is given; what the train step
must hand its update besides the gradient (a :class:`train.steps.Need`); the
diagnostics it logs and how to draw them (:class:`Diagnostic`); and the optimizer it
modifies, against whose step benchmarks measure its cost.

:data:`METHODS` is the one list of optimizers: the command line and its demo, the
training step, the plots, the benchmarks and the tests read it. GAL is a stage in
front of another optimizer (``gal+NAME``, :func:`with_gal`); :func:`get` resolves
either form.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Optional

import optax

import optax_ext
from train import steps

__all__ = ["GAL_DIAGNOSTICS", "METHODS", "Diagnostic", "Method", "get", "with_gal"]


@dataclasses.dataclass(frozen=True)
class Diagnostic:
  """Signals a method logs (:func:`optax_ext.diagnostics`), drawn in one panel.

  Attributes:
    signals: Signal names as they follow the method's prefix in a diagnostics key
      (``angulargrad/phi_mean``: ``"phi_mean"``). Several scalar signals share one panel
      of lines; ``"pruned/*"`` is one value per parameter leaf, drawn as a leaves × steps
      heatmap.
    title: The panel's title.
    scale: ``"auto"`` (logarithmic where the positive values span more than two
      decades), ``"fraction"`` (linear, 0 to 1), ``"log"`` or ``"linear"``.
    headline: Among the signals drawn first, the ones that show whether the method does
      what its paper says.
  """

  signals: tuple[str, ...]
  title: str
  scale: str = "auto"
  headline: bool = False

  @property
  def per_leaf(self) -> bool:
    """Whether the signal holds one value per parameter leaf (``"name/*"``)."""
    return self.signals[0].endswith("/*")


@dataclasses.dataclass(frozen=True)
class Method:
  """One optimizer, described once.

  Attributes:
    name: The name ``--optimizers`` takes.
    factory: The optax or optax_ext function that builds it, learning rate first.
    default_lr: The learning rate used when none is given.
    description: One line for ``--help``.
    settings: Keyword arguments of ``factory`` fixed by this name (AngularGrad's
      ``method``, INSGD's ``norm_order``); every other keyword argument is a
      hyperparameter of :meth:`build`.
    need: What the train step hands the update besides the parameters.
    diagnostics: The panels of the signals it logs, most telling first.
    family: The paper method it implements (``"SP"``, ``"AngularGrad"``, ``"INSGD"``,
      ``"GAL"``), or ``""`` for an optax baseline.
    base: The name of the optimizer it modifies, against whose train step its cost is
      measured (``bench.train_step``); None for a baseline.
  """

  name: str
  factory: Callable[..., optax.GradientTransformation]
  default_lr: float
  description: str
  settings: dict = dataclasses.field(default_factory=dict)
  need: steps.Need = steps.Gradient()
  diagnostics: tuple[Diagnostic, ...] = ()
  family: str = ""
  base: Optional[str] = None

  def hyperparameters(self) -> dict[str, Any]:
    """The keyword arguments :meth:`build` takes, with the factory's defaults
    (``inspect.Parameter.empty`` where the factory has none)."""
    params = list(inspect.signature(self.factory).parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params if p.kind in kinds and p.name not in self.settings}

  def build(
    self, learning_rate: optax.ScalarOrSchedule, **hyperparameters
  ) -> optax.GradientTransformation:
    """The transformation at ``learning_rate`` (a number or a schedule).

    Raises:
      ValueError: for a keyword that is not one of :meth:`hyperparameters`.
    """
    known = self.hyperparameters()
    for key in hyperparameters:
      if key not in known:
        raise ValueError(
          f"{self.name} has no hyperparameter {key!r}; it takes: {', '.join(known) or 'none'}"
        )
    return self.factory(learning_rate, **self.settings, **hyperparameters)

  def builder(self) -> Callable[..., optax.GradientTransformation]:
    """:meth:`build` as a function with the factory's own signature less the settings, for
    what reads hyperparameters by name: ``optax.inject_hyperparams(method.builder())(
    learning_rate=0.1, sparsity=0.2)`` injects SP's learning rate and sparsity."""

    def build(*args, **kwargs):
      return self.build(*args, **kwargs)

    params = inspect.signature(self.factory).parameters.values()
    build.__signature__ = inspect.Signature([p for p in params if p.name not in self.settings])
    return build


_PHI = Diagnostic(
  ("phi_min", "phi_mean", "phi_max"), "φ over coordinates: min, mean, max", headline=True
)
_SP = (
  Diagnostic(
    ("diagonal_fraction", "scalar_fraction"), "damping case: fraction of leaves", "fraction", True
  ),
  Diagnostic(("pruned_total",), "pruned fraction, whole model", headline=True),
  Diagnostic(("pruned/*",), "pruned fraction per leaf"),
  Diagnostic(("binv_min", "binv_max"), "range of B⁻¹ over the tree"),
  Diagnostic(("threshold/*",), "saliency threshold per leaf"),
  Diagnostic(("quantile_passes",), "quantile search: counting passes"),
)
_INSGD = (
  Diagnostic(("step_scale/*",), "step scale 1/max(log P, ε) per leaf", headline=True),
  Diagnostic(("log_power/*",), "input log-power per leaf"),
)
#: The signals GAL's stage logs.
GAL_DIAGNOSTICS = (
  Diagnostic(("used_adjusted",), "adjusted output used (fraction of steps)", "fraction", True),
  Diagnostic(("remainder",), "|r|", headline=True),
  Diagnostic(("cosine",), "cosine(adjustment, output gradient)"),
  Diagnostic(("tentative_loss",), "tentative loss"),
)


def _angulargrad(method: str) -> Method:
  return Method(
    f"angulargrad_{method}",
    optax_ext.angulargrad,
    1e-3,
    f"AngularGrad, {method} variant",
    {"method": method},
    diagnostics=(_PHI, Diagnostic(("phi_at_floor",), "fraction of φ at its floor", "fraction")),
    family="AngularGrad",
    base="adam",
  )


def _insgd(q: int) -> Method:
  # The norm order reaches both the capture and INSGD, which refuses a capture of another.
  return Method(
    f"insgd_l{q}",
    optax_ext.insgd,
    0.05,
    f"input-normalized SGD, l{q} input power",
    {"norm_order": q},
    steps.InputPower(q),
    _INSGD,
    family="INSGD",
    base="momentum",  # INSGD's own momentum is heavy-ball 0.9
  )


#: Every optimizer ``--optimizers`` knows, by name (and ``gal+NAME``, see :func:`get`).
METHODS: dict[str, Method] = {
  m.name: m
  for m in (
    Method("sgd", optax.sgd, 0.1, "plain SGD"),
    Method("momentum", optax.sgd, 0.05, "SGD, heavy-ball 0.9", {"momentum": 0.9}),
    Method(
      "nesterov",
      optax.sgd,
      0.05,
      "SGD, Nesterov momentum 0.9",
      {"momentum": 0.9, "nesterov": True},
    ),
    Method("adam", optax.adam, 1e-3, "Adam"),
    Method("adamw", optax.adamw, 1e-3, "AdamW, decay 1e-4"),
    _angulargrad("cos"),
    _angulargrad("tan"),
    _insgd(2),
    _insgd(1),
    Method(
      "sp",
      optax_ext.sp,
      0.05,
      "spectral proximal, saliency",
      diagnostics=_SP,
      family="SP",
      base="sgd",
    ),
    Method(
      "sp_nesterov",
      optax_ext.sp,
      0.02,
      "spectral proximal + Nesterov momentum",
      {"momentum": 0.9, "nesterov": True},
      diagnostics=_SP,
      family="SP",
      base="nesterov",
    ),
  )
}


def _gal_in_front(inner: Method) -> Callable[..., optax.GradientTransformation]:
  """:func:`optax_ext.gal_chain` of ``inner.build``, taking GAL's keyword arguments and,
  as keyword-only ones, ``inner``'s hyperparameters (GAL's own where a name is both)."""
  chain = list(inspect.signature(optax_ext.gal_chain).parameters.values())[1:]
  own = {p.name for p in chain}
  rest = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
    for name, default in inner.hyperparameters().items()
    if name not in own
  ]

  def factory(learning_rate, *args, **kwargs):
    tail = {k: kwargs.pop(k) for k in list(kwargs) if k not in own}
    return optax_ext.gal_chain(
      functools.partial(inner.build, **tail), learning_rate, *args, **kwargs
    )

  factory.__signature__ = inspect.Signature(chain + rest)
  return factory


def with_gal(inner: Method) -> Method:
  """GAL in front of ``inner`` (``gal+NAME``): :func:`optax_ext.gal_chain` of its builder.

  Its hyperparameters are :func:`optax_ext.gal_chain`'s (``output_dim`` has no default),
  then ``inner``'s, which reach ``inner``.

  Raises:
    ValueError: when ``inner`` needs more than gradients.
  """
  if not isinstance(inner.need, steps.Gradient):
    raise ValueError(f"gal+{inner.name}: GAL stands only in front of an optimizer of gradients")
  return Method(
    f"gal+{inner.name}",
    _gal_in_front(inner),
    inner.default_lr,
    f"GAL in front of {inner.description}",
    need=steps.GalArgs(),
    diagnostics=GAL_DIAGNOSTICS + inner.diagnostics,
    family="GAL",
    base=inner.name,
  )


def get(name: str) -> Method:
  """The method called ``name`` (one of :data:`METHODS`, or ``gal+`` one of them).

  Raises:
    ValueError: for an unknown name (the message lists the known ones) or a GAL stage in
      front of an optimizer that needs more than gradients.
  """
  inner = name[4:] if name.startswith("gal+") else name
  if inner not in METHODS:
    known = ", ".join([*METHODS, "gal+<name>"])
    raise ValueError(f"unknown optimizer {inner!r}; known: {known}")
  return with_gal(METHODS[inner]) if inner != name else METHODS[inner]
