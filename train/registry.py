"""Optimizers and learning-rate schedules chosen by name.

An optimizer is named on the command line as ``NAME`` or ``NAME@LR`` (for
example ``adam@3e-4``); ``gal+NAME`` puts a GAL stage in front of any
optimizer that needs nothing but gradients. Each entry records what its
update needs besides gradients and parameters, so the training step can
supply it:

- ``input_power``: INSGD's per-layer input power, captured in the forward pass;
- ``gal``: GAL's model outputs, loss function and output VJP;
- ``value``: the loss value (the reduce-on-plateau schedule).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import optax

from train.errors import UsageError

__all__ = [
  "REGISTRY",
  "Builder",
  "SCHEDULES",
  "GalOptions",
  "Optimizer",
  "OptimizerEntry",
  "known_names",
  "make_optimizer",
  "make_plateau",
  "make_schedule",
  "parse_name",
  "register",
]

#: Builds an optimizer from its learning rate (a number or a schedule).
Builder = Callable[[optax.ScalarOrSchedule], optax.GradientTransformation]


@dataclasses.dataclass(frozen=True)
class OptimizerEntry:
  """One registered optimizer.

  Attributes:
    build: Maps a learning rate (float or schedule) to the transformation.
    default_lr: Learning rate used when none is given.
    needs: Extra update arguments the transformation requires.
    norm_order: For INSGD, the norm order the input-power capture must use.
    description: One line for ``--help``.
  """

  build: Builder
  default_lr: float
  needs: frozenset = frozenset()
  norm_order: Optional[int] = None
  description: str = ""


#: Every optimizer the command line knows, by name (``--optimizers NAME``).
REGISTRY: dict[str, OptimizerEntry] = {}


def register(
  name: str,
  build: Builder,
  default_lr: float,
  *,
  needs=(),
  norm_order: Optional[int] = None,
  description: str = "",
) -> None:
  """Adds an optimizer to the registry under ``name``."""
  if "+" in name or "@" in name:
    raise ValueError(f"optimizer name {name!r} may not contain '+' or '@'")
  REGISTRY[name] = OptimizerEntry(build, default_lr, frozenset(needs), norm_order, description)


register("sgd", lambda lr: optax.sgd(lr), 0.1, description="plain SGD")
register(
  "momentum", lambda lr: optax.sgd(lr, momentum=0.9), 0.05, description="SGD, heavy-ball 0.9"
)
register(
  "nesterov",
  lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
  0.05,
  description="SGD, Nesterov momentum 0.9",
)
register("adam", lambda lr: optax.adam(lr), 1e-3, description="Adam")
register(
  "adamw", lambda lr: optax.adamw(lr, weight_decay=1e-4), 1e-3, description="AdamW, decay 1e-4"
)


def _register_methods() -> None:
  import optax_ext

  register(
    "angulargrad_cos",
    lambda lr: optax_ext.angulargrad(lr, method="cos"),
    1e-3,
    description="AngularGrad, cos variant",
  )
  register(
    "angulargrad_tan",
    lambda lr: optax_ext.angulargrad(lr, method="tan"),
    1e-3,
    description="AngularGrad, tan variant",
  )
  for q in (2, 1):  # q reaches both the capture (norm_order) and INSGD, which checks it
    register(
      f"insgd_l{q}",
      lambda lr, q=q: optax_ext.insgd(lr, norm_order=q),
      0.05,
      needs=("input_power",),
      norm_order=q,
      description=f"input-normalized SGD, l{q} input power",
    )
  register("sp", lambda lr: optax_ext.sp(lr), 0.05, description="spectral proximal, saliency")
  register(
    "sp_nesterov",
    lambda lr: optax_ext.sp(lr, momentum=0.9, nesterov=True),
    0.02,
    description="spectral proximal + Nesterov momentum",
  )


_register_methods()


@dataclasses.dataclass(frozen=True)
class GalOptions:
  """Settings of a ``gal+`` stage (the paper's defaults)."""

  alpha: float = 1e-3
  beta: float = 1e-3
  hidden: Optional[tuple[int, ...]] = None  # None: (128, 4) for regression, else (100, 32, 16)
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """A built optimizer, ready for the training loop."""

  name: str
  tx: optax.GradientTransformation
  lr: float
  needs: frozenset
  norm_order: Optional[int]
  learning_rate: Optional[optax.ScalarOrSchedule] = None  # the rate or schedule, for logging


def parse_name(spec: str) -> tuple[str, Optional[float]]:
  """Splits ``NAME@LR`` into the name and the learning rate (or ``None``)."""
  name, sep, lr = spec.partition("@")
  if not sep:
    return name, None
  try:
    value = float(lr)
  except ValueError:
    raise UsageError(f"bad learning rate {lr!r} in optimizer {spec!r}") from None
  if not value > 0:
    raise UsageError(f"learning rate in {spec!r} must be positive")
  return name, value


def known_names() -> list[str]:
  """The optimizer names ``--optimizers`` accepts, sorted, and the ``gal+<name>`` form."""
  return sorted(REGISTRY) + ["gal+<name>"]


def make_optimizer(
  spec: str,
  schedule: Callable[[float], optax.ScalarOrSchedule],
  *,
  lr: Optional[float] = None,
  output_dim: int = 10,
  task: str = "classification",
  gal: GalOptions = GalOptions(),
  plateau: Optional[optax.GradientTransformation] = None,
) -> Optimizer:
  """Builds the optimizer named by ``spec``.

  Args:
    spec: ``NAME``, ``NAME@LR``, ``gal+NAME`` or ``gal+NAME@LR``.
    schedule: Maps the base learning rate to a float or an optax schedule.
    lr: A learning rate for every optimizer that ``spec`` does not set itself.
    output_dim: The model's output width (GAL's regressor output).
    task: ``"classification"``, ``"regression"`` or ``"language"`` (GAL's default
      widths: (128, 4) for regression, (100, 32, 16) otherwise).
    gal: Settings of a GAL stage.
    plateau: A reduce-on-plateau transformation to chain last, if any.

  Raises:
    UsageError: for an unknown name or a combination that cannot work.
  """
  name, spec_lr = parse_name(spec)
  use_gal = name.startswith("gal+")
  base_name = name[4:] if use_gal else name
  if base_name not in REGISTRY:
    raise UsageError(f"unknown optimizer {base_name!r}; known: {', '.join(known_names())}")
  entry = REGISTRY[base_name]
  base_lr = spec_lr or lr or entry.default_lr
  rate = schedule(base_lr)
  needs = set(entry.needs)
  if use_gal:
    if "input_power" in needs:
      raise UsageError(f"gal+{base_name}: GAL cannot be combined with an input-power optimizer")
    from optax_ext.gal import gal_chain

    hidden = gal.hidden or ((128, 4) if task == "regression" else (100, 32, 16))
    # One learning rate (or schedule) for GAL's tentative step and the optimizer after it.
    tx = gal_chain(
      entry.build, rate, output_dim, hidden=hidden, alpha=gal.alpha, beta=gal.beta, seed=gal.seed
    )
    needs.add("gal")
  else:
    tx = entry.build(rate)
  if plateau is not None:
    tx = optax.chain(tx, plateau)
    needs.add("value")
  return Optimizer(spec, tx, base_lr, frozenset(needs), entry.norm_order, rate)


#: The learning-rate schedules of ``--schedule``.
SCHEDULES = ("constant", "exp", "multistep", "cosine", "warmup_cosine", "plateau")


def make_schedule(
  kind: str,
  steps_per_epoch: int,
  total_steps: int,
  *,
  gamma: float = 0.7,
  milestones: tuple[int, ...] = (),
  warmup: float = 0.05,
) -> Callable[[float], optax.ScalarOrSchedule]:
  """Returns a function from the base learning rate to a schedule.

  Args:
    kind: ``constant``; ``exp`` (per-epoch exponential decay by ``gamma``, like
      PyTorch's ``StepLR(step_size=1, gamma)``, the SP paper's setting);
      ``multistep`` (multiply by ``gamma`` at each epoch in ``milestones``);
      ``cosine`` (cosine decay to 0 over the run); ``warmup_cosine`` (linear
      warm-up from 0 over the first ``warmup`` share of the run, then cosine decay
      to 0, as AlgoPerf's baselines train); ``plateau`` (constant here; the decay
      is a separate transformation, see :func:`make_plateau`).
    steps_per_epoch: Optimizer steps in one epoch.
    total_steps: Steps in the whole run.
    gamma: The decay factor.
    milestones: Epochs at which ``multistep`` decays.
    warmup: The share of ``total_steps`` that ``warmup_cosine`` warms up over (at
      least one step).

  ``warmup_cosine`` is the base rate times a shape of the step count, so its base
  rate may be a traced value (a hyperparameter held in the optimizer state).
  """
  if kind in ("constant", "plateau"):
    return lambda lr: lr
  if kind == "exp":
    return lambda lr: optax.exponential_decay(
      lr, transition_steps=steps_per_epoch, decay_rate=gamma, staircase=True
    )
  if kind == "multistep":
    if not milestones:
      raise UsageError("the multistep schedule needs --milestones (epochs)")
    return lambda lr: optax.piecewise_constant_schedule(
      lr, {int(m) * steps_per_epoch: gamma for m in milestones}
    )
  if kind == "cosine":
    return lambda lr: optax.cosine_decay_schedule(lr, max(1, total_steps))
  if kind == "warmup_cosine":
    warm = max(1, round(warmup * total_steps))
    shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, warm, max(warm + 1, total_steps))
    return lambda lr: lambda count: lr * shape(count)
  raise UsageError(f"unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}")


def make_plateau(
  steps_per_epoch: int, gamma: float = 0.5, patience: int = 2
) -> optax.GradientTransformation:
  """Reduce-on-plateau: scales updates by ``gamma`` when the epoch loss stalls."""
  return optax.contrib.reduce_on_plateau(
    factor=gamma, patience=patience, accumulation_size=steps_per_epoch
  )
