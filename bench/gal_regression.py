"""GAL paper, Table V: diabetes regression, an MLP (64-32) with Adam, with and without GAL.

The paper fixes the MLP (64-32), the GAL regressor (128-4), α = β = 0.001, Adam
and 5 seeds, and gives nothing else. Our protocol, fixed before looking at any
test number:

- five seeds; seed ``s`` draws a random 80/20 train/test split of
  scikit-learn's 442 rows, the MLP's and the regressor's initialisation and the
  batch order;
- features and target standardised with training statistics; errors reported
  in the original units;
- Adam, batch 32 (the last partial batch dropped), mean squared error, ReLU;
- learning rate and number of epochs chosen per method and seed from the same
  grid, lr ∈ {3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2} × epochs ∈ {25, 50, 100, 200,
  400, 800},
  by the MSE on a validation split (20% of the training rows, a fixed permutation
  per seed); then trained on the whole training split with the chosen lr and
  read at the chosen epoch. Training is deterministic, so a run's state at epoch
  ``e`` is what training for ``e`` epochs gives; the test split is never used for
  a choice, and the baseline is tuned exactly as GAL is;
- beside the paper's setting, GAL with α = 0.01, β = 1 (its CIFAR settings) as a
  sensitivity check;
- a least-squares linear regression on the same splits, to show whether the MLP
  baseline was trained well.

Training is the training loop's own step (``train.loop.make_train_step``) with the
registry's ``gal+adam`` (``optax_ext.gal_chain``) and Adam.

Run: ``python -m bench.gal_regression [--quick]`` (quick: 3 seeds, lr ∈ {1e-3,
1e-2}, epochs ∈ {50, 200}).
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from bench import harness
from flax_models import MLP
from train import registry
from train.loop import init_state, make_train_step

STEM = "gal_regression"
PAPER = {
  "baseline": {"mae": (44.3832, 0.7752), "mse": (3226.0238, 38.8293), "r2": (0.3821, 0.0074)},
  "gal": {"mae": (41.6186, 0.2989), "mse": (2961.5520, 29.4521), "r2": (0.4327, 0.0056)},
}
METHODS = {  # name -> GAL (alpha, beta), or None for plain Adam
  "baseline": None,
  "gal": (1e-3, 1e-3),
  "gal_a0.01_b1": (1e-2, 1.0),
}
SHORT = {"gal": "GAL α=β=0.001", "gal_a0.01_b1": "GAL α=0.01, β=1"}
LABELS = {
  "linear": "linear regression",
  "baseline": "MLP 64-32, Adam",
  "gal": "MLP 64-32, Adam + GAL (α=β=0.001, paper)",
  "gal_a0.01_b1": "MLP 64-32, Adam + GAL (α=0.01, β=1)",
}
BATCH = 32
GRIDS = {  # (learning rates, epochs) searched per method and seed
  "quick": ((1e-3, 1e-2), (50, 200)),
  "full": ((3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2), (25, 50, 100, 200, 400, 800)),
}


def split(n, seed, frac=0.2):
  perm = np.random.default_rng(seed).permutation(n)
  n_out = int(round(frac * n))
  return perm[n_out:], perm[:n_out]


LOGS = ("used_adjusted", "remainder", "cosine")


def _optimizer(method: str, lr: float, seed: int) -> registry.Optimizer:
  """Adam, or the registry's ``gal+adam`` with this method's GAL settings."""
  const = registry.make_schedule("constant", 1, 1)
  gal_hp = METHODS[method]
  if gal_hp is None:
    return registry.make_optimizer("adam", const, lr=lr, output_dim=1, task="regression")
  alpha, beta = gal_hp
  gal = registry.GalOptions(alpha=alpha, beta=beta, hidden=(128, 4), seed=seed + 1)
  return registry.make_optimizer("gal+adam", const, lr=lr, output_dim=1, task="regression", gal=gal)


def train(method, epochs, lr, seed, xj, yj, xe):
  """Trains with ``train.loop``'s step; per-epoch eval predictions and GAL's mean logs.

  Batches: a fresh permutation each epoch (the last partial batch dropped). Logs per
  epoch: the mean over its steps of GAL's used_adjusted, remainder and cosine, of
  whether the tentative loss equalled the loss, and of the training loss.
  """
  model = MLP(features=(64, 32), out_features=1, activation=nn.relu)
  opt = _optimizer(method, lr, seed)
  step = make_train_step(model, opt, "regression")
  state = init_state(model, opt.tx, xj[:1], seed)
  predict = jax.jit(lambda p, x: model.apply({"params": p}, x)[:, 0])
  steps = len(xj) // BATCH
  preds, logs = [], []
  for e in range(epochs):
    perm = jax.random.permutation(jax.random.fold_in(jax.random.key(seed + 1000), e), len(xj))
    sums = jnp.zeros(5)
    for idx in np.asarray(perm[: steps * BATCH]).reshape(steps, BATCH):
      state, m = step(state, xj[idx], yj[idx])
      if METHODS[method] is not None:
        same = (m["diag_gal/tentative_loss"] == m["loss"]).astype(jnp.float32)
        row = [m[f"diag_gal/{k}"] for k in LOGS] + [same, m["loss"]]
        sums = sums + jnp.stack([jnp.asarray(v, jnp.float32) for v in row])
    preds.append(predict(state.params, xe))
    logs.append(sums / steps)
  return np.asarray(jnp.stack(preds)), np.asarray(jnp.stack(logs))


def metrics(pred, y):
  err = pred - y
  mse = float(np.mean(err**2))
  return {"mae": float(np.mean(np.abs(err))), "mse": mse, "r2": 1.0 - mse / float(np.var(y))}


def run_seed(seed, lrs, epoch_grid):
  d = load_diabetes()
  x, y = d.data.astype(np.float32), d.target.astype(np.float32)
  tr, te = split(len(x), seed)
  x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
  out = {"linear": metrics(LinearRegression().fit(x_tr, y_tr).predict(x_te), y_te)}
  mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
  ymu, ysd = float(y_tr.mean()), float(y_tr.std())
  xs = lambda a: (a - mu) / sd
  ys = lambda a: ((a - ymu) / ysd)[:, None]
  fit, val = split(len(x_tr), seed + 100)
  run = lambda method, lr, x_, y_, xe_: train(  # noqa: E731
    method, max(epoch_grid), lr, seed, xs(x_), ys(y_), xs(xe_)
  )
  for method in METHODS:
    best = None
    for lr in lrs:
      preds, _ = run(method, lr, x_tr[fit], y_tr[fit], x_tr[val])
      preds = np.asarray(preds) * ysd + ymu
      for e in epoch_grid:
        v = metrics(preds[e - 1], y_tr[val])["mse"]
        if np.isfinite(v) and (best is None or v < best[0]):
          best = (v, lr, e)
    _, lr, e = best
    # Deterministic training: the state after epoch e of a longer run is the e-epoch model.
    preds, logs = run(method, lr, x_tr, y_tr, x_te)
    preds = np.asarray(preds) * ysd + ymu
    out[method] = {**metrics(preds[e - 1], y_te), "lr": lr, "epochs": e, "val_mse": best[0]}
    if METHODS[method] is not None:
      logs = np.asarray(logs)[:e]
      out[method]["per_epoch"] = {
        "used_adjusted": logs[:, 0].tolist(),
        "remainder": logs[:, 1].tolist(),
        "cosine": logs[:, 2].tolist(),
        "tentative_equals_loss": logs[:, 3].tolist(),
        "train_loss": logs[:, 4].tolist(),
      }
  return out


def plot(runs, summary, path):
  plt = harness.pyplot()
  names = ["linear", *METHODS]
  fig, axes = plt.subplots(1, 4, figsize=(16, 4))
  ax = axes[0]
  for i, name in enumerate(names):
    vals = [r[name]["mae"] for r in runs]
    ax.scatter(np.full(len(vals), i) + np.linspace(-0.12, 0.12, len(vals)), vals, s=18)
    ax.errorbar(i + 0.3, summary[name]["mae"][0], summary[name]["mae"][1], fmt="ks", ms=4)
  for name, color in (("baseline", "tab:orange"), ("gal", "tab:green")):
    m, s = PAPER[name]["mae"]
    ax.axhspan(m - s, m + s, color=color, alpha=0.25, label=f"paper {name}: {m:.2f} ± {s:.2f}")
  ax.set_xticks(
    range(len(names)), ["linear", "Adam", "Adam+GAL\n(paper α,β)", "Adam+GAL\n(α=.01,β=1)"]
  )
  ax.set_ylabel("test MAE (dots: seeds; square: mean ± sd)")
  ax.set_title("Diabetes, test MAE")
  lo, hi = ax.get_ylim()
  ax.set_ylim(lo, hi + 0.25 * (hi - lo))  # room for the legend above the points
  ax.legend(fontsize=7, loc="upper left")
  keys = [
    ("used_adjusted", "fraction of steps using g"),
    ("remainder", "|r| (mean per epoch)"),
    ("cosine", "cos(ṽ, ∂ℓ/∂z) (mean per epoch)"),
  ]
  for ax, (key, title) in zip(axes[1:], keys):
    for method, color in (("gal", "tab:green"), ("gal_a0.01_b1", "tab:red")):
      for j, r in enumerate(runs):
        ax.plot(
          r[method]["per_epoch"][key],
          color=color,
          alpha=0.6,
          lw=0.8,
          label=SHORT[method] if j == 0 else None,
        )
    ax.set_xlabel("epoch (final run, each seed)")
    ax.set_title(title)
    if key == "remainder":
      ax.set_yscale("log")
    ax.legend(fontsize=7)
  harness.savefig(fig, path)


def render(result: dict) -> str:
  runs, summary = result["runs"], result["summary"]
  names = ["linear", *METHODS]
  tests = {g: {m: _TTest(*v) for m, v in tt.items()} for g, tt in result["ttest"].items()}
  quick = "--quick" in result.get("command", "")
  lrs, epoch_grid = GRIDS["quick" if quick else "full"]
  lrs, epoch_grid = result.get("lrs", lrs), result.get("epoch_grid", epoch_grid)
  png = result.get("plot", f"gal_regression_{harness.tag(quick)}.png")
  minutes = result.get("minutes")
  lines = [
    "## Diabetes regression (paper Table V)",
    "",
    f"Command: `{result.get('command', 'python -m bench.gal_regression')}`"
    + (f" ({minutes:.1f} min)" if minutes else "")
    + f". Machine: {result.get('machine', 'not recorded')}. {len(runs)} seeds; protocol "
    "in the script's docstring: random 80/20 splits, standardised features and target, "
    "Adam with batch 32, lr ∈ {"
    + ", ".join(f"{v:g}" for v in lrs)
    + "} × epochs ∈ {"
    + ", ".join(map(str, epoch_grid))
    + "} chosen per method and seed on a validation split of the training rows.",
    "",
    "| model | MAE | MSE | R² |",
    "|---|---|---|---|",
  ]
  fmt = lambda v, d: f"{v[0]:.{d}f} ± {v[1]:.{d}f}"
  for n in names:
    s = summary[n]
    lines.append(f"| {LABELS[n]} | {fmt(s['mae'], 2)} | {fmt(s['mse'], 0)} | {fmt(s['r2'], 3)} |")
  for n in ("baseline", "gal"):
    p = PAPER[n]
    lines.append(
      f"| paper: {LABELS[n].split(' (')[0]} | {fmt(p['mae'], 2)} | {fmt(p['mse'], 0)} | "
      f"{fmt(p['r2'], 3)} |"
    )
  lines += [
    "",
    "Two-sample t-tests (Student, baseline vs GAL, as the paper's (t, p)):",
    "",
    "| GAL setting | MAE (t, p) | MSE (t, p) | R² (t, p) |",
    "|---|---|---|---|",
  ]
  for g, tt in tests.items():
    cells = " | ".join(f"({tt[m].statistic:.2f}, {tt[m].pvalue:.3g})" for m in ("mae", "mse", "r2"))
    lines.append(f"| {LABELS[g].split('GAL ')[1]} | {cells} |")
  paper_row = "(7.43, 7.34e-05) | (12.13, 1.97e-06) | (-12.14, 1.95e-06)"
  lines.append(f"| paper (α=β=0.001) | {paper_row} |")
  lines += [
    "",
    "Paired view (each seed shares split, initialisation and batch order across methods): "
    "test-MAE difference GAL − baseline per seed, and a paired t-test:",
    "",
  ]
  for g in ("gal", "gal_a0.01_b1"):
    diffs = np.array([r[g]["mae"] - r["baseline"]["mae"] for r in runs])
    paired = stats.ttest_rel([r[g]["mae"] for r in runs], [r["baseline"]["mae"] for r in runs])
    lines.append(
      f"- {SHORT[g]}: "
      + ", ".join(f"{d:+.3f}" for d in diffs)
      + f" (mean {diffs.mean():+.3f}; paired t = {paired.statistic:.2f}, p = {paired.pvalue:.3g})"
    )
  d_mae = summary["gal"]["mae"][0] - summary["baseline"]["mae"][0]
  p_mae = float(tests["gal"]["mae"].pvalue)
  gal_logs = [r["gal"]["per_epoch"] for r in runs]
  unchanged = float(np.mean([np.mean(p["tentative_equals_loss"]) for p in gal_logs]))
  used = float(np.mean([np.mean(p["used_adjusted"]) for p in gal_logs]))
  r_med = float(np.median(np.concatenate([p["remainder"] for p in gal_logs])))
  ulp = float(np.median([np.spacing(np.float32(v)) for p in gal_logs for v in p["train_loss"]]))
  eta_t = 1e-3 * float(np.median([r["gal"]["lr"] for r in runs]))
  lines += [
    "",
    f"With the paper's α = β = 0.001, GAL's mean test MAE is {abs(d_mae):.2f} "
    f"{'lower' if d_mae < 0 else 'higher'} than the baseline's (p = {p_mae:.3g}); the paper "
    "reports 2.77 lower with p = 7e-5. "
    + (
      "**The paper's claim does not hold here**: the difference is not significant."
      if p_mae >= 0.05 or d_mae >= 0
      else "The improvement is significant here too."
    ),
    f"GAL used the adjusted gradient on {100 * used:.0f}% of steps. With the chosen "
    f"learning rates η̃ = βη ≈ {eta_t:.0e}; the tentative loss equalled the loss exactly "
    f"(in float32) on {100 * unchanged:.0f}% of steps, and the median per-epoch |r| "
    f"({r_med:.1e}) is of the order of the float32 spacing at the training loss "
    f"({ulp:.1e}): the regressor is trained on a remainder dominated by rounding.",
    f"The paper's baseline (R² {PAPER['baseline']['r2'][0]:.2f}) is well below a linear "
    f"regression on the same data (R² {summary['linear']['r2'][0]:.2f} here, MAE "
    f"{summary['linear']['mae'][0]:.2f}); our tuned MLP baseline reaches R² "
    f"{summary['baseline']['r2'][0]:.2f} (MAE {summary['baseline']['mae'][0]:.2f}). "
    "Test-split differences between seeds (sd of the MAE) dwarf any method difference.",
    "",
    f"![diabetes: test MAE per seed and GAL's logged quantities]({png})",
    "",
    "Chosen (lr, epochs) per seed: "
    + "; ".join(", ".join(f"{n} {r[n]['lr']:g}/{r[n]['epochs']}" for n in METHODS) for r in runs)
    + ".",
  ]
  return "\n".join(lines)


class _TTest:
  """A (statistic, p-value) pair read back from JSON."""

  def __init__(self, statistic, pvalue):
    self.statistic, self.pvalue = statistic, pvalue


def main(argv=None) -> dict:
  ap = harness.parser(__doc__, "3 seeds, lr in {1e-3, 1e-2}, epochs in {50, 200}")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  seeds = range(3 if args.quick else 5)
  lrs, epoch_grid = GRIDS[harness.tag(args.quick)]
  runs = []
  for s in seeds:
    runs.append(run_seed(s, lrs, epoch_grid))
    print(
      f"seed {s}: "
      + ", ".join(f"{k} MAE {v['mae']:.2f}" for k, v in runs[-1].items())
      + f" ({time.perf_counter() - t0:.0f} s)",
      flush=True,
    )
  names = ["linear", *METHODS]
  summary = {
    n: {
      m: (float(np.mean([r[n][m] for r in runs])), float(np.std([r[n][m] for r in runs], ddof=1)))
      for m in ("mae", "mse", "r2")
    }
    for n in names
  }
  tests = {
    g: {
      m: stats.ttest_ind([r["baseline"][m] for r in runs], [r[g][m] for r in runs])
      for m in ("mae", "mse", "r2")
    }
    for g in ("gal", "gal_a0.01_b1")
  }
  tag = harness.tag(args.quick)
  png = f"gal_regression_{tag}.png"
  plot(runs, summary, png)
  result = {
    "command": harness.command("bench.gal_regression", args.quick),
    "machine": harness.machine_description(),
    "lrs": list(lrs),
    "epoch_grid": list(epoch_grid),
    "minutes": (time.perf_counter() - t0) / 60,
    "plot": png,
    "runs": runs,
    "summary": summary,
    "ttest": {
      g: {m: [float(t.statistic), float(t.pvalue)] for m, t in tt.items()}
      for g, tt in tests.items()
    },
  }
  md = harness.write(f"{STEM}_{tag}", result, render)
  print(md)
  return result


if __name__ == "__main__":
  main()
