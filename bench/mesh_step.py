"""MNIST CNN train step on 1, 2, 4 and 8 (simulated) devices, data-parallel and FSDP.

On CPU the devices are simulated (``--xla_force_host_platform_device_count``):
they share the same cores, so this shows that the sharded step runs and what
collectives it holds, not a speed-up. On a GPU or TPU host the same command
measures real scaling.

Run: ``python -m bench.mesh_step [--quick]``.
"""

from __future__ import annotations

import os
import re

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  )

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import harness  # noqa: E402
from flax_models import get_model  # noqa: E402
from train import registry, sharding  # noqa: E402
from train.loop import init_state, make_train_step  # noqa: E402

STEM = "mesh_step"


def collectives(hlo: str) -> dict[str, int]:
  """Counts of each collective in an HLO module; all-gathers split by result size.

  ``all-gather large`` are results of at least 1,024 elements (a parameter or
  an activation); ``all-gather small`` are smaller, in practice one partial
  value per device that XLA gathers to finish a reduction.
  """
  names = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
  out = {n: len(re.findall(rf"\b{n}(?:-start)?\(", hlo)) for n in names}
  sizes = sharding.all_gather_sizes(hlo)
  out["all-gather large"] = sum(n >= 1024 for n in sizes)
  out["all-gather small"] = sum(n < 1024 for n in sizes)
  return out


def render(result: dict) -> str:
  lines = [
    "## Train step on a device mesh (simulated CPU devices)",
    "",
    f"Command: `{result['command']}`. MNIST CNN, "
    f"batch {result['batch']}, {result['machine']}. The 8 devices are simulated on the "
    "same 2 cores: times show that the sharded step runs, not a speed-up. The collective "
    "counts are read from the compiled HLO of one step; all-gathers are split into large "
    "(≥ 1,024 elements: parameters and activations, what the model itself needs under "
    "FSDP) and small (< 1,024: one partial value per device that XLA gathers to finish a "
    "reduction, e.g. SP's secant sums and quantile counts, AngularGrad's φ statistics).",
    "",
    "| optimizer | mesh | step ms | all-reduce | all-gather large | all-gather small "
    "| reduce-scatter |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, mesh_spec, ms, c in result["rows"]:
    lines.append(
      f"| {name} | {mesh_spec} | {ms:.1f} | {c['all-reduce']} | {c['all-gather large']} | "
      f"{c['all-gather small']} | {c['reduce-scatter']} |"
    )
  return "\n".join(lines)


def main(argv=None) -> dict:
  ap = harness.parser(__doc__, "batch 64, fewer repetitions")
  args = ap.parse_args(argv)
  batch = 64 if args.quick else 128
  reps = 3 if args.quick else 8
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, batch).astype(np.int32)
  model = get_model("mnist_cnn", 10)
  const = registry.make_schedule("constant", 1, 1)
  rows = []
  for opt_name in harness.one_per_family():
    for mesh_spec in ("data=1", "data=2", "data=4", "data=8", "data=2,fsdp=4"):
      opt = registry.make_optimizer(opt_name, const)
      mesh = sharding.make_mesh(sharding.parse_mesh(mesh_spec))
      state = init_state(model, opt.tx, x[:1], 0)
      st_sh = sharding.state_shardings(mesh, state)
      b_sh = sharding.batch_sharding(mesh)
      state = jax.device_put(state, st_sh)
      step = make_train_step(
        model, opt, "classification", state_sharding=st_sh, batch_sharding=b_sh
      )
      xs, ys = jax.device_put(x, b_sh), jax.device_put(y, b_sh)
      hlo = step.lower(state, xs, ys).compile().as_text()
      run = harness.carried(step, state, xs, ys)
      t = harness.time_calls({"step": run}, reps=reps, warmup=2)["step"]["median"]
      rows.append((opt_name, mesh_spec, 1e3 * t, collectives(hlo)))
      print(rows[-1], flush=True)
  result = {
    "command": harness.command("bench.mesh_step", args.quick),
    "machine": harness.machine_description(),
    "batch": batch,
    "rows": rows,
  }
  md = harness.write(f"{STEM}_{harness.tag(args.quick)}", result, render)
  print(md)
  return result


if __name__ == "__main__":
  main()
