"""Training telemetry: window means, JSON lines against TensorBoard event files, bounded figures."""

import glob
import math

import flax.linen as nn
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from train import curves, diagnostic_plots, plots, registry, telemetry
from train import data as data_lib
from train.loop import RunResult, train_run
from train.methods import Diagnostic


class SmallCNN(nn.Module):
  """Two kernels and two biases: enough leaves for per-leaf diagnostics."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x)).reshape(x.shape[0], -1)
    return nn.Dense(10)(x)


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_digits(seed=0).subset(352, 64)  # 11 steps of 32 per epoch


def _sp(spe, total, schedule="exp"):
  sched = registry.make_schedule(schedule, spe, total, gamma=0.5)
  return registry.make_optimizer("sp", sched)


def _events(directory):
  acc = EventAccumulator(directory, size_guidance={"scalars": 0})
  acc.Reload()
  return acc


@pytest.fixture(scope="module")
def runs(digits, tmp_path_factory, fast_compile):
  """The same two-epoch SP run logged every step and every 4 steps, evaluated every 5."""
  out = {}
  for every in (1, 4):
    d = str(tmp_path_factory.mktemp(f"every{every}"))
    writer = telemetry.RunWriter(d)
    try:
      res = train_run(
        SmallCNN(),
        _sp(11, 22),
        digits,
        epochs=2,
        batch_size=32,
        seed=0,
        progress=False,
        log_every=every,
        eval_every=5,
        writer=writer,
      )
    finally:
      writer.close()
    out[every] = (d, res)
  return out


def test_event_files_hold_the_json_lines(runs):
  d, res = runs[4]
  records = telemetry.read_records(d)
  assert records == res.log
  train = [r for r in records if "train/loss" in r]
  evals = [r for r in records if "test/loss" in r]
  # windows end every 4 steps and at each epoch's end (11, 22); evaluations every 5 and there
  assert [r["step"] for r in train] == [4, 8, 11, 12, 16, 20, 22]
  assert [r["step"] for r in evals] == [5, 10, 11, 15, 20, 22]
  acc = _events(d)
  tags = set(acc.Tags()["scalars"])
  keys = {k for r in records for k in r} - set(telemetry.META)
  assert tags == keys and "sp/pruned/Conv_0/kernel" in tags and "train/lr" in tags
  for key in keys:
    events = acc.Scalars(key)
    want = [(r["step"], r[key]) for r in records if key in r]
    assert [e.step for e in events] == [s for s, _ in want], key
    np.testing.assert_array_equal(
      [e.value for e in events], np.float32([v for _, v in want]), err_msg=key
    )
  assert len(glob.glob(f"{d}/steps.csv")) == 1


def test_window_means_are_the_means_of_the_steps(runs):
  steps = {r["step"]: r for r in runs[1][1].log if "train/loss" in r}
  assert sorted(steps) == list(range(1, 23))
  windows = [r for r in runs[4][1].log if "train/loss" in r]
  start = 0
  for w in windows:
    inside = [steps[s] for s in range(start + 1, w["step"] + 1)]
    for key in ("train/loss", "train/accuracy", "sp/pruned_total", "sp/threshold/Dense_0/kernel"):
      want = np.mean([r[key] for r in inside])
      np.testing.assert_allclose(w[key], want, rtol=2e-6, err_msg=key)
    # exp schedule, gamma 0.5 per 11-step epoch: the rate the window's last step used
    assert w["train/lr"] == pytest.approx(0.05 * 0.5 ** ((w["step"] - 1) // 11))
    start = w["step"]
  epoch2 = runs[4][1].history[1]
  assert epoch2["train_loss"] == pytest.approx(
    np.mean([steps[s]["train/loss"] for s in range(12, 23)])
  )


def test_resumed_writer_drops_the_steps_after_the_checkpoint(tmp_path):
  d = str(tmp_path)
  w = telemetry.RunWriter(d).begin(0)
  for s in range(1, 11):
    w.write({"step": s, "epoch": s / 10, "time": float(s), "train/loss": float(s)})
  w.close()
  w = telemetry.RunWriter(d).begin(6)  # resumed from the checkpoint at step 6
  for s in (7, 8):
    w.write({"step": s, "epoch": s / 10, "time": float(s), "train/loss": -float(s)})
  w.close()
  want = [(s, float(s)) for s in range(1, 7)] + [(7, -7.0), (8, -8.0)]
  assert [(r["step"], r["train/loss"]) for r in telemetry.read_records(d)] == want
  events = _events(d).Scalars("train/loss")
  assert [(e.step, e.value) for e in events] == want


def test_default_log_every_gives_a_few_hundred_points():
  assert telemetry.default_log_every(50) == 1
  for total in (301, 10_000, 78_200):
    n = telemetry.default_log_every(total)
    assert telemetry.POINTS_PER_RUN // 2 <= math.ceil(total / n) <= telemetry.POINTS_PER_RUN


def test_smooth_is_a_debiased_moving_average():
  # weight 1/2: (1), (0.5·1 + 3)/(0.5 + 1), NaN skipped, (0.25·1 + 0.5·3 + 5)/(0.25 + 0.5 + 1)
  out = plots.smooth(np.array([1.0, 3.0, np.nan, 5.0]), span=2)
  np.testing.assert_allclose(out, [1.0, 3.5 / 1.5, 3.5 / 1.5, 6.75 / 1.75])


def _deep_records(leaves: int, steps: int, methods=("sp",)):
  """Records shaped like a deep model's: per-leaf SP (and other) signals over ``steps``."""
  rng = np.random.default_rng(0)
  names = [f"Block_{i}/Conv_{j}/kernel" for i in range(leaves // 2) for j in range(2)]
  out = []
  for s in range(1, steps + 1):
    r = {"step": s * 10, "epoch": s / 4, "time": float(s), "train/loss": 2.0 / s}
    if "sp" in methods:
      r.update({"sp/diagonal_fraction": 0.3, "sp/scalar_fraction": 0.7, "sp/binv_min": 0.1})
      r.update({"sp/binv_max": 3.0, "sp/pruned_total": 0.1, "sp/quantile_passes": 5.0})
      for i, n in enumerate(names):
        r[f"sp/pruned/{n}"] = 0.001 * i + 1e-4 * s
        r[f"sp/threshold/{n}"] = 10.0 ** -(i % 12) * rng.uniform(1, 2)
    if "gal" in methods:
      r.update({f"gal/{k}": rng.uniform() for k in ("used_adjusted", "remainder", "cosine")})
      r["gal/tentative_loss"] = 1.0
    if "insgd" in methods:
      for n in names:
        r[f"insgd/log_power/{n}"], r[f"insgd/step_scale/{n}"] = 3.0, 1 / 3
    out.append(r)
  return names, out


def _panels(fig):
  return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


@pytest.mark.parametrize("leaves", [56, 160])  # ResNet-20-like and ResNet-50-like depths
def test_diagnostics_figure_stays_bounded_on_deep_models(leaves):
  names, records = _deep_records(leaves, steps=40)
  fig = diagnostic_plots.diagnostics_figure("sp", records)
  try:
    axes = _panels(fig)
    assert len(axes) == 6 <= diagnostic_plots.MAX_PANELS  # 4 line panels, pruned and threshold maps
    titles = [ax.get_title() for ax in axes]
    assert titles[0].startswith("sp: damping case") and titles[1].startswith("sp: pruned fraction")
    pruned = next(ax for ax in axes if "pruned fraction per leaf" in ax.get_title())
    want = np.array([[0.001 * i + 1e-4 * s for s in range(1, 41)] for i in range(len(names))])
    np.testing.assert_allclose(pruned.collections[0].get_array().reshape(want.shape), want)
    threshold = next(ax for ax in axes if "threshold" in ax.get_title())
    assert type(threshold.collections[0].norm).__name__ == "LogNorm"  # spans 12 decades
  finally:
    plots.pyplot().close(fig)


def test_diagnostics_figure_caps_the_panels_of_several_methods():
  _, records = _deep_records(60, steps=5, methods=("sp", "gal", "insgd"))
  shown, left_out = diagnostic_plots.diagnostic_panels(diagnostic_plots.diagnostic_keys(records))
  assert len(shown) == diagnostic_plots.MAX_PANELS
  assert len(left_out) == 12 - diagnostic_plots.MAX_PANELS
  fig = diagnostic_plots.diagnostics_figure("three methods", records)
  try:
    assert len(_panels(fig)) == diagnostic_plots.MAX_PANELS
    assert "4 more signals" in fig.get_suptitle()
  finally:
    plots.pyplot().close(fig)


def test_diagnostics_figure_follows_the_description():
  # Grouping, titles, scales and order come from the description handed over; a signal
  # it does not name is drawn alone, last, under its own name.
  records = [
    {"step": s, "train/loss": 1.0, "m/a": 0.5, "m/b": 0.1 * s, "m/c": 10.0**-s, "m/odd": 2.0}
    for s in range(1, 6)
  ]
  described = (
    Diagnostic(("c",), "c, linear", "linear"),
    Diagnostic(("a", "b"), "a and b", "fraction", headline=True),
  )
  keys = diagnostic_plots.diagnostic_keys(records)
  shown, _ = diagnostic_plots.diagnostic_panels(keys, described)
  assert [(p.title, p.keys) for p in shown] == [
    ("m: a and b", ("m/a", "m/b")),
    ("m: c, linear", ("m/c",)),
    ("m: odd", ("m/odd",)),
  ]
  fig = diagnostic_plots.diagnostics_figure("m", records, described)
  try:
    ab, c, odd = _panels(fig)
    assert ab.get_ylim() == (-0.03, 1.03) and c.get_yscale() == "linear"  # c spans 4 decades
    undescribed = diagnostic_plots.diagnostic_panels(keys)[0]  # every method's descriptions
    assert {p.title for p in undescribed} == {"m: a", "m: b", "m: c", "m: odd"}
  finally:
    plots.pyplot().close(fig)


def test_curves_figure_in_steps_for_many_runs():
  runs = []
  for i in range(12):
    _, records = _deep_records(4, steps=300 if i % 2 else 3, methods=())
    for r in records:
      r["train/lr"] = 0.1 / r["step"]
    records += [{"step": 300, "epoch": 75.0, "time": 0.0, "test/loss": 0.5, "test/accuracy": 0.9}]
    runs.append(RunResult(f"opt{i}", [], {}, 0.0, 0, None, records))
  fig = curves.curves_figure(runs, "classification", "many")
  try:
    loss_ax, acc_ax, lr_ax = _panels(fig)[:3]
    assert loss_ax.get_xlabel() == "step" and loss_ax.get_yscale() == "log"
    assert lr_ax.get_title() == "learning rate"
    smoothed = loss_ax.get_lines()[0]  # run 0: 3 points, too few to smooth or draw faint
    np.testing.assert_allclose(smoothed.get_ydata(), [2.0, 1.0, 2.0 / 3])
    assert len(fig.legends[0].get_texts()) == 12
  finally:
    plots.pyplot().close(fig)
