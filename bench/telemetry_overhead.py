"""Train-step time with the training telemetry on against off, interleaved in one run.

*Off* is the jitted train step (``train.loop.make_train_step``) called in a loop and
nothing else. *On* is that loop as ``train.loop.train_run`` runs it with logging
(:mod:`train.telemetry`): each step's metrics added to the window's sum on the device,
and every N steps the window closed (its device-to-host copy started, the windows whose
copies have arrived read) and written as JSON lines and TensorBoard events. Every mode runs the
same compiled step from its own carried, donated state; a timed call is a block of
steps, the modes interleaved round-robin (``harness.sample_calls``), and each logged
block is compared with the bare block of the same round (``harness.paired_ratios``),
so that a change in machine load between rounds cancels out. Optimizer: SP, whose per-leaf
pruned fractions and thresholds make it the method with the most logged values.
Models: the SP paper's MNIST CNN (28×28×1) and the CIFAR ResNet-20 (32×32×3), random
data of the batch size.

Run: ``python -m bench.telemetry_overhead [--quick]``.
"""

from __future__ import annotations

import tempfile

import numpy as np

from bench import harness
from flax_models import get_model
from train import registry, telemetry
from train.loop import init_state, make_train_step

STEM = "telemetry_overhead"
SETTINGS = {"mnist_cnn": (28, 28, 1), "resnet20": (32, 32, 3)}
OPTIMIZER = "sp"
EVERY = (10, 1)  # the target applies to the first
TARGET = 1.02


def _block(step, x, y, steps: int, log=None, every: int = 1):
  """``run(state) -> (state, step count)``: ``steps`` train steps, logged when ``log`` is given."""
  done = [0]

  def run(state):
    for _ in range(steps):
      state, metrics = step(state, x, y)
      done[0] += 1
      if log is not None:
        log.add(metrics)
        if done[0] % every == 0:
          log.close_window(done[0])
    return state, state.step

  return run


def time_model(model_name: str, batch: int, steps: int, reps: int, directory: str) -> dict:
  """Per-step medians of the bare loop and of the logged loops, and their ratios."""
  model = get_model(model_name, 10)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, *SETTINGS[model_name])).astype(np.float32)
  y = rng.integers(0, 10, batch).astype(np.int32)
  opt = registry.make_optimizer(OPTIMIZER, registry.make_schedule("constant", 1, 1))
  state = init_state(model, opt.tx, x[:1], 0)
  step = make_train_step(model, opt, "classification").lower(state, x, y).compile()
  fns = {"off": harness.carried(_block(step, x, y, steps), state)}
  logs = {}
  for every in EVERY:
    writer = telemetry.RunWriter(f"{directory}/{model_name}-every{every}").begin(0)
    lrs = telemetry.learning_rates(opt.learning_rate, 10**5)
    logs[every] = telemetry.StepLog(100, lrs, writer)
    run = _block(step, x, y, steps, logs[every], every)
    fns[f"on, every {every}"] = harness.carried(run, init_state(model, opt.tx, x[:1], 0))
  samples = harness.sample_calls(fns, reps=reps, warmup=1)
  for log in logs.values():
    log.writer.close()
  per_step = {k: harness.summarise([t / steps for t in s]) for k, s in samples.items()}
  paired = harness.paired_ratios(samples, "off")
  out = {k: harness.row(per_step[k], per_step["off"], "ratio_of_medians") for k in fns}
  for every in EVERY:
    out[f"on, every {every}"].update(
      {f"paired_{k}": v for k, v in paired[f"on, every {every}"].items()}
    )
  records = logs[EVERY[-1]].records
  return {"logged_values": len(records[0]) - len(telemetry.META), "modes": out}


def render(result: dict) -> str:
  every = result["every"]
  lines = [
    f"Command: `{result['command']}`. Machine: {result['machine']}; optimizer "
    f"{result['optimizer']}, batch {result['batch']}, blocks of {result['steps']} steps, "
    f"{result['reps']} interleaved rounds, each mode's state carried (donated).",
    "",
    "Train step with logging on ÷ the bare step: the median over rounds of the ratio of "
    "the two blocks of the same round (p25–p75 in brackets), and the ratio of the medians "
    f"(target ≤ {result['target']:g}× logging every {every[0]} steps, paired):",
    "",
    "| model | values per record | off, ms/step | "
    + " | ".join(f"every {e}: paired | of medians" for e in every)
    + " | met |",
    "|---|---|---|" + "---|---|" * len(every) + "---|",
  ]
  for name, r in result["models"].items():
    modes = r["modes"]
    cells = [f"{modes['off']['median_ms']:.2f}"]
    for e in every:
      m = modes[f"on, every {e}"]
      cells += [
        f"{m['paired_median']:.3f} ({m['paired_p25']:.3f}–{m['paired_p75']:.3f})",
        f"{m['ratio_of_medians']:.3f}",
      ]
    verdict = harness.verdict(modes[f"on, every {every[0]}"]["paired_median"], result["target"])
    lines.append(f"| {name} | {r['logged_values']} | " + " | ".join(cells) + f" | {verdict} |")
  lines += ["", "Per-step medians in ms (p25–p75):", ""]
  lines += ["| model | mode | median | p25–p75 |", "|---|---|---|---|"]
  for name, r in result["models"].items():
    for mode, m in r["modes"].items():
      lines.append(
        f"| {name} | {mode} | {m['median_ms']:.2f} | {m['p25_ms']:.2f}–{m['p75_ms']:.2f} |"
      )
  return "\n".join(lines)


def main(argv=None) -> dict:
  ap = harness.parser(__doc__, "batch 32, shorter blocks and fewer rounds")
  args = ap.parse_args(argv)
  batch, steps, reps = (32, 5, 20) if args.quick else (128, 10, 30)
  result = {
    "command": harness.command("bench.telemetry_overhead", args.quick),
    "machine": harness.machine_description(),
    "optimizer": OPTIMIZER,
    "batch": batch,
    "steps": steps,
    "reps": reps,
    "every": list(EVERY),
    "target": TARGET,
    "models": {},
  }
  with tempfile.TemporaryDirectory() as directory:
    for model_name in SETTINGS:
      print(f"timing {model_name} with logging on and off ...", flush=True)
      result["models"][model_name] = time_model(model_name, batch, steps, reps, directory)
  print(harness.write(f"{STEM}_{harness.tag(args.quick)}", result, render))
  return result


if __name__ == "__main__":
  main()
