"""The "Which optimizer, when" report of :mod:`bench.compare`, from its JSON alone.

One table per workload (baselines first) under the main schedule, and a second table per
workload where the constant rate ran as a second arm; per paper, whether the direction of
its claim holds in our runs; performance profiles over workloads (Dolan & Moré 2002: for
each optimizer the share of workloads on which its cost is within a factor τ of the best
optimizer's; a miss costs infinity); the sensitivity of each method to its learning rate
(every trial's validation metric); and a summary generated from the numbers.
"""

from __future__ import annotations

import math
import os

import numpy as np

from bench import harness

__all__ = ["ALPHA", "plots", "render", "verdict"]

ALPHA = 0.05  # family-wise significance level of the verdicts (Holm-adjusted p-values)
METRIC = {"accuracy": "test accuracy (%)", "mse": "test MSE", "bits_per_byte": "test bits/byte"}
SETTING = {
  "quick": "a smoke run: its seeds can show only large differences",
  "medium": "sized to separate methods on a 2-core CPU in about three hours",
  "full": "the workloads' full budgets",
}
SCHEDULE = {
  "warmup_cosine": "linear warm-up over the first 5 % of steps, then cosine decay to 0",
  "constant": "a constant learning rate",
}


def _n(k: int, noun: str) -> str:
  return f"{k} {noun}" + ("" if k == 1 else "s")


def _scale(metric: str) -> float:
  return 100.0 if metric == "accuracy" else 1.0


def _num(v, metric: str, sign: bool = False) -> str:
  if v is None or not math.isfinite(v):
    return "–"
  return f"{_scale(metric) * v:{'+' if sign else ''}.{0 if metric == 'mse' else 2}f}"


def _cfg(cfg: dict | None) -> str:
  if not cfg:
    return "–"
  short = {"learning_rate": "lr", "weight_decay": "wd", "sparsity": "σ", "lambda1": "λ1"}
  short.update({"lambda2": "λ2", "alpha": "α", "beta": "β"})
  return ", ".join(f"{short.get(k, k)} {v:.3g}" for k, v in cfg.items())


def _reach(values: list) -> str:
  hit = [v for v in values if v is not None]
  if not values:
    return "–"
  if not hit:
    return f"miss {len(values)}/{len(values)}"
  miss = len(values) - len(hit)
  return f"{np.median(hit):.0f}" + (f" (miss {miss}/{len(values)})" if miss else "")


def _seconds(values: list) -> str:
  hit = [v for v in values if v is not None]
  return f"{np.median(hit):.2f}" if hit else "–"


def verdict(test: dict | None, higher: bool) -> str:
  """``helped``, ``hurt`` or ``no clear difference`` (``–`` when not compared), from the
  Holm-adjusted p-value of a comparison at level :data:`ALPHA`."""
  if not test or test.get("delta") is None:
    return "–"
  p = test.get("p_holm")
  if p is not None and p < ALPHA:
    return "helped" if (test["delta"] > 0) == higher else "hurt"
  return "no clear difference"


def _cmp(test: dict | None, metric: str, higher: bool, name: bool = False) -> str:
  """``Δ, p, verdict`` of one comparison (the baseline's name first with ``name``)."""
  if not test:
    return "–"
  p = "–" if test.get("p_holm") is None else f"{test['p_holm']:.2g}"
  head = f"{test['against']}: " if name else ""
  return f"{head}{_num(test['delta'], metric, sign=True)}, {p}, {verdict(test, higher)}"


def _order(table: dict) -> list[str]:
  rows = table["optimizers"]
  return [n for n in rows if rows[n]["baseline"]] + [n for n in rows if not rows[n]["baseline"]]


def _test_cell(r: dict, m: str) -> str:
  if r["mean"] is None:
    cell = "–"
  else:
    cell = _num(r["mean"], m) + (f" ± {_num(r['ci'], m)}" if r.get("ci") is not None else "")
  k = r["seeds_diverged"]
  return cell + (f" ({k}/{len(r['test'])} seeds diverged)" if k else "")


def _trials_cell(r: dict) -> str:
  parts = [str(r["trials"])]
  if r.get("widened"):
    parts.append(f"{r['widened']} widened")
  if r["trials_diverged"]:
    parts.append(f"{r['trials_diverged']} diverged")
  return parts[0] + (f" ({', '.join(parts[1:])})" if parts[1:] else "")


def _table(name: str, t: dict, tag: str) -> list[str]:
  m, hi = t["metric"], t["higher_is_better"]
  rows = t["optimizers"]
  b = t["budget"]
  lines = [
    f"## {name}: {t['title']}",
    "",
    f"From the **{tag}** setting, under {SCHEDULE.get(t['schedule'], t['schedule'])}. Target: "
    f"{METRIC[m]} {'≥' if hi else '≤'} {_num(t['target'], m)}; budget "
    f"{_n(b['epochs'], 'epoch')} of batch {b['batch_size']}"
    + (f" on {b['train_size']:,} training rows" if b["train_size"] else "")
    + f"; learning rates from each optimizer's {t['lr_band']} band. Best baseline (chosen on "
    f"validation): **{t['best_baseline'] or 'none'}**. Holm's correction over "
    f"{_n(t['comparisons'], 'comparison')} on this workload.",
    "",
    f"| optimizer | selected config | trials | val | {METRIC[m]}, mean ± 95 % CI "
    "| steps to target | s to target | vs best baseline: Δ, p, verdict | vs own base |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for n in _order(t):
    r = rows[n]
    edge = f" ⚑ {', '.join(r['edges'])}" if r.get("edges") else ""
    lines.append(
      f"| {f'**{n}**' if r['baseline'] else n} | {_cfg(r['best_config'])}{edge} "
      f"| {_trials_cell(r)} | {_num(r['val'], m)} | {_test_cell(r, m)} "
      f"| {_reach(r['steps_to_target'])} | {_seconds(r['seconds_to_target'])} "
      f"| {'baseline' if r['baseline'] else _cmp(r.get('best'), m, hi)} "
      f"| {_cmp(r.get('base'), m, hi, name=True)} |"
    )
  pending = sum(r.get("pending", 0) for r in rows.values())
  if pending:
    lines += ["", f"Incomplete: {_n(pending, 'run')} of this table still to run."]
  lines += [""] + _specs(t)
  return lines + [x for arm in t.get("arms", []) for x in _arm(t, arm)]


def _specs(t: dict) -> list[str]:
  """The selected configurations as ``python -m train --optimizers`` takes them."""
  from bench.spaces import cli_spec

  rows = t["optimizers"]
  specs = [cli_spec(n, rows[n]["best_config"]) for n in _order(t) if rows[n]["best_config"]]
  if not specs:
    return []
  return [
    f"The selected configurations on the command line (`python -m train --schedule "
    f"{t['schedule']} --optimizers ...`, one per line):",
    "",
    "```text",
    *specs,
    "```",
    "",
  ]


def _arm(main: dict, arm: dict) -> list[str]:
  """The second arm's selections and test results beside the main schedule's."""
  m, rows = arm["metric"], arm["optimizers"]
  lines = [
    f"Second arm, {SCHEDULE.get(arm['schedule'], arm['schedule'])} (tuned alike, best "
    f"baseline **{arm['best_baseline'] or 'none'}**), beside "
    f"{SCHEDULE.get(main['schedule'], main['schedule'])}:",
    "",
    f"| optimizer | selected config | {METRIC[m]}, mean ± 95 % CI | main schedule "
    "| vs best baseline: Δ, p, verdict |",
    "|---|---|---|---|---|",
  ]
  for n in _order(arm):
    r, main_r = rows[n], main["optimizers"].get(n, {})
    edge = f" ⚑ {', '.join(r['edges'])}" if r.get("edges") else ""
    lines.append(
      f"| {n} | {_cfg(r['best_config'])}{edge} | {_test_cell(r, m)} "
      f"| {_test_cell(main_r, m) if main_r else '–'} "
      f"| {'baseline' if r['baseline'] else _cmp(r.get('best'), m, arm['higher_is_better'])} |"
    )
  return lines + [""] + _specs(arm)


def _summary(result: dict) -> list[str]:
  """Generated sentences: per workload what helped, hurt, or could not be told apart."""
  lines = []
  for name, t in result["workloads"].items():
    rows, m, base = t["optimizers"], t["metric"], t["best_baseline"]
    if base is None:
      lines.append(f"- **{name}**: no baseline finished tuning; no comparison.")
      continue
    groups: dict[str, list[str]] = {"helped": [], "hurt": [], "no clear difference": []}
    for n in _order(t):
      v = verdict(rows[n].get("best"), t["higher_is_better"])
      if v in groups:
        groups[v].append(f"{n} ({_num(rows[n]['best']['delta'], m, sign=True)})")
    parts = [f"best baseline {base} at {_num(rows[base]['mean'], m)}"]
    parts += [f"{v}: " + ", ".join(groups[v]) for v in groups if groups[v]]
    missed = [x for x in (_missed(n, rows[n]["steps_to_target"]) for n in _order(t)) if x]
    if missed:
      parts.append("seeds that missed the target (or diverged): " + ", ".join(missed))
    edges = [f"{n} ({', '.join(rows[n]['edges'])})" for n in _order(t) if rows[n].get("edges")]
    if edges:
      parts.append("selections at the edge of their range: " + ", ".join(edges))
    parts.append(f"fastest to target: {_fastest(rows) or 'none on every seed'}")
    lines.append(f"- **{name}** ({METRIC[m]}): " + "; ".join(parts) + ".")
    lines.append(f"  Paper claim on this kind of task: {t['paper']}")
  return lines


def _by_paper(result: dict) -> list[str]:
  """Per paper: the comparisons it made, on the workloads of its kind of task, and whether
  each difference points the way the paper claimed."""
  lines = []
  for paper, claim in result["claims"].items():
    rows = [
      (w, c)
      for w, t in result["workloads"].items()
      for c in t.get("claims", [])
      if c["paper"] == paper and c["delta"] is not None
    ]
    if not rows:
      continue
    holds = sig = 0
    cells = []
    for w, c in rows:
      t = result["workloads"][w]
      good = (c["delta"] > 0) == t["higher_is_better"]
      holds += good
      sig += good and verdict(c, t["higher_is_better"]) == "helped"
      p = "–" if c.get("p_holm") is None else f"{c['p_holm']:.2g}"
      way = "holds" if good else "reversed"
      cells.append(
        f"{c['method']} vs {c['against']} on {w}: {_num(c['delta'], t['metric'], True)} ({way}, p {p})"
      )
    lines.append(
      f"- **{paper}** claimed {claim['text']}. Its direction holds in {holds} of "
      f"{len(rows)} comparisons here, significantly (Holm) in {sig}: " + "; ".join(cells) + "."
    )
  return lines


def _missed(name: str, steps: list) -> str:
  """``name k/K`` when k of K seeds missed the target; every trial diverged when K = 0."""
  if not steps:
    return f"{name} (no seed run)"
  k = sum(v is None for v in steps)
  return f"{name} {k}/{len(steps)}" if k else ""


def _fastest(rows: dict) -> str:
  costs = {n: r["median_seconds"] for n, r in rows.items() if r["median_seconds"] is not None}
  if not costs:
    return ""
  n = min(costs, key=costs.get)
  return f"{n} ({costs[n]:.2f} s, {rows[n]['median_steps']:.0f} steps)"


def _names(result: dict) -> list[str]:
  names: list[str] = []
  for t in result["workloads"].values():
    names += [n for n in _order(t) if n not in names]
  return names


def _profile(result: dict, key: str) -> dict[str, np.ndarray]:
  """Per optimizer, its cost ratios to the best on each workload (inf for a miss)."""
  names = _names(result)
  ratios = {n: [] for n in names}
  for t in result["workloads"].values():
    rows = t["optimizers"]
    costs = {n: rows[n][key] if n in rows and rows[n][key] is not None else math.inf for n in names}
    best = min(costs.values())
    for n in names:
      ratios[n].append(costs[n] / best if math.isfinite(best) and best > 0 else math.inf)
  return {n: np.asarray(v, float) for n, v in ratios.items()}


def _style(result: dict):
  """Per optimizer a colour, line style and width; the baselines drawn thick."""
  plt = harness.pyplot()
  colors = plt.get_cmap("tab20").colors
  base = {
    n for t in result["workloads"].values() for n, r in t["optimizers"].items() if r["baseline"]
  }
  return {
    n: (
      colors[2 * i % 20],
      "-" if n in base else ("--", ":", "-.")[i % 3],
      2.4 if n in base else 1.3,
    )
    for i, n in enumerate(_names(result))
  }


def _profile_plot(result: dict, path: str) -> None:
  plt = harness.pyplot()
  from matplotlib import ticker

  style = _style(result)
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
  for ax, (key, label) in zip(
    axes, (("median_seconds", "time to target"), ("median_steps", "steps to target"))
  ):
    ratios = _profile(result, key)
    finite = np.concatenate([r[np.isfinite(r)] for r in ratios.values()] + [np.ones(1)])
    tau = np.logspace(0, math.log10(max(2.0, finite.max() * 1.2)), 200)
    for n, (color, ls, lw) in style.items():
      rho = [(ratios[n] <= x).mean() for x in tau]
      ax.step(tau, rho, where="post", ls=ls, color=color, label=n, lw=lw)
    ax.set_xscale("log")
    ax.set_xticks([x for x in (1, 1.25, 1.5, 2, 3, 5, 10, 20, 50, 100) if x <= tau[-1]])
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(f"τ: {label} within τ × the best optimizer's")
    ax.set_title(f"Performance profile, {label} ({len(result['workloads'])} workloads)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("share of workloads")
  axes[1].legend(fontsize=7, loc="lower right", ncol=2, title="baselines: thick")
  harness.savefig(fig, os.path.basename(path), dpi=100, directory=os.path.dirname(path))


def _sensitivity_plot(result: dict, path: str) -> None:
  """Per workload, every tuning run's validation metric against its learning rate."""
  plt = harness.pyplot()
  style = _style(result)
  tables = result["workloads"]
  n = len(tables)
  fig, axes = plt.subplots(1, n, figsize=(max(7.0, 4.2 * n) + 1.6, 4.2), squeeze=False)
  for ax, (name, t) in zip(axes[0], tables.items()):
    s = _scale(t["metric"])
    vals = [s * v for r in t["optimizers"].values() for _, v in r["sweep"] if v is not None]
    floor = min(vals) if vals else 0.0
    if t["metric"] == "accuracy":
      floor = max(floor, 0.0)
    for n, r in t["optimizers"].items():
      color = style[n][0]
      ok = [(lr, s * v) for lr, v in r["sweep"] if v is not None]
      bad = [lr for lr, v in r["sweep"] if v is None]
      if ok:
        ax.scatter(*zip(*ok), s=22, color=color, label=n, alpha=0.85, edgecolors="none")
      if bad:  # diverged: drawn at the panel's worst value
        worst = floor if t["higher_is_better"] else max(vals or [0.0])
        ax.scatter(bad, [worst] * len(bad), marker="x", s=26, color=color)
    ax.set_xscale("log")
    if t["metric"] == "mse":
      ax.set_yscale("log")
    ax.set(
      xlabel="learning rate (base of the schedule)", ylabel=f"validation {METRIC[t['metric']][5:]}"
    )
    ax.set_title(name, fontsize=10)
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), title="× = diverged")
  fig.suptitle("Sensitivity: the validation metric of every trial against its learning rate")
  harness.savefig(fig, os.path.basename(path), dpi=90, directory=os.path.dirname(path))


def plots(result: dict, directory: str) -> None:
  """The performance profiles and the sensitivity strips, saved under ``directory``."""
  figs = result["figures"]
  _profile_plot(result, os.path.join(directory, figs["profile"]))
  _sensitivity_plot(result, os.path.join(directory, figs["sensitivity"]))


def _sensitivity(result: dict) -> list[str]:
  """Per optimizer and workload: the median and worst validation over its trials."""
  tables = result["workloads"]
  lines = [
    "How forgiving each method is: the median and the worst validation metric over all its "
    "trials (widened ones included; diverged runs counted apart), beside the best.",
    "",
    "| optimizer | " + " | ".join(f"{w}: best / median / worst" for w in tables) + " |",
    "|---|" + "---|" * len(tables),
  ]
  for n in _names(result):
    cells = []
    for t in tables.values():
      r = t["optimizers"].get(n)
      vals = [v for _, v in r["sweep"] if v is not None] if r else []
      if not vals:
        cells.append("–")
        continue
      best, worst = (max, min) if t["higher_is_better"] else (min, max)
      m = t["metric"]
      k = len(r["sweep"]) - len(vals)
      cell = f"{_num(best(vals), m)} / {_num(float(np.median(vals)), m)} / {_num(worst(vals), m)}"
      cells.append(cell + (f" ({k} diverged)" if k else ""))
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  return lines + [""]


def _spaces(result: dict) -> list[str]:
  """The search space of every optimizer, per learning-rate band, and any widening."""
  bands: dict[str, dict[str, str]] = {}
  widened = []
  for w, t in result["workloads"].items():
    for n, r in t["optimizers"].items():
      bands.setdefault(t["lr_band"], {}).setdefault(n, "; ".join(r["space"]))
      if r.get("widened"):
        lo, hi = r["lr_range"]
        widened.append(f"{n} on {w} to [{lo:.3g}, {hi:.3g}]")
  names = list(dict.fromkeys(n for b in bands.values() for n in b))
  lines = [
    "## Search spaces",
    "",
    "Drawn by the same scrambled Sobol sequence for every optimizer (`bench/spaces.py`); "
    "“log” marks a log-uniform range. "
    + ("Learning-rate ranges widened: " + "; ".join(widened) + "." if widened else ""),
    "",
    "| optimizer | " + " | ".join(f"{b} band" for b in bands) + " |",
    "|---|" + "---|" * len(bands),
  ]
  for n in names:
    lines.append(f"| {n} | " + " | ".join(b.get(n, "–") for b in bands.values()) + " |")
  return lines + [""]


def render(result: dict) -> str:
  tag, proto = result["tag"], result["protocol"]
  widen = (
    f"Where the selected learning rate lies in the outer {result['edge']:.0%} of its log "
    f"range, the range is extended on that side by ×{proto['widen_factor']:g} and "
    f"{_n(proto['widen_trials'], 'more trial')} drawn there (the other hyperparameters kept), "
    f"up to {_n(proto['widen_rounds'], 'time')}. "
    if proto["widen_rounds"]
    else ""
  )
  pending = result.get("pending", 0)
  lines = [
    f"Setting: **{tag}** ({SETTING[tag]}). Command: `{result['command']}` "
    f"({result['minutes']:.0f} min of runs). Machine: {result['machine']}"
    + (
      f"; load average {result['load'][0]:.1f} → {result['load'][1]:.1f} in the last sitting."
      if result.get("load")
      else "."
    )
    + (
      f" **Incomplete: {_n(pending, 'run')} still to run**; rerun the command to resume."
      if pending
      else ""
    ),
    "",
    f"Protocol: per workload, every optimizer gets {_n(proto['trials'], 'configuration')} from a "
    "scrambled Sobol sequence over its search space (`bench/spaces.py`: the learning rate "
    "log-uniform over a stated range, the method's own hyperparameters over its paper's "
    "ranges), trained with one seed on the training split less a validation split and "
    f"scored on that validation split. {widen}The best is re-run on "
    f"{_n(proto['seeds'], 'fresh seed')} ({', '.join(map(str, result['seed_list']))}) on the whole "
    "training split and scored on the test split. Every run trains under one schedule: "
    f"{SCHEDULE['warmup_cosine']}, applied to the searched rate; where a table says so, the "
    "constant rate ran as a second arm. ⚑ marks a selection in the outer tenth of a log "
    "range. Test results are the mean over seeds ± the half-width of its "
    f"{result['confidence']:.0%} t confidence interval. Verdicts: Welch's t-test of the "
    "seeds' test metric against the best baseline and against the method's own base, the "
    "p-values adjusted by Holm's method over every comparison made on the workload (those "
    f"two per method and the pairs the papers compared), at family-wise α = {ALPHA}. Steps "
    "to target are read at the run's evaluations (median over seeds that reached it); "
    "seconds to target are those steps times the run's seconds per step (compilation and "
    "evaluation excluded).",
    "",
    "## Summary",
    "",
    "Per workload:",
    "",
    *_summary(result),
    "",
    "Per paper: its comparisons on the workloads of its kind of task, the difference of the "
    "test means (method − baseline) and whether it points the way the paper claimed:",
    "",
    *_by_paper(result),
    "",
    f"![performance profiles]({result['figures']['profile']})",
    "",
    "## Sensitivity to the learning rate",
    "",
    f"![sensitivity]({result['figures']['sensitivity']})",
    "",
    *_sensitivity(result),
  ]
  for name, t in result["workloads"].items():
    lines += _table(name, t, tag)
  lines += _spaces(result)
  return "\n".join(lines)
