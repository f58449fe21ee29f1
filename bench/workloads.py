"""The workloads of the optimizer comparison (``python -m bench.compare``), declared in one place.

A workload is a model, a data set, a loss (the task's: cross-entropy, or mean squared
error), a target on one test metric and a step budget. Each has three sizes: ``quick`` (a smoke
run of the whole study on a 2-core CPU, minutes), ``medium`` (a study that can separate
methods on that CPU in about three hours: digits and diabetes at their full budgets,
Fashion-MNIST on 8,000 training images and the whole test set, the LM at two blocks on
4,096 windows) and ``full`` (the protocol to run on a GPU).
The validation split that tuning selects on is carved from the training data
(:meth:`Workload.views`); the test split is read only by the re-runs on fresh seeds.

- ``digits_cnn``: the SP paper's MNIST CNN (Yong et al. 2024, Table I) on scikit-learn's
  8×8 digits.
- ``fashion_cnn``: the INSGD paper's 4-conv CNN *with* BatchNorm (Atici et al., Table 2)
  on a Fashion-MNIST subset, at ordinary learning rates.
- ``fashion_nobn_highlr``: the same CNN *without* BatchNorm at high learning rates, the
  robustness setting of the INSGD paper's Tables 6-7: every optimizer draws its learning
  rate from its own high band (:mod:`bench.spaces`).
- ``diabetes_mlp``: the GAL paper's diabetes regression (Luo et al. 2022, Table V): an
  MLP 64-32 with ReLU, mean squared error.
- ``text_lm``: the byte-level transformer LM (:mod:`flax_models.transformer`) on the
  default text corpus (:mod:`train.text`), small.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

__all__ = ["Size", "WORKLOADS", "Workload", "get"]

BOTH = ("warmup_cosine", "constant")  # the constant rate as a second arm, where it is cheap


@dataclasses.dataclass(frozen=True)
class Size:
  """A step budget and the data it runs on.

  Attributes:
    epochs: Epochs of the training split (the budget is ``epochs × steps per epoch``).
    batch_size: Examples per step.
    target: The test metric a run must reach to count as arrived.
    train_size: Training examples (before the validation split is carved), or all.
    test_size: Test (and, for text, validation) examples, or all.
    evals: Evaluations per run (steps to target are read at these).
    model_kw: Fields of the model that differ between sizes, as ``(name, value)`` pairs.
    schedules: The learning-rate schedules the study runs at this size, each a separate
      arm (:func:`train.registry.make_schedule` kinds); the first is the main one.
  """

  epochs: int
  batch_size: int
  target: float
  train_size: Optional[int] = None
  test_size: Optional[int] = None
  evals: int = 8
  model_kw: tuple = ()
  schedules: tuple = ("warmup_cosine",)


@dataclasses.dataclass(frozen=True)
class Workload:
  """A model + data + loss + target metric + step budget.

  Attributes:
    name: Identifier (command line, file names).
    title: One line for the report.
    dataset: A :func:`train.data.load_dataset` name.
    model: Builds the Flax module from the output width.
    metric: The test metric: ``accuracy``, ``mse`` or ``bits_per_byte``.
    lr_band: ``"normal"`` or ``"high"``: which learning-rate band every optimizer draws from.
    sizes: ``{"quick": Size, "medium": Size, "full": Size}``.
    val_fraction: Share of the training split held out for validation (text has its own).
    context: Window length for text.
    paper: What the papers claimed on this kind of task, for the report.
  """

  name: str
  title: str
  dataset: str
  model: Callable[[int], Any]
  metric: str
  sizes: dict
  lr_band: str = "normal"
  val_fraction: float = 0.2
  context: int = 64
  paper: str = ""

  def build_model(self, out: int, size: Size):
    """The Flax module for ``out`` outputs at ``size``."""
    return self.model(out, **dict(size.model_kw))

  @property
  def higher_is_better(self) -> bool:
    return self.metric == "accuracy"

  def reached(self, value: Optional[float], target: float) -> bool:
    if value is None or not np.isfinite(value):
      return False
    return value >= target if self.higher_is_better else value <= target

  def load(self, size: Size):
    """The data set, cut to ``size``."""
    from train import data as data_lib

    ds = data_lib.load_dataset(self.dataset, context=self.context)
    return ds.subset(size.train_size, size.test_size)

  def views(self, size: Size) -> tuple[Any, Any]:
    """``(tuning, final)``: the tuning view trains on the training split less a validation
    split and evaluates on that validation split (as its ``test``); the final view trains
    on the whole training split and evaluates on the test split."""
    ds = self.load(size)
    if ds.x_val is not None:  # text: the corpus has its own validation bytes
      n = size.test_size
      tune = dataclasses.replace(ds, x_test=ds.x_val[:n], y_test=ds.y_val[:n])
      return tune, ds
    n_val = int(round(len(ds.x_train) * self.val_fraction))
    if n_val < 1 or n_val >= len(ds.x_train):
      raise ValueError(f"{self.name}: cannot carve a validation split from {len(ds.x_train)} rows")
    tune = dataclasses.replace(
      ds,
      x_train=ds.x_train[:-n_val],
      y_train=ds.y_train[:-n_val],
      x_test=ds.x_train[-n_val:],
      y_test=ds.y_train[-n_val:],
    )
    return tune, ds


def _model(name: str, **kw) -> Callable[..., Any]:
  def build(out: int, **size_kw):
    from flax_models import get_model

    return get_model(name, out, **{**kw, **size_kw})

  return build


def _mlp(out: int):
  import flax.linen as nn

  from flax_models import MLP

  return MLP(features=(64, 32), out_features=out, activation=nn.relu)


WORKLOADS: dict[str, Workload] = {
  w.name: w
  for w in (
    Workload(
      "digits_cnn",
      "SP paper's CNN on scikit-learn digits",
      "digits",
      _model("mnist_cnn"),
      "accuracy",
      {
        "quick": Size(epochs=4, batch_size=64, target=0.95, evals=6),
        "medium": Size(epochs=15, batch_size=64, target=0.97, schedules=BOTH),
        "full": Size(epochs=15, batch_size=64, target=0.97, schedules=BOTH),
      },
      paper="SP paper (Fig. 4, MNIST, this CNN, 15 epochs): SP 99.1 % and SP + Nesterov 99.2 % "
      "test accuracy, above SGD, SGD + Nesterov and Adam.",
    ),
    Workload(
      "fashion_cnn",
      "INSGD paper's 4-conv CNN with BatchNorm on a Fashion-MNIST subset",
      "fashion_mnist",
      _model("insgd_cnn_bn"),
      "accuracy",
      {
        "quick": Size(
          epochs=3, batch_size=64, target=0.72, train_size=1024, test_size=1000, evals=6
        ),
        "medium": Size(epochs=3, batch_size=128, target=0.84, train_size=8000, evals=6),
        "full": Size(epochs=10, batch_size=128, target=0.85, train_size=20000, test_size=10000),
      },
      paper="AngularGrad paper (Tables 1-2, CIFAR-10/100, ResNets and others): AngularGrad "
      "cos/tan best or second best in almost all networks, against SGDM, Adam and AdamW; "
      "INSGD paper (Table 6, this CNN with BatchNorm on CIFAR-10): INSGD-ℓ1/ℓ2 above SGD "
      "at the same initial learning rates.",
    ),
    Workload(
      "fashion_nobn_highlr",
      "INSGD paper's 4-conv CNN without BatchNorm, high learning rates, Fashion-MNIST subset",
      "fashion_mnist",
      _model("insgd_cnn"),
      "accuracy",
      {
        "quick": Size(
          epochs=3, batch_size=64, target=0.65, train_size=1024, test_size=1000, evals=6
        ),
        "medium": Size(epochs=3, batch_size=128, target=0.80, train_size=8000, evals=6),
        "full": Size(epochs=10, batch_size=128, target=0.80, train_size=20000, test_size=10000),
      },
      lr_band="high",
      paper="INSGD paper (Table 7, this CNN without BatchNorm on CIFAR-10, lr 0.1): SGD "
      "diverges (11.07 ± 2.74 %, chance) while INSGD-ℓ1 reaches 64.85 ± 10.98 % and "
      "INSGD-ℓ2 74.78 ± 7.84 %.",
    ),
    Workload(
      "diabetes_mlp",
      "GAL paper's diabetes regression, MLP 64-32",
      "diabetes",
      _mlp,
      "mse",
      {
        "quick": Size(epochs=60, batch_size=32, target=3200.0, evals=10),
        "medium": Size(epochs=400, batch_size=32, target=3000.0, evals=20, schedules=BOTH),
        "full": Size(epochs=400, batch_size=32, target=3000.0, evals=20, schedules=BOTH),
      },
      paper="GAL paper (Table V, diabetes, MLP 64-32 with Adam, α = β = 0.001): MSE 3226 → "
      "2962 and MAE 44.38 → 41.62 with GAL, p = 7e-5 over 5 seeds.",
    ),
    Workload(
      "text_lm",
      "byte-level transformer LM (width 64, context 64; 1 block quick, 2 medium and full) "
      "on the default corpus",
      "text",
      _model("transformer_lm", width=64, depth=2, heads=4, context=64),
      "bits_per_byte",
      {
        "quick": Size(
          epochs=1,
          batch_size=16,
          target=4.5,
          train_size=1024,
          test_size=128,
          evals=6,
          model_kw=(("depth", 1),),
        ),
        "medium": Size(epochs=2, batch_size=32, target=3.9, train_size=4096, test_size=512),
        "full": Size(epochs=4, batch_size=32, target=2.8, train_size=None, test_size=2048),
      },
      paper="None of the four papers trains a language model.",
    ),
  )
}


def get(name: str) -> Workload:
  """The workload called ``name``.

  Raises:
    ValueError: for an unknown name (the message lists the known ones).
  """
  if name not in WORKLOADS:
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
  return WORKLOADS[name]
