"""Optimizers and learning-rate schedules chosen by name.

An optimizer is named on the command line as ``NAME`` or ``NAME@LR`` (for
example ``adam@3e-4``); ``gal+NAME`` puts a GAL stage in front of any
optimizer that needs nothing but gradients. What each name builds, needs and
logs is its description in :mod:`train.methods`; this module turns a name into
an :class:`Optimizer` ready for the training loop, and holds the schedules.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import optax

from train import methods, steps
from train.errors import UsageError

__all__ = [
  "SCHEDULES",
  "GalOptions",
  "Optimizer",
  "known_names",
  "make_optimizer",
  "make_plateau",
  "make_schedule",
  "parse_name",
]


@dataclasses.dataclass(frozen=True)
class GalOptions:
  """Settings of a ``gal+`` stage (the paper's defaults)."""

  alpha: float = 1e-3
  beta: float = 1e-3
  hidden: Optional[tuple[int, ...]] = None  # None: (128, 4) for regression, else (100, 32, 16)
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """A built optimizer, ready for the training loop.

  Attributes:
    name: As given on the command line (``sp@0.1``).
    tx: The transformation.
    lr: The base learning rate.
    need: What the train step hands ``tx.update`` besides the parameters.
    learning_rate: The rate or schedule, for logging.
    diagnostics: How to draw the signals it logs.
  """

  name: str
  tx: optax.GradientTransformation
  lr: float
  need: steps.Need = steps.Gradient()
  learning_rate: Optional[optax.ScalarOrSchedule] = None
  diagnostics: tuple[methods.Diagnostic, ...] = ()


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
  return sorted(methods.METHODS) + ["gal+<name>"]


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
  try:
    method = methods.get(name)
  except ValueError as e:
    raise UsageError(str(e)) from None
  base_lr = spec_lr or lr or method.default_lr
  rate = schedule(base_lr)
  if isinstance(method.need, steps.GalArgs):
    hidden = gal.hidden or ((128, 4) if task == "regression" else (100, 32, 16))
    # One learning rate (or schedule) for GAL's tentative step and the optimizer after it.
    tx = method.build(
      rate, output_dim=output_dim, hidden=hidden, alpha=gal.alpha, beta=gal.beta, seed=gal.seed
    )
  else:
    tx = method.build(rate)
  need = method.need
  if plateau is not None:
    tx, need = optax.chain(tx, plateau), steps.WithValue(need)
  return Optimizer(spec, tx, base_lr, need, rate, method.diagnostics)


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
