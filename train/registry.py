"""Optimizers and learning-rate schedules chosen by name.

An optimizer is named on the command line as ``NAME``, ``NAME@LR`` (for example
``adam@3e-4``) or ``NAME[@LR]:KEY=VALUE,...`` (``sp:lr=0.1,sparsity=0.2``), where
each KEY is a keyword argument of the method's optax or optax_ext factory and
``lr`` the learning rate; ``gal+NAME`` puts a GAL stage in front of any optimizer
that needs nothing but gradients and takes GAL's keyword arguments (``alpha``,
``beta``, ``hidden=64/16``) beside NAME's. What each name builds, needs and logs
is its description in :mod:`train.methods`; this module turns a name into an
:class:`Optimizer` ready for the training loop, and holds the schedules.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
from typing import Any, Callable, Optional

import jax
import optax

from train import methods, steps
from train.errors import UsageError

__all__ = [
  "NOT_SETTABLE",
  "SCHEDULES",
  "GalOptions",
  "Optimizer",
  "Spec",
  "describe_settings",
  "format_spec",
  "known_names",
  "make_optimizer",
  "make_plateau",
  "make_schedule",
  "parse_name",
  "parse_spec",
  "path_mask",
  "settable",
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
    spec: The configuration at the learning rate it trains at, as :func:`format_spec`
      writes it (``sp:lr=0.05,sparsity=0.2``; one text per configuration).
    hyperparameters: Every keyword argument the factory was called with (those the
      name fixes, the spec's and the command's, and the factory's defaults for the
      rest), JSON-ready, for the record of the run.
  """

  name: str
  tx: optax.GradientTransformation
  lr: float
  need: steps.Need = steps.Gradient()
  learning_rate: Optional[optax.ScalarOrSchedule] = None
  diagnostics: tuple[methods.Diagnostic, ...] = ()
  spec: str = ""
  hyperparameters: dict = dataclasses.field(default_factory=dict)


#: Keyword arguments the command line cannot set: Python objects (GAL's regressor
#: optimizer and activation) and what the command itself supplies (GAL's output width,
#: from the data; its seed, ``--seed``). A ``mask`` is set as a pattern of leaf paths
#: (:func:`path_mask`).
NOT_SETTABLE = ("regressor_optimizer", "activation", "output_dim", "seed")


def _leaf_path(path) -> str:
  """``Dense_0/kernel``: the dict keys and sequence indices of a leaf's path; an NNX
  variable's ``.value`` is left out, so linen and NNX parameters read alike."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != "value":
        parts.append(k.name)
    else:
      parts.append(str(getattr(k, "key", getattr(k, "idx", k))))
  return "/".join(parts)


def path_mask(pattern: str) -> Callable[[Any], Any]:
  """The mask a spec's ``mask=PATTERN`` stands for: a function from the parameters to a
  tree of booleans, true at each leaf whose path (``Dense_0/kernel``, as the
  diagnostics name leaves; the same for linen and NNX parameters) the regular
  expression ``pattern`` matches (:func:`re.search`).
  """
  regex = re.compile(pattern)
  return lambda params: jax.tree_util.tree_map_with_path(
    lambda path, _: bool(regex.search(_leaf_path(path))), params
  )


def settable(method: methods.Method) -> dict[str, Any]:
  """The keyword arguments of ``method`` a spec may set, with the factory's defaults."""
  return {k: v for k, v in method.hyperparameters().items() if k not in NOT_SETTABLE}


@dataclasses.dataclass(frozen=True)
class Spec:
  """One optimizer configuration of the command line, parsed.

  Attributes:
    name: The method (``sp``, ``gal+adamw``).
    lr: The learning rate (``@LR`` or ``lr=``), or None for the command's.
    settings: The keyword arguments given, by name, as the factory takes them.
  """

  name: str
  lr: Optional[float] = None
  settings: dict = dataclasses.field(default_factory=dict)

  def text(self) -> str:
    """The spec as :func:`format_spec` writes it, the same for the same configuration."""
    return format_spec(self.name, self.lr, self.settings)

  def folder(self) -> str:
    """A folder name for the run, safe on every file system and one per configuration:
    ``sp@0.1`` gives ``sp_lr0.1``, ``gal+adamw:alpha=0.01`` ``gal_plus_adamw_alpha-0.01``."""
    out = self.name.replace("+", "_plus_")
    if self.lr is not None:
      out += f"_lr{_text(self.lr)}"
    for key, value in sorted(self.settings.items()):  # a value holds no "_", a key no "-"
      text = "x".join(map(str, value)) if isinstance(value, tuple) else _text(value)
      out += f"_{key}-" + re.sub(r"[^A-Za-z0-9.+-]", lambda m: f"~{ord(m[0]):x}~", text)
    return out


def _text(value: Any) -> str:
  """A value as a spec writes it: floats exactly (``repr``), ``hidden`` as ``64/16``."""
  if isinstance(value, bool) or value is None:
    return str(value).lower()
  if isinstance(value, (tuple, list)):
    return "/".join(_text(v) for v in value)
  if callable(value):  # a default mask function
    return getattr(value, "__name__", "default")
  return repr(value) if isinstance(value, float) else str(value)


def format_spec(name: str, lr: Optional[float] = None, settings: Optional[dict] = None) -> str:
  """The text ``--optimizers`` takes for ``name`` at ``lr`` with ``settings``, the inverse of
  :func:`parse_spec`: ``format_spec("sp", 0.1, {"sparsity": 0.2})`` is ``sp:lr=0.1,sparsity=0.2``.
  """
  items = ([("lr", lr)] if lr is not None else []) + sorted((settings or {}).items())
  return name + (":" + ",".join(f"{k}={_text(v)}" for k, v in items) if items else "")


_BOOLEANS = {"true": True, "false": False}


def _boolean(text: str) -> bool:
  return _BOOLEANS[text.strip().lower()]  # KeyError: not a boolean


def _widths(text: str) -> tuple[int, ...]:
  return tuple(int(w) for w in text.split("/") if w)


def _plain(text: str) -> Any:
  """A value whose factory default (None) says nothing of its type: ``none``, a
  boolean, a whole number, a number, or else the word itself (a dtype's name)."""
  low = text.strip().lower()
  if low == "none" or low in _BOOLEANS:
    return _BOOLEANS.get(low)
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def _reader(default: Any) -> tuple[Callable[[str], Any], str]:
  """How to read a value of the type of ``default``, and that type in words."""
  if isinstance(default, bool):
    return _boolean, "true or false"
  if isinstance(default, (tuple, list)):
    return _widths, "whole numbers separated by / (64/16)"
  if isinstance(default, int):
    return int, "a whole number"
  if isinstance(default, float):
    return float, "a number"
  return (str if isinstance(default, str) else _plain), "a value"


def _value(method: str, key: str, text: str, default: Any) -> Any:
  """``text`` read as the type of ``default`` (any plain value where it is None)."""
  read, kind = _reader(default)
  try:
    return read(text)
  except (KeyError, ValueError):
    raise UsageError(f"{method}: {key}={text!r} is not {kind}") from None


def _pattern(method: str, text: str) -> Optional[str]:
  """A ``mask`` value: a regular expression of leaf paths (``none``: the default)."""
  if text.lower() == "none":
    return None
  try:
    re.compile(text)
  except re.error as e:
    raise UsageError(f"{method}: mask={text!r} is not a regular expression ({e})") from None
  return text


def _parse_lr(text: str, spec: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise UsageError(f"bad learning rate {text!r} in optimizer {spec!r}") from None
  if not value > 0:
    raise UsageError(f"learning rate in {spec!r} must be positive")
  return value


def parse_spec(spec: str) -> Spec:
  """Reads ``NAME[@LR][:KEY=VALUE,...]`` (``lr`` may stand among the keys instead of ``@``).

  Each KEY must be one of the method's :func:`settable` keyword arguments; its value is
  read as the type of the factory's default (``true``/``false``, a number, a word, or
  ``64/16`` for GAL's ``hidden``). Whether the value is allowed is the factory's to say
  (:func:`make_optimizer` builds it).

  Raises:
    UsageError: for an unknown method or key, a repeated key, or a value of the wrong
      type, in one line naming it (and, for a key, listing the accepted ones).
  """
  head, colon, tail = spec.partition(":")
  name, at, lr_text = head.partition("@")
  try:
    method = methods.get(name)
  except ValueError as e:
    raise UsageError(str(e)) from None
  lr = _parse_lr(lr_text, spec) if at else None
  known = settable(method)
  settings: dict[str, Any] = {}
  for item in tail.split(",") if colon else ():
    key, eq, text = (part.strip() for part in item.partition("="))
    if not eq or not key:
      raise UsageError(f"optimizer {spec!r}: expected KEY=VALUE after ':', got {item!r}")
    if key in ("lr", "learning_rate"):
      key = "lr"
    elif key in method.settings:
      raise UsageError(
        f"{name}: {key} is fixed by the name ({key}={_text(method.settings[key])}); "
        f"it takes: lr, {', '.join(known)}"
      )
    elif key not in known:
      raise UsageError(f"{name} has no setting {key!r}; it takes: lr, {', '.join(known)}")
    if key in settings or (key == "lr" and lr is not None):
      raise UsageError(f"optimizer {spec!r} sets {key} twice")
    if key == "lr":
      lr = _parse_lr(text, spec)
    elif key == "mask":
      settings[key] = _pattern(name, text)
    else:
      settings[key] = _value(name, key, text, known[key])
  return Spec(name, lr, settings)


def parse_name(spec: str) -> tuple[str, Optional[float]]:
  """Splits ``NAME@LR`` (or any :func:`parse_spec` form) into the name and the learning
  rate (or ``None``)."""
  parsed = parse_spec(spec)
  return parsed.name, parsed.lr


def describe_settings(width: int = 86) -> str:
  """What a spec may set, for ``--help``: per method (methods alike on one line) its
  settable keyword arguments with their defaults, wrapped to ``width`` columns."""
  groups: dict[str, list[str]] = {}
  for name, method in methods.METHODS.items():
    line = " ".join(f"{k}={_text(v)}" for k, v in settable(method).items()) or "none"
    groups.setdefault(line, []).append(name)
  gal = methods.get("gal+sgd")
  flags = {"hidden": "--gal-hidden", "alpha": "--gal-alpha", "beta": "--gal-beta"}
  rest = [k for k in settable(gal) if k not in settable(methods.METHODS["sgd"]) | flags.keys()]
  line = f"{' '.join(flags)} (as {', '.join(flags.values())} set them) "
  line += " ".join(f"{k}={_text(settable(gal)[k])}" for k in rest) + ", and NAME's"
  groups[line] = ["gal+NAME"]
  intro = (
    "optimizer settings: NAME[@LR][:KEY=VALUE,...] sets the learning rate (@LR or lr=) and "
    "any of the keyword arguments below of the method's optax or optax_ext factory, which "
    "checks their values; e.g. sp:lr=0.1,sparsity=0.2 or gal+adamw:alpha=0.01,hidden=64/16,"
    "weight_decay=0.001 (hidden: widths separated by /; mask: a regular expression of the "
    "leaves' paths, Dense_0/kernel, that the method's mask selects). The defaults:"
  )
  wrapped = textwrap.wrap(intro, width, break_on_hyphens=False)
  for line, names in groups.items():
    wrapped += textwrap.wrap(
      f"{', '.join(names)}: {line}",
      width,
      initial_indent="  ",
      subsequent_indent="      ",
      break_on_hyphens=False,
    )
  return "\n".join(wrapped)


def known_names() -> list[str]:
  """The optimizer names ``--optimizers`` accepts, sorted, and the ``gal+<name>`` form."""
  return sorted(methods.METHODS) + ["gal+<name>"]


def _json_ready(value: Any) -> Any:
  if isinstance(value, (bool, int, float, str)) or value is None:
    return value
  if isinstance(value, (tuple, list)):
    return [_json_ready(v) for v in value]
  return repr(value)


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
  """Builds the optimizer ``spec`` names, with its settings.

  Args:
    spec: ``NAME``, ``NAME@LR``, ``gal+NAME`` or ``gal+NAME@LR``, each optionally
      followed by ``:KEY=VALUE,...`` (:func:`parse_spec`).
    schedule: Maps the base learning rate to a float or an optax schedule.
    lr: A learning rate for every optimizer that ``spec`` does not set itself.
    output_dim: The model's output width (GAL's regressor output).
    task: ``"classification"``, ``"regression"`` or ``"language"`` (GAL's default
      widths: (128, 4) for regression, (100, 32, 16) otherwise).
    gal: Settings of a GAL stage where ``spec`` does not set them.
    plateau: A reduce-on-plateau transformation to chain last, if any.

  Raises:
    UsageError: for an unknown name or setting, a value the factory refuses (its own
      message, after the spec), or a combination that cannot work.
  """
  parsed = parse_spec(spec)
  method = methods.get(parsed.name)
  base_lr = parsed.lr or lr or method.default_lr
  rate = schedule(base_lr)
  kwargs = {}
  if isinstance(method.need, steps.GalArgs):
    hidden = gal.hidden or ((128, 4) if task == "regression" else (100, 32, 16))
    kwargs = dict(output_dim=output_dim, hidden=hidden, alpha=gal.alpha, beta=gal.beta)
    kwargs["seed"] = gal.seed
  kwargs.update(parsed.settings)
  built = dict(kwargs)
  if isinstance(built.get("mask"), str):
    built["mask"] = path_mask(built["mask"])
  try:
    # One learning rate (or schedule) for GAL's tentative step and the optimizer after it.
    tx = method.build(rate, **built)
  except (ValueError, TypeError) as e:
    message = " ".join(str(e).split())
    raise UsageError(f"optimizer {spec!r}: {message}") from None
  need = method.need
  if plateau is not None:
    tx, need = optax.chain(tx, plateau), steps.WithValue(need)
  used = {**method.hyperparameters(), **method.settings, **kwargs}
  used = {k: _json_ready(v) for k, v in used.items() if v is not inspect.Parameter.empty}
  text = dataclasses.replace(parsed, lr=base_lr).text()
  return Optimizer(spec, tx, base_lr, need, rate, method.diagnostics, text, used)


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
