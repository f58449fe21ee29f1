"""The optimizers of the comparison and their search spaces, declared in one place.

Every optimizer tunes its learning rate, log-uniform over a stated range (a ``normal``
band, and a ``high`` band for the robustness workload), and its method's own
hyperparameters over the ranges its paper gives:

- SP (Yong et al. 2024): sparsity σ, log-uniform on [0.01, 0.3] around the published 0.1
  (the paper states no range); SP + Nesterov with momentum 0.9 as the paper. SP's step is
  λ B⁻¹ g with B⁻¹ often at its floor 1/b_max, so the top of its learning-rate range is
  b_max times that of the SGD it damps (no momentum: the plain range; with Nesterov:
  SGD's), where its steps match SGD's largest.
- AngularGrad (Roy et al. 2022, Eq. 13): λ1 uniform on [0, 1] ("{λ1, λ2} ∈ [0, 1]",
  best ½), λ2 on [0.1, 1] (a floor of 0 would allow a zero step).
- INSGD (Atici et al.): the paper fixes ε = 0.01 and momentum 0.9 and varies only the
  learning rate (0.01-0.5).
- GAL (Luo et al. 2022, Sec. IV-F, Fig. 7): α log-uniform on [1e-4, 1e-2] (the range the
  paper found best), β log-uniform on [1e-3, 10] (the values it used, 0.001-10).
- Baselines: SGD with heavy-ball and with Nesterov momentum 0.9 (learning rate only),
  AdamW with its weight decay log-uniform on [1e-5, 1e-1].

Each optimizer is built from the training code's descriptions (:mod:`train.methods`):
its method's update (``build``) and what the update needs (``need``).
The hyperparameters enter through :func:`optax.inject_hyperparams`, so they are values
in the optimizer state rather than constants of the compiled step: every trial of one
optimizer on one workload compiles to the same program, which the persistent
compilation cache then serves (:mod:`bench.study`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Callable, Optional

import optax

import optax_ext

__all__ = ["CANDIDATES", "CLAIMS", "Candidate", "Claim", "Dim", "cli_spec", "get"]

SGD_LR = {"normal": (3e-3, 0.3), "high": (0.1, 0.5)}
PLAIN_LR = {"normal": (1e-2, 1.0), "high": (0.3, 1.5)}  # no momentum: steps 10x smaller
ADAM_LR = {"normal": (1e-4, 1e-2), "high": (1e-2, 5e-2)}
B_MAX = inspect.signature(optax_ext.sp).parameters["b_max"].default  # SP's damping floor: 1/b_max
SP_LR = {band: (lo, hi * B_MAX) for band, (lo, hi) in PLAIN_LR.items()}
SP_NESTEROV_LR = {band: (lo, hi * B_MAX) for band, (lo, hi) in SGD_LR.items()}
INSGD_LR = {"normal": (1e-2, 0.5), "high": (0.1, 0.5)}


@dataclasses.dataclass(frozen=True)
class Dim:
  """One searched hyperparameter: ``low``..``high``, log-uniform or uniform."""

  name: str
  low: float
  high: float
  log: bool = True

  def value(self, u: float) -> float:
    """The value at quantile ``u`` in [0, 1)."""
    if self.log:
      return float(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))
    return float(self.low + u * (self.high - self.low))

  def describe(self) -> str:
    return f"{self.name} ∈ [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One optimizer of the comparison.

  Attributes:
    name: Identifier (``momentum``, ``gal+adamw`` ...).
    entry: The :data:`train.methods.METHODS` entry whose update (or, for GAL, the
      update after GAL's stage) this is.
    baseline: A baseline (first in every table; the statistical tests compare with
      the best of them).
    lr: The learning-rate range per band, ``{"normal": (lo, hi), "high": (lo, hi)}``.
    dims: The method's own searched hyperparameters.
    factory: ``factory(entry_build, learning_rate, **hyperparameters)`` → the
      transformation, or None for the registry entry's own ``build(learning_rate)``.
    gal: GAL in front of the entry.
    paper: The paper the method comes from (``""`` for baselines).
    base: The baseline the method modifies (AngularGrad: AdamW; SP + Nesterov: Nesterov;
      INSGD: SGD with momentum; GAL: what it stands in front of), compared with it too;
      ``""`` for none (plain SP has no momentum, no baseline here is its base).
  """

  name: str
  entry: str
  lr: dict
  baseline: bool = False
  dims: tuple = ()
  factory: Optional[Callable[..., optax.GradientTransformation]] = None
  gal: bool = False
  paper: str = ""
  base: str = ""

  def space(self, band: str) -> tuple:
    """Every searched dimension, the learning rate first."""
    if band not in self.lr:
      raise ValueError(f"{self.name}: no learning-rate band {band!r}; known: {sorted(self.lr)}")
    return (Dim("learning_rate", *self.lr[band]),) + tuple(self.dims)

  def configs(self, units, band: str) -> list[dict]:
    """The hyperparameters at each row of unit-cube points ``units`` (n × dims)."""
    dims = self.space(band)
    return [{d.name: d.value(float(u)) for d, u in zip(dims, row)} for row in units]

  def build(self, config: dict, output_dim: int, task: str, seed: int = 0, schedule=None):
    """The :class:`train.registry.Optimizer` for ``config``.

    ``schedule`` maps the base learning rate to the rate of each step (a
    :func:`train.registry.make_schedule` result; None: constant). It is applied to
    the injected base rate, so every configuration still compiles to one program.
    """
    from train.methods import METHODS, with_gal
    from train.registry import Optimizer

    entry = METHODS[self.entry]
    need = entry.need
    schedule = schedule or (lambda lr: lr)
    if self.gal:
      from optax_ext.gal import gal_chain

      hidden = (128, 4) if task == "regression" else (100, 32, 16)

      def method(learning_rate, alpha, beta):
        return gal_chain(
          entry.build, learning_rate, output_dim, hidden=hidden, alpha=alpha, beta=beta, seed=seed
        )

      need = with_gal(entry).need
    elif self.factory is not None:
      method = functools.partial(self.factory, entry.build)
    else:
      method = lambda learning_rate: entry.build(learning_rate)  # noqa: E731

    def factory(learning_rate, **hyperparameters):
      return method(schedule(learning_rate), **hyperparameters)

    factory.__signature__ = inspect.signature(method)  # the names inject_hyperparams holds
    tx = optax.inject_hyperparams(factory)(**config)
    lr = config["learning_rate"]
    return Optimizer(self.name, tx, lr, need, schedule(lr))


def _sp(nesterov: bool):
  def factory(build, learning_rate, sparsity):
    del build  # the registry's sp / sp_nesterov, with σ searched
    if nesterov:
      return optax_ext.sp(learning_rate, sparsity=sparsity, momentum=0.9, nesterov=True)
    return optax_ext.sp(learning_rate, sparsity=sparsity)

  return factory


def _angular(method: str):
  def factory(build, learning_rate, lambda1, lambda2):
    del build  # the registry's angulargrad_<method>, with λ1, λ2 searched
    return optax_ext.angulargrad(learning_rate, method=method, lambda1=lambda1, lambda2=lambda2)

  return factory


def _adamw(build, learning_rate, weight_decay):
  del build  # the registry's adamw, with its decay searched
  return optax.adamw(learning_rate, weight_decay=weight_decay)


SPARSITY = Dim("sparsity", 0.01, 0.3)
LAMBDAS = (Dim("lambda1", 0.0, 1.0, log=False), Dim("lambda2", 0.1, 1.0, log=False))
GAL_DIMS = (Dim("alpha", 1e-4, 1e-2), Dim("beta", 1e-3, 10.0))
SP_PAPER = "SP (Yong et al. 2024)"
AG_PAPER = "AngularGrad (Roy et al. 2022)"
INSGD_PAPER = "INSGD (Atici et al.)"
GAL_PAPER = "GAL (Luo et al. 2022)"


@dataclasses.dataclass(frozen=True)
class Claim:
  """What a paper claimed, the comparisons it made, and our workloads of its kind of task.

  Attributes:
    text: The claim, in its own setting, for the report.
    pairs: ``(method, baseline)`` pairs of candidate names: the method was claimed better.
    workloads: The workloads the claim is checked on.
  """

  text: str
  pairs: tuple
  workloads: tuple


def _pairs(methods, baselines) -> tuple:
  return tuple((m, b) for m in methods for b in baselines)


#: What each paper claimed, checked for its direction on the workloads of its kind of task.
CLAIMS = {
  SP_PAPER: Claim(
    "better generalisation than SGD, SGD + Nesterov and Adam on MNIST (its CNN, 99.1 % / "
    "99.2 % for SP / SP + Nesterov) and CIFAR-10 (MobileNetV2, ResNet-18/50)",
    _pairs(("sp", "sp_nesterov"), ("momentum", "nesterov", "adamw")),
    ("digits_cnn", "fashion_cnn"),
  ),
  AG_PAPER: Claim(
    "best or second-best accuracy in almost all CIFAR-10/100 networks against SGDM, Adam, "
    "AdamW and others (Tables 1-2)",
    _pairs(("angulargrad_cos", "angulargrad_tan"), ("momentum", "adamw")),
    ("fashion_cnn", "digits_cnn"),
  ),
  INSGD_PAPER: Claim(
    "higher accuracy than SGD on CIFAR-10 and ImageNet, and training where SGD diverges at "
    "large learning rates without BatchNorm (Tables 6-7)",
    _pairs(("insgd_l1", "insgd_l2"), ("momentum",)),
    ("fashion_cnn", "fashion_nobn_highlr"),
  ),
  GAL_PAPER: Claim(
    "lower error in front of SGD, Lookahead and AdaBound on CIFAR and ImageNet, and on "
    "regression (Table V, diabetes MSE 3226 → 2962 with Adam)",
    (("gal+momentum", "momentum"), ("gal+adamw", "adamw")),
    ("diabetes_mlp", "fashion_cnn"),
  ),
}

CANDIDATES: dict[str, Candidate] = {
  c.name: c
  for c in (
    Candidate("momentum", "momentum", SGD_LR, baseline=True),
    Candidate("nesterov", "nesterov", SGD_LR, baseline=True),
    Candidate(
      "adamw",
      "adamw",
      ADAM_LR,
      baseline=True,
      dims=(Dim("weight_decay", 1e-5, 0.1),),
      factory=_adamw,
    ),
    Candidate(
      "angulargrad_cos",
      "angulargrad_cos",
      ADAM_LR,
      dims=LAMBDAS,
      factory=_angular("cos"),
      paper=AG_PAPER,
      base="adamw",
    ),
    Candidate(
      "angulargrad_tan",
      "angulargrad_tan",
      ADAM_LR,
      dims=LAMBDAS,
      factory=_angular("tan"),
      paper=AG_PAPER,
      base="adamw",
    ),
    Candidate("sp", "sp", SP_LR, dims=(SPARSITY,), factory=_sp(False), paper=SP_PAPER),
    Candidate(
      "sp_nesterov",
      "sp_nesterov",
      SP_NESTEROV_LR,
      dims=(SPARSITY,),
      factory=_sp(True),
      paper=SP_PAPER,
      base="nesterov",
    ),
    Candidate("insgd_l1", "insgd_l1", INSGD_LR, paper=INSGD_PAPER, base="momentum"),
    Candidate("insgd_l2", "insgd_l2", INSGD_LR, paper=INSGD_PAPER, base="momentum"),
    Candidate(
      "gal+momentum", "momentum", SGD_LR, dims=GAL_DIMS, gal=True, paper=GAL_PAPER, base="momentum"
    ),
    Candidate(
      "gal+adamw", "adamw", ADAM_LR, dims=GAL_DIMS, gal=True, paper=GAL_PAPER, base="adamw"
    ),
  )
}


def cli_spec(name: str, config: dict) -> str:
  """The configuration ``config`` of candidate ``name`` as ``python -m train --optimizers``
  takes it (:func:`train.registry.format_spec`, every value exact): each candidate is the
  training command's optimizer of its name with the searched keyword arguments set, so
  ``adamw`` at ``{"learning_rate": 0.001, "weight_decay": 0.01}`` is
  ``adamw:lr=0.001,weight_decay=0.01``."""
  from train.registry import format_spec

  rest = {k: v for k, v in config.items() if k != "learning_rate"}
  return format_spec(name, config.get("learning_rate"), rest)


def get(name: str) -> Candidate:
  """The optimizer called ``name``.

  Raises:
    ValueError: for an unknown name (the message lists the known ones).
  """
  if name not in CANDIDATES:
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(CANDIDATES)}")
  return CANDIDATES[name]
