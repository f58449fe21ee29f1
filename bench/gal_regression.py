"""GAL paper, Table V: diabetes regression, an MLP (64-32) with Adam, with and without GAL.

The paper gives no protocol beyond the architecture and α = β = 0.001 with a
GAL regressor of widths (128, 4); ours, fixed before looking at test numbers:

- five seeds; seed ``s`` draws a random 80/20 train/test split of
  scikit-learn's 442 rows, the MLP's initialisation and the batch order;
- features and target standardised with training statistics; errors reported
  in the original units;
- Adam, batch 32, mean squared error; learning rate and epochs chosen per
  method and seed from the same grid (lr ∈ {1e-4, 3e-4, 1e-3} × epochs ∈
  {50, 150}) on a validation split (20% of the training rows), then retrained
  on the whole training split, so the baseline is tuned exactly as carefully as
  GAL;
- a plain least-squares linear regression on the same splits, to show whether
  the MLP baseline was trained well.

Run: ``python -m bench.gal_regression [--quick]`` (quick: 3 seeds, a 2-point grid).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

import optax_ext
from flax_models import MLP

RESULTS = os.path.join(os.path.dirname(__file__), "results")
PAPER = {"baseline": (44.38, 0.78), "gal": (41.62, 0.30)}


def split(x, y, seed, frac=0.2):
  perm = np.random.default_rng(seed).permutation(len(x))
  n_test = int(round(frac * len(x)))
  return x[perm[n_test:]], y[perm[n_test:]], x[perm[:n_test]], y[perm[:n_test]]


def train_mlp(x, y, use_gal, lr, epochs, seed, batch=32):
  model = MLP(features=(64, 32), out_features=1, activation=nn.relu)
  params = model.init(jax.random.key(seed), x[:1])["params"]
  base = optax.adam(lr)
  tx = (
    optax.chain(
      optax_ext.gal(1, hidden=(128, 4), alpha=1e-3, beta=1e-3, learning_rate=lr, seed=seed), base
    )
    if use_gal
    else base
  )
  state = tx.init(params)
  steps = len(x) // batch
  xj, yj = jnp.asarray(x), jnp.asarray(y)

  def step(carry, idx):
    params, state = carry
    xb, yb = xj[idx], yj[idx]
    loss = lambda z: jnp.mean((z - yb) ** 2)
    fwd = lambda p: model.apply({"params": p}, xb)
    if use_gal:
      extra = optax_ext.gal_extra_args(fwd, params, loss)
      updates, state = tx.update(None, state, params, **extra)
    else:
      grads = jax.grad(lambda p: loss(fwd(p)))(params)
      updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  @jax.jit
  def epoch(carry, key):
    perm = jax.random.permutation(key, len(x))[: steps * batch].reshape(steps, batch)
    return jax.lax.scan(step, carry, perm)[0]

  carry = (params, state)
  key = jax.random.key(seed + 1000)
  for e in range(epochs):
    carry = epoch(carry, jax.random.fold_in(key, e))
  params = carry[0]
  return lambda xt: np.asarray(model.apply({"params": params}, jnp.asarray(xt)))


def metrics(pred, y):
  err = pred[:, 0] - y[:, 0]
  mse = float(np.mean(err**2))
  return {"mae": float(np.mean(np.abs(err))), "mse": mse, "r2": 1.0 - mse / float(np.var(y[:, 0]))}


def run_seed(seed, grid):
  d = load_diabetes()
  x, y = d.data.astype(np.float32), d.target.astype(np.float32)[:, None]
  x_tr, y_tr, x_te, y_te = split(x, y, seed)
  out = {"linear": metrics(LinearRegression().fit(x_tr, y_tr).predict(x_te), y_te)}
  mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
  ymu, ysd = float(y_tr.mean()), float(y_tr.std())
  xs = lambda a: (a - mu) / sd
  ys = lambda a: (a - ymu) / ysd
  x_fit, y_fit, x_val, y_val = split(x_tr, y_tr, seed + 100)
  for name, use_gal in (("baseline", False), ("gal", True)):
    best = None
    for lr, epochs in grid:
      predict = train_mlp(xs(x_fit), ys(y_fit), use_gal, lr, epochs, seed)
      val = metrics(predict(xs(x_val)) * ysd + ymu, y_val)["mse"]
      if best is None or val < best[0]:
        best = (val, lr, epochs)
    _, lr, epochs = best
    predict = train_mlp(xs(x_tr), ys(y_tr), use_gal, lr, epochs, seed)
    out[name] = {**metrics(predict(xs(x_te)) * ysd + ymu, y_te), "lr": lr, "epochs": epochs}
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args(argv)
  seeds = range(3) if args.quick else range(5)
  grid = (
    [(3e-4, 50), (1e-3, 50)]
    if args.quick
    else list(itertools.product((1e-4, 3e-4, 1e-3), (50, 150)))
  )
  runs = []
  for s in seeds:
    runs.append(run_seed(s, grid))
    print(
      f"seed {s}: " + ", ".join(f"{k} MAE {v['mae']:.2f}" for k, v in runs[-1].items()), flush=True
    )
  summary = {}
  for name in ("linear", "baseline", "gal"):
    summary[name] = {
      m: (
        float(np.mean([r[name][m] for r in runs])),
        float(np.std([r[name][m] for r in runs], ddof=1)),
      )
      for m in ("mae", "mse", "r2")
    }
  tests = {
    m: stats.ttest_ind([r["gal"][m] for r in runs], [r["baseline"][m] for r in runs])
    for m in ("mae", "mse", "r2")
  }
  os.makedirs(RESULTS, exist_ok=True)
  tag = "quick" if args.quick else "full"
  with open(os.path.join(RESULTS, f"gal_regression_{tag}.json"), "w") as f:
    json.dump(
      {"runs": runs, "summary": summary, "ttest_p": {m: float(t.pvalue) for m, t in tests.items()}},
      f,
      indent=2,
    )
  lines = [
    "## Diabetes regression (paper Table V)",
    "",
    f"Command: `python -m bench.gal_regression{' --quick' if args.quick else ''}`; "
    f"{len(list(seeds))} seeds, protocol in the script's docstring (random 80/20 splits, "
    "lr and epochs chosen on a validation split for each method alike).",
    "",
    "| model | MAE | MSE | R² | paper MAE |",
    "|---|---|---|---|---|",
  ]
  for name, label in (
    ("linear", "linear regression"),
    ("baseline", "MLP 64-32, Adam"),
    ("gal", "MLP 64-32, Adam + GAL"),
  ):
    s = summary[name]
    paper = PAPER.get(name)
    lines.append(
      f"| {label} | {s['mae'][0]:.2f} ± {s['mae'][1]:.2f} | {s['mse'][0]:.0f} ± "
      f"{s['mse'][1]:.0f} | {s['r2'][0]:.3f} ± {s['r2'][1]:.3f} | "
      f"{f'{paper[0]} ± {paper[1]}' if paper else '-'} |"
    )
  p_mae = float(tests["mae"].pvalue)
  diff = summary["gal"]["mae"][0] - summary["baseline"]["mae"][0]
  lines += [
    "",
    f"Two-sample t-test, GAL vs baseline: MAE p = {p_mae:.3f}, MSE p = "
    f"{float(tests['mse'].pvalue):.3f}, R² p = {float(tests['r2'].pvalue):.3f}. GAL's mean MAE "
    f"is {abs(diff):.2f} {'lower' if diff < 0 else 'higher'} than the baseline's. The paper "
    f"reports 2.76 lower (44.38 → 41.62). "
    + (
      "The difference is not significant here (p ≥ 0.05): the paper's improvement is not "
      "reproduced under this protocol."
      if p_mae >= 0.05
      else "The difference is significant at p < 0.05."
    ),
    "",
    "Chosen (lr, epochs) per seed: "
    + "; ".join(
      f"baseline {r['baseline']['lr']:g}/{r['baseline']['epochs']}, GAL "
      f"{r['gal']['lr']:g}/{r['gal']['epochs']}"
      for r in runs
    )
    + ".",
  ]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(RESULTS, f"gal_regression_{tag}.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
