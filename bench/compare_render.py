"""The "Which optimizer, when" report of :mod:`bench.compare`, from its JSON alone.

One table per workload (baselines first), performance profiles over workloads (Dolan &
Moré 2002: for each optimizer the share of workloads on which its cost is within a factor
τ of the best optimizer's; a miss costs infinity), and a summary generated from the
numbers: where a method beat the best baseline, where it lost, where the seeds cannot
tell, and what its paper claimed on the same kind of task.
"""

from __future__ import annotations

import math
import os

import numpy as np

from bench import harness

__all__ = ["ALPHA", "profile_plot", "render", "verdict"]

ALPHA = 0.05  # significance level of the summary's verdicts
METRIC = {"accuracy": "test accuracy (%)", "mse": "test MSE", "bits_per_byte": "test bits/byte"}


def _n(k: int, noun: str) -> str:
  return f"{k} {noun}" + ("" if k == 1 else "s")


def _scale(metric: str) -> float:
  return 100.0 if metric == "accuracy" else 1.0


def _num(v, metric: str, digits: int | None = None) -> str:
  if v is None or not math.isfinite(v):
    return "–"
  d = digits if digits is not None else (2 if metric != "mse" else 0)
  return f"{_scale(metric) * v:.{d}f}"


def _cfg(cfg: dict | None) -> str:
  if not cfg:
    return "–"
  short = {"learning_rate": "lr", "weight_decay": "wd", "sparsity": "σ", "lambda1": "λ1"}
  short.update({"lambda2": "λ2", "alpha": "α", "beta": "β"})
  return ", ".join(f"{short.get(k, k)} {v:.3g}" for k, v in cfg.items())


def _reach(values: list, budget_steps: int | None = None) -> str:
  hit = [v for v in values if v is not None]
  if not values:
    return "–"
  if not hit:
    return f"miss {len(values)}/{len(values)}"
  cell = f"{np.median(hit):.0f}" if len(hit) == len(values) else f"{np.median(hit):.0f}"
  miss = len(values) - len(hit)
  return cell + (f" (miss {miss}/{len(values)})" if miss else "")


def _seconds(values: list) -> str:
  hit = [v for v in values if v is not None]
  if not hit:
    return "–"
  return f"{np.median(hit):.2f}"


def verdict(row: dict, higher: bool, against: str = "") -> str:
  """``helped``, ``hurt``, ``no clear difference`` (or ``–``) against the best baseline
  (``against="_base"``: against the method's own base)."""
  d, p = row.get(f"delta{against}"), row.get(f"p{against}" if against else "p_value")
  if d is None:
    return "–"
  better = d > 0 if higher else d < 0
  if p is not None and p < ALPHA:
    return "helped" if better else "hurt"
  return "no clear difference"


def _own(r: dict, metric: str) -> str:
  if not r.get("base") or r.get("delta_base") is None:
    return "–"
  d = f"{_scale(metric) * r['delta_base']:+.{0 if metric == 'mse' else 2}f}"
  p = "–" if r.get("p_base") is None else f"{r['p_base']:.2g}"
  return f"{r['base']}: {d}, {p}"


def _order(table: dict) -> list[str]:
  rows = table["optimizers"]
  return [n for n in rows if rows[n]["baseline"]] + [n for n in rows if not rows[n]["baseline"]]


def _table(name: str, t: dict) -> list[str]:
  m = t["metric"]
  rows = t["optimizers"]
  arrow = "≥" if t["higher_is_better"] else "≤"
  b = t["budget"]
  lines = [
    f"## {name}: {t['title']}",
    "",
    f"Target: {METRIC[m]} {arrow} {_num(t['target'], m)}; budget {_n(b['epochs'], 'epoch')} of batch "
    f"{b['batch_size']}"
    + (f" on {b['train_size']:,} training rows" if b["train_size"] else "")
    + f"; learning rates from each optimizer's {t['lr_band']} band. Best baseline (chosen on "
    f"validation): **{t['best_baseline'] or 'none'}**.",
    "",
    f"| optimizer | selected config | val | {METRIC[m]}, mean ± std | steps to target "
    "| s to target | p (Welch) vs best baseline | verdict | vs own base: Δ, p |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for n in _order(t):
    r = rows[n]
    div = f" ({r['trials_diverged']}/{r['trials']} trials diverged)" if r["trials_diverged"] else ""
    k, n_seeds = r["seeds_diverged"], len(r["test"])
    test = f"{_num(r['mean'], m)} ± {_num(r['std'], m)}" if r["mean"] is not None else ""
    test += f" ({k}/{n_seeds} seeds diverged)" if k else ""
    p = "–" if r.get("p_value") is None else f"{r['p_value']:.2g}"
    name_cell = f"**{n}**" if r["baseline"] else n
    lines.append(
      f"| {name_cell} | {_cfg(r['best_config'])}{div} | {_num(r['val'], m)} | {test} "
      f"| {_reach(r['steps_to_target'])} | {_seconds(r['seconds_to_target'])} | {p} "
      f"| {verdict(r, t['higher_is_better']) if not r['baseline'] else 'baseline'} "
      f"| {_own(r, m)} |"
    )
  return lines + [""]


def _summary(result: dict) -> list[str]:
  """Generated sentences: per workload what helped, hurt, or could not be told apart."""
  lines = []
  for name, t in result["workloads"].items():
    rows, m, base = t["optimizers"], t["metric"], t["best_baseline"]
    if base is None:
      lines.append(f"- **{name}**: every baseline diverged in tuning; no comparison.")
      continue
    groups: dict[str, list[str]] = {"helped": [], "hurt": [], "no clear difference": []}
    for n in _order(t):
      v = verdict(rows[n], t["higher_is_better"])
      if v in groups:
        d = rows[n]["delta"] * _scale(m)
        groups[v].append(f"{n} ({d:+.{0 if m == 'mse' else 2}f})")
    b = rows[base]
    fastest = _fastest(rows)
    parts = [f"best baseline {base} at {_num(b['mean'], m)}"]
    for v in ("helped", "hurt", "no clear difference"):
      if groups[v]:
        parts.append(f"{v}: " + ", ".join(groups[v]))
    missed = [_missed(n, rows[n]["steps_to_target"]) for n in _order(t)]
    missed = [x for x in missed if x]
    if missed:
      parts.append("seeds that missed the target (or diverged): " + ", ".join(missed))
    if fastest:
      parts.append(f"fastest to target: {fastest}")
    else:
      parts.append("no optimizer reached the target on every seed")
    lines.append(f"- **{name}** ({METRIC[m]}): " + "; ".join(parts) + ".")
    lines.append(f"  Paper claim on this kind of task: {t['paper']}")
  return lines


def _method_verdicts(result: dict, method: str, against: str) -> str:
  """``method: helped on a; no clear difference on b, c`` (``on every workload`` if one)."""
  found: dict[str, list[str]] = {}
  for wname, t in result["workloads"].items():
    r = t["optimizers"].get(method)
    if r is not None:
      v = verdict(r, t["higher_is_better"], against)
      found.setdefault("not compared (diverged)" if v == "–" else v, []).append(wname)
  if not found:
    return ""
  n = sum(len(x) for x in found.values())
  if len(found) == 1 and n > 1:
    return f"{method} {next(iter(found))} on every workload"
  return f"{method} " + "; ".join(f"{v} on {', '.join(ws)}" for v, ws in found.items())


def _by_paper(result: dict) -> list[str]:
  """Per paper: on which workloads its methods helped, hurt or could not be told apart,
  against the best baseline and against the baseline each method modifies."""
  lines = []
  methods: dict[str, list[str]] = {}
  bases: dict[str, str] = {}
  for t in result["workloads"].values():
    for n, r in t["optimizers"].items():
      if r.get("paper") and n not in methods.setdefault(r["paper"], []):
        methods[r["paper"]].append(n)
      if r.get("base"):
        bases[n] = r["base"]
  for paper, claim in result.get("claims", {}).items():
    if paper not in methods:
      continue
    best = [_method_verdicts(result, m, "") for m in methods[paper]]
    own = [
      f"{x} (vs {bases[m]})"
      for m in methods[paper]
      if m in bases and (x := _method_verdicts(result, m, "_base"))
    ]
    line = f"- **{paper}**. Against the best baseline: " + "; ".join(x for x in best if x) + "."
    if own:
      line += " Against its own base: " + "; ".join(own) + "."
    lines.append(line + f" The paper claimed {claim}.")
  return lines


def _missed(name: str, steps: list) -> str:
  """``name k/K`` when k of K seeds missed the target; every trial diverged when K = 0."""
  if not steps:
    return f"{name} (every trial diverged)"
  k = sum(v is None for v in steps)
  return f"{name} {k}/{len(steps)}" if k else ""


def _fastest(rows: dict) -> str:
  costs = {n: r["median_seconds"] for n, r in rows.items() if r["median_seconds"] is not None}
  if not costs:
    return ""
  n = min(costs, key=costs.get)
  return f"{n} ({costs[n]:.2f} s, {rows[n]['median_steps']:.0f} steps)"


def _profile(result: dict, key: str) -> tuple[list[str], dict[str, np.ndarray]]:
  """Per optimizer, its cost ratios to the best on each workload (inf for a miss)."""
  tables = result["workloads"]
  names: list[str] = []
  for t in tables.values():
    names += [n for n in _order(t) if n not in names]
  ratios = {n: [] for n in names}
  for t in tables.values():
    rows = t["optimizers"]
    costs = {n: rows[n][key] if n in rows and rows[n][key] is not None else math.inf for n in names}
    best = min(costs.values())
    for n in names:
      ratios[n].append(costs[n] / best if math.isfinite(best) and best > 0 else math.inf)
  return names, {n: np.asarray(v, float) for n, v in ratios.items()}


def profile_plot(result: dict, path: str) -> str:
  """Performance profiles of the seconds and the steps to target; saved at ``path``."""
  plt = harness.pyplot()
  from matplotlib import ticker

  first = next(iter(result["workloads"].values()))
  n_base = sum(r["baseline"] for r in first["optimizers"].values())
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
  for ax, (key, label) in zip(
    axes, (("median_seconds", "time to target"), ("median_steps", "steps to target"))
  ):
    names, ratios = _profile(result, key)
    finite = np.concatenate([r[np.isfinite(r)] for r in ratios.values()] + [np.ones(1)])
    tau = np.logspace(0, math.log10(max(2.0, finite.max() * 1.2)), 200)
    colors = plt.get_cmap("tab20").colors
    for i, n in enumerate(names):
      rho = [(ratios[n] <= t).mean() for t in tau]
      base = i < n_base
      style = "-" if base else ("--", ":", "-.")[i % 3]
      ax.step(
        tau, rho, where="post", ls=style, color=colors[2 * i % 20], label=n, lw=2.4 if base else 1.3
      )
    ax.set_xscale("log")
    ax.set_xticks([t for t in (1, 1.25, 1.5, 2, 3, 5, 10, 20, 50, 100) if t <= tau[-1]])
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(f"τ: {label} within τ × the best optimizer's")
    ax.set_title(f"Performance profile, {label} ({len(result['workloads'])} workloads)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("share of workloads")
  axes[1].legend(fontsize=7, loc="lower right", ncol=2, title="baselines: thick")
  return harness.savefig(fig, os.path.basename(path), dpi=100, directory=os.path.dirname(path))


def _planning(result: dict) -> list[str]:
  full = result["settings"]["full"]
  lines = [
    "## Planning the full setting",
    "",
    f"The full setting (`python -m bench.compare`: {full['trials']} trials × "
    f"{full['seeds']} seeds per optimizer, the workloads' full budgets): the seconds per run "
    "and per step measured in this study, and the full study's time at that speed per "
    "example (seconds per step × the full batch ÷ this batch; the full LM is also twice as "
    "deep). Runs at the full size compile once per optimizer, as here.",
    "",
    "| workload | s per run here (with compilation) | ms per step here | batch here / full "
    "| steps per full run | full study at this speed |",
    "|---|---|---|---|---|---|",
  ]
  for name, p in result["planning"].items():
    n_opt = len(result["workloads"][name]["optimizers"])
    runs = n_opt * (full["trials"] + full["seeds"])
    sps, spr = p["sec_per_step"], p["sec_per_run"]
    batches = f"{p['batch']} / {p['full_batch']}"
    if not (sps and spr):
      lines.append(f"| {name} | – | – | {batches} | {p['full_steps']:,} | – |")
      continue
    est = runs * p["full_steps"] * sps * p["full_batch"] / p["batch"]
    lines.append(
      f"| {name} | {spr:.1f} | {1e3 * sps:.1f} | {batches} | {p['full_steps']:,} "
      f"| {_duration(est)} |"
    )
  return lines


def _spaces(result: dict) -> list[str]:
  """The search space of every optimizer, per learning-rate band, as the study drew it."""
  bands: dict[str, dict[str, str]] = {}
  for t in result["workloads"].values():
    for n, r in t["optimizers"].items():
      bands.setdefault(t["lr_band"], {}).setdefault(n, "; ".join(r["space"]))
  names = list(dict.fromkeys(n for b in bands.values() for n in b))
  head = " | ".join(f"{b} band" for b in bands)
  lines = [
    "## Search spaces",
    "",
    "Drawn by the same scrambled Sobol sequence for every optimizer (`bench/spaces.py`); "
    "“log” marks a log-uniform range.",
    "",
    f"| optimizer | {head} |",
    "|---|" + "---|" * len(bands),
  ]
  for n in names:
    lines.append(f"| {n} | " + " | ".join(b.get(n, "–") for b in bands.values()) + " |")
  return lines + [""]


def _duration(seconds: float) -> str:
  return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def render(result: dict) -> str:
  cmd = result["command"]
  lines = [
    f"Command: `{cmd}` ({result['minutes']:.0f} min of runs). Machine: {result['machine']}.",
    "",
    f"Protocol: per workload, every optimizer gets {_n(result['trials'], 'configuration')} from a "
    "scrambled Sobol sequence over its search space (`bench/spaces.py`: the learning rate "
    "log-uniform over a stated range, the method's own hyperparameters over its paper's "
    "ranges), trained with one seed on the training split less a validation split and "
    "scored on that validation split; the best is re-run on "
    f"{_n(result['seeds'], 'fresh seed')} ({', '.join(map(str, result['seed_list']))}) on the whole "
    "training split and scored on the test split. Steps to target are read at the run's "
    "evaluations (median over seeds that reached it; misses counted); seconds to target are "
    "those steps times the run's seconds per step (compilation and evaluation excluded). "
    f"Verdicts: Welch's t-test of the seeds' test metric against the best baseline, at "
    f"p < {ALPHA}; with {result['seeds']} seeds only large differences can show.",
    "",
    "## Summary",
    "",
    "Per workload:",
    "",
    *_summary(result),
    "",
    "Per paper:",
    "",
    *_by_paper(result),
    "",
    f"![performance profiles]({result['profile']})",
    "",
  ]
  for name, t in result["workloads"].items():
    lines += _table(name, t)
  lines += _spaces(result)
  lines += _planning(result)
  return "\n".join(lines)
