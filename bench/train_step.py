"""Whole train-step cost of every method against its base optimizer's, donated and not; compile time.

One step is what ``python -m train`` runs (``train.loop.make_train_step``): forward (with
INSGD's input-power capture where needed), one backward pass (GAL's chosen cotangent
included), the optimizer update and ``apply_updates``, jitted, the train state carried
from call to call. Every method of :data:`train.methods.METHODS` and GAL in front of SGD
is compiled twice, with the train state donated and not (``--seam-off`` adds each
optax_ext method not donated with the CPU fusion seam off), and the steps of one model
are timed interleaved. Ratios: a method's median ÷ the median of the optimizer it
modifies (``Method.base``; for a baseline, SGD) in the same donation setting. Donated
and not, each method takes the same steps from the same start: its two final states are
compared bit for bit.

Compile time: the first compile of each method's step (trace, lower and compile, not
donated) ÷ AdamW's on the same model.

Models, on random data: the SP paper's MNIST CNN (28×28×1), the CIFAR ResNet-20
(32×32×3) and the byte-level transformer LM (``flax_models.transformer``; 2 blocks, width
128, context 64, batch 16 with ``--quick``, as ``bench.lm_step --quick``; 4 blocks, width
256, context 128, batch 32 in full). ``--models`` also takes the INSGD paper's
``insgd_cnn`` and ``insgd_cnn_bn`` (32×32×3).

Run: ``python -m bench.train_step [--quick] [--batch N] [--models ...] [--seam-off]``.
"""

from __future__ import annotations

import functools
import math
import sys
import time

import jax
import numpy as np

from bench import harness
from flax_models import get_model
from train import methods, registry
from train.loop import DONATE_STATE, init_state, make_train_step

STEM = "train_step"
#: Whole step ÷ the base optimizer's, not donated, on mnist_cnn and resnet20, by family.
TARGETS = {"AngularGrad": 1.15, "INSGD": 1.15, "GAL": 1.15, "SP": 1.5}
#: First compile ÷ AdamW's on resnet20 and the LM, by family (1.5 for the others).
COMPILE_TARGETS = {"SP": 3.0}
TARGET_MODELS, COMPILE_MODELS = ("mnist_cnn", "resnet20"), ("resnet20", "transformer_lm")
IMAGES = {"mnist_cnn": (28, 28, 1), "resnet20": (32, 32, 3), "insgd_cnn": (32, 32, 3),
          "insgd_cnn_bn": (32, 32, 3)}  # fmt: skip
LM = {True: dict(depth=2, width=128, heads=4, context=64, batch=16),
      False: dict(depth=4, width=256, heads=4, context=128, batch=32)}  # fmt: skip
DONATED, SEAM_OFF = " | donated", " | seam off"


def names() -> list[str]:
  """Every optimizer timed: the methods' list, and GAL in front of SGD."""
  return [*methods.METHODS, "gal+sgd"]


def compile_target(name: str) -> float:
  return COMPILE_TARGETS.get(methods.get(name).family, 1.5)


def _setting(model_name: str, batch: int, quick: bool):
  """``(model, x, y, task, classes)`` on random data."""
  rng = np.random.default_rng(0)
  if model_name == "transformer_lm":
    cfg = dict(LM[quick])
    shape = (cfg.pop("batch"), cfg["context"])
    x, y = (rng.integers(0, 256, shape).astype(np.int32) for _ in range(2))
    return get_model(model_name, 256, **cfg), x, y, "language", 256
  x = rng.normal(size=(batch, *IMAGES[model_name])).astype(np.float32)
  y = rng.integers(0, 10, batch).astype(np.int32)
  return get_model(model_name, 10), x, y, "classification", 10


def _same(a, b) -> bool:
  """Whether two train states hold the same bits."""
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
  return all(np.asarray(u).tobytes() == np.asarray(v).tobytes() for u, v in pairs)


def time_model(
  model_name: str, batch: int, reps: int, quick: bool, seam_off: bool = False, only=None
):
  """Every optimizer's step on one model (or ``only`` those, with SGD and their bases): rows of
  medians and ratios, and compile seconds."""
  model, x, y, task, classes = _setting(model_name, batch, quick)
  chosen = names() if only is None else ["sgd", *(methods.get(n).base or "sgd" for n in only)]
  chosen = list(dict.fromkeys(chosen + list(only or ())))
  const = registry.make_schedule("constant", 1, 1)
  fns, states, compile_s = {}, {}, {}
  for suffix in ("", DONATED) + ((SEAM_OFF,) if seam_off else ()):
    with harness.seam(suffix != SEAM_OFF):
      for name in chosen:
        if suffix == SEAM_OFF and not methods.get(name).family:
          continue
        opt = registry.make_optimizer(name, const, output_dim=classes, task=task)
        state = init_state(model, opt.tx, x[:1], 0)
        t0 = time.perf_counter()
        step = make_train_step(model, opt, task, donate=suffix == DONATED)
        step = step.lower(state, x, y).compile()
        compile_s.setdefault(name, time.perf_counter() - t0)  # the first compile of each
        states[name + suffix] = [state]

        def call(step=step, held=states[name + suffix]):
          held[0], metrics = step(held[0], x, y)
          return metrics

        fns[name + suffix] = call
  res = harness.time_calls(fns, reps=reps, warmup=3)
  rows = {}
  for key in fns:
    name, _, variant = key.partition(" | ")
    base = methods.get(name).base or "sgd"
    r = harness.row(res[key], res[base + (DONATED if variant == "donated" else "")], "ratio")
    r["base"] = base
    if variant == "donated":
      r["identical"] = _same(states[key][0], states[name][0])
      r["not_donated_ratio"] = res[name]["median"] / res[key]["median"]
    rows[key] = r
  return {"rows": rows, "compile_s": compile_s}


def _ratio(result: dict, model: str, key: str, what: str = "ratio"):
  return result["models"].get(model, {}).get("rows", {}).get(key, {}).get(what)


def compile_ratio(result: dict, model: str, name: str):
  """``name``'s first-compile seconds ÷ AdamW's on ``model``, or None."""
  s = result["models"].get(model, {}).get("compile_s", {})
  return s[name] / s["adamw"] if name in s and "adamw" in s else None


def step_table(result: dict, keys) -> list[str]:
  """Whole step ÷ base, not donated and (donated), per model, with the target."""
  models = list(result["models"])
  lines = ["| step | base | target | " + " | ".join(f"{m} (donated)" for m in models) + " |"]
  lines.append("|---|---|---|" + "---|" * len(models))
  for key in keys:
    name = key.split(" | ")[0]
    target = TARGETS.get(methods.get(name).family)
    cells = [
      f"{harness.fmt_ratio(_ratio(result, m, key), 3)} "
      f"({harness.fmt_ratio(_ratio(result, m, key + DONATED), 3)})"
      if _ratio(result, m, key + DONATED) is not None
      else harness.fmt_ratio(_ratio(result, m, key), 3)
      for m in models
    ]
    base = methods.get(name).base or "sgd"
    goal = f"≤ {target:g}" if target and " | " not in key else "-"
    lines.append(f"| {key.replace(' | ', ', ')} | {base} | {goal} | " + " | ".join(cells) + " |")
  return lines


def donation_table(result: dict) -> list[str]:
  """Not donated ÷ donated per method and model, and whether both end identical."""
  models = list(result["models"])
  lines = ["| method | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
  verdicts = []
  for name in names():
    cells = []
    for m in models:
      r = result["models"][m]["rows"].get(name + DONATED, {})
      verdicts.append((r.get("not_donated_ratio"), r.get("identical")))
      same = {True: "identical", False: "DIFFERENT", None: "-"}[r.get("identical")]
      cells.append(f"{harness.fmt_ratio(r.get('not_donated_ratio'), 3)}, {same}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  logs = [math.log(v) for v, _ in verdicts if v]
  mean = math.exp(sum(logs) / len(logs)) if logs else float("nan")
  faster = sum(1 for v, _ in verdicts if v and v < 1)
  same = all(s for _, s in verdicts if s is not None)
  lines += [
    "",
    f"Not donated ÷ donated: geometric mean {mean:.3f}; not donating faster in {faster} of "
    f"{len(logs)} steps; results {'identical in every step' if same else 'NOT identical'}. "
    f"`train.loop.DONATE_STATE` (what the training loop does by backend): {DONATE_STATE}.",
  ]
  return lines


def compile_table(result: dict) -> list[str]:
  """First-compile seconds per model, and ÷ AdamW's where the targets apply."""
  models = list(result["models"])
  head = " | ".join(f"{m} s" for m in models)
  ratios = " | ".join(f"÷ adamw, {m}" for m in COMPILE_MODELS)
  lines = [f"| method | {head} | {ratios} | target | status |"]
  lines.append("|---|" + "---|" * (len(models) + len(COMPILE_MODELS) + 2))
  for name in names():
    secs = [result["models"][m]["compile_s"].get(name) for m in models]
    got = [compile_ratio(result, m, name) for m in COMPILE_MODELS]
    worst = max((g for g in got if g is not None), default=None)
    target = compile_target(name)
    lines.append(
      f"| {name} | " + " | ".join(harness.fmt_ratio(s, 1) for s in secs) + " | "
      + " | ".join(harness.fmt_ratio(g) for g in got)
      + f" | ≤ {target:g} | {harness.verdict(worst, target)} |"
    )  # fmt: skip
  return lines


def render(result: dict) -> str:
  rows = next(iter(result["models"].values()))["rows"]
  keys = [k for k in rows if not k.endswith(DONATED)]
  lm = ", ".join(f"{k} {v}" for k, v in result["lm"].items())
  lines = [
    f"Command: `{result['command']}`. Machine: {result['machine']}; batch {result['batch']} "
    f"(the LM: {lm}), {result['reps']} interleaved rounds after 3 warm-up calls, the train "
    "state carried from call to call. The machine is shared: compare ratios from one run.",
    "",
    "### Whole train step ÷ the base optimizer's step",
    "",
    "Not donated, and in brackets donated (each against its base compiled alike):",
    "",
    *step_table(result, keys),
    "",
    "### Donating the train state",
    "",
    *donation_table(result),
    "",
    "### Compile time",
    "",
    "The first compile (trace, lower, compile) of each step, not donated; one compile each, "
    "so a shared machine's load moves single values by tens of percent:",
    "",
    *compile_table(result),
    "",
    "### Medians",
    "",
    "| step | " + " | ".join(f"{m} ms (p25–p75)" for m in result["models"]) + " |",
    "|---|" + "---|" * len(result["models"]),
  ]
  for key in rows:
    cells = []
    for m in result["models"].values():
      r = m["rows"].get(key)
      cells.append(f"{r['median_ms']:.1f} ({r['p25_ms']:.1f}–{r['p75_ms']:.1f})" if r else "-")
    lines.append(f"| {key.replace(' | ', ', ')} | " + " | ".join(cells) + " |")
  if result.get("plot"):
    lines += ["", f"![train-step ratios]({result['plot']})"]
  return "\n".join(lines)


def render_family(result: dict, family: str) -> str:
  """The rows of one paper's methods (with their bases) and their compile ratios."""
  fam = [n for n in names() if methods.get(n).family == family]
  keys = list(dict.fromkeys(k for n in fam for k in (methods.get(n).base, n)))
  ratio = lambda n, m: harness.fmt_ratio(compile_ratio(result, m, n))
  compiles = [f"{n} {ratio(n, m)} ({m})" for n in fam for m in COMPILE_MODELS]
  lines = [
    f"From `{result['command']}` ([Train-step cost](#train-step-cost)); machine: "
    f"{result['machine']}; batch {result['batch']}.",
    "",
    "Whole train step ÷ the base optimizer's step, not donated (donated):",
    "",
    *step_table(result, keys),
    "",
    f"First compile ÷ AdamW's (target ≤ {compile_target(fam[0]):g}): {'; '.join(compiles)}.",
  ]
  return "\n".join(lines)


render_insgd = functools.partial(render_family, family="INSGD")
render_gal = functools.partial(render_family, family="GAL")


def main(argv=None) -> dict:
  ap = harness.parser(__doc__, "fewer repetitions, the small LM")
  ap.add_argument("--batch", type=int, default=32, help="images per batch")
  ap.add_argument("--reps", type=int, default=None)
  ap.add_argument(
    "--models",
    nargs="+",
    default=[*TARGET_MODELS, "transformer_lm"],
    choices=[*IMAGES, "transformer_lm"],
  )
  ap.add_argument("--seam-off", action="store_true", help="also each method with the seam off")
  args = ap.parse_args(argv)
  reps = args.reps or (5 if args.quick else 15)
  given = sys.argv[1:] if argv is None else argv
  extra = " ".join(a for a in given if a != "--quick")
  result = {
    "command": harness.command("bench.train_step", args.quick, extra),
    "machine": harness.machine_description(),
    "batch": args.batch,
    "lm": LM[args.quick],
    "reps": reps,
    "models": {},
  }
  for model_name in args.models:
    print(f"timing train steps of {model_name} ...", flush=True)
    result["models"][model_name] = time_model(
      model_name, args.batch, reps, args.quick, args.seam_off
    )
  ylabel, models = "step ÷ base step, not donated", list(result["models"])
  ratios = {n: [_ratio(result, m, n) for m in models] for n in names() if methods.get(n).family}
  png, title = f"{STEM}_{harness.tag(args.quick)}.png", f"whole train step, batch {args.batch}"
  hlines = {ylabel: TARGETS.values()}
  result["plot"] = harness.plot(png, models, {ylabel: ratios}, "model", title, hlines)
  md = harness.write(f"{STEM}_{harness.tag(args.quick)}", result, render)
  print(md)
  return result


if __name__ == "__main__":
  main()
