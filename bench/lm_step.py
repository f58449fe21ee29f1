"""Every method on the byte-level transformer LM: step cost, GAL against the vocabulary, bits/byte.

Three measurements, all through the training loop's own pieces
(``train.loop.make_train_step``, ``train.loop.train_run``, optimizers from
``train.registry``), the model ``flax_models.TransformerLM`` in linen:

1. **Step cost.** The whole jitted train step (forward with INSGD's input-power capture
   where needed, one backward pass, GAL's regressor and chosen cotangent, the update
   and ``apply_updates``, state donated and carried) of every optimizer of the comparison,
   timed interleaved with AdamW's: 4 blocks, width 256, context 128, batch 32 on random
   bytes, three seeds (each its own initialisation and bytes, the compiled steps shared),
   the ratio per seed the median of each round's ratio (``--quick``: 2 blocks, width 128,
   context 64, batch 16). Targets: INSGD and GAL ≤ 1.10× AdamW.
2. **GAL against the vocabulary.** ``gal+adamw`` against ``adamw`` with output layers of
   256, 4,096 and 32,768 tokens at width 256 (a synthetic head: the inputs stay bytes, the
   embedding and the output layer grow), with the parameter counts of GAL's regressor
   (widths 100-32-16, input and output the vocabulary) and of the model's output layer.
3. **Bits per byte.** Each method trained a fixed number of steps on ``--dataset
   text`` (the standard library's sources, ``train.text``); its learning rate the best
   validation bits/byte on one grid shared by all methods (seed 0), then the test
   bits/byte at that rate over several seeds, mean ± sample standard deviation.

``--parts`` runs some of the three; the others are kept from the result already written
at that size, so the parts may run in separate sittings.

Run: ``python -m bench.lm_step [--quick] [--parts step vocab bpb]``.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from bench import harness
from flax_models import get_model
from train import data as data_lib
from train import registry
from train.errors import NonFiniteLossError
from train.loop import evaluate, init_state, make_eval_step, make_train_step, train_run

STEM = "lm_step"
METHODS = (
  "adamw",
  "momentum",
  "nesterov",
  "angulargrad_cos",
  "angulargrad_tan",
  "sp",
  "sp_nesterov",
  "insgd_l1",
  "insgd_l2",
  "gal+momentum",
  "gal+adamw",
)  # the optimizers of bench.compare, AdamW first
BPB_METHODS = ("adamw", "angulargrad_cos", "sp", "insgd_l2", "gal+adamw")
TARGETS = {m: 1.10 for m in ("insgd_l1", "insgd_l2", "gal+momentum", "gal+adamw")}
VOCABS = (256, 4096, 32768)
GAL_HIDDEN = (100, 32, 16)
CONFIGS = {
  # part: (full, quick)
  "step": (dict(depth=4, width=256, heads=4, context=128, batch=32, reps=5, seeds=3),
           dict(depth=2, width=128, heads=4, context=64, batch=16, reps=5, seeds=2)),
  "vocab": (dict(depth=2, width=256, heads=4, context=128, batch=8, reps=8),
            dict(depth=1, width=128, heads=4, context=32, batch=4, reps=4)),
  "bpb": (dict(depth=2, width=128, heads=4, context=64, batch=32, steps=600, seeds=3,
               grid=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3), eval_windows=512),
          dict(depth=1, width=64, heads=4, context=32, batch=16, steps=60, seeds=2,
               grid=(1e-3, 1e-2, 0.1), eval_windows=64)),
}  # fmt: skip


def _lm(cfg: dict, vocab: int = 256):
  keys = ("depth", "width", "heads", "context")
  return get_model("transformer_lm", vocab, **{k: cfg[k] for k in keys})


def _step(model, spec: str, vocab: int = 256):
  opt = registry.make_optimizer(spec, registry.make_schedule("constant", 1, 1), output_dim=vocab)
  return opt, make_train_step(model, opt, "language")


def _random_bytes(cfg: dict, vocab: int = 256, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (cfg["batch"], cfg["context"])).astype(np.int32)
  y = rng.integers(0, vocab, (cfg["batch"], cfg["context"])).astype(np.int32)
  return x, y


def _timed(model, steps: dict, cfg: dict, vocab: int, seed: int, warmup: int) -> dict:
  """Each step's seconds per round, interleaved, from seed ``seed``'s state and bytes."""
  x, y = _random_bytes(cfg, vocab, seed)
  fns = {
    m: harness.carried(step, init_state(model, opt.tx, x[:1], seed), x, y)
    for m, (opt, step) in steps.items()
  }
  return harness.sample_calls(fns, reps=cfg["reps"], warmup=warmup)


def time_steps(cfg: dict, methods=METHODS) -> dict:
  """Part 1: each method's whole step against AdamW's (the first of ``methods``), interleaved,
  per seed; the row of each method holds its median ratio per seed and their mean."""
  model = _lm(cfg)
  steps = {m: _step(model, m) for m in methods}
  per_seed = [
    _timed(model, steps, cfg, 256, seed, warmup=3 if seed == 0 else 1)
    for seed in range(cfg.get("seeds", 1))
  ]
  out = {}
  for m in methods:
    ratios = [harness.paired_ratios(s, methods[0])[m]["median"] for s in per_seed]
    row = harness.row(harness.summarise([t for s in per_seed for t in s[m]]))
    out[m] = {**row, "ratio_to_adamw": float(np.mean(ratios)), "ratio_per_seed": ratios}
  return out


def _param_count(tree) -> int:
  return int(sum(np.prod(np.shape(a)) for a in jax.tree.leaves(tree)))


def regressor_params(vocab: int, hidden=GAL_HIDDEN) -> int:
  """GAL's regressor: dense layers vocab → hidden… → vocab, with biases."""
  widths = (vocab, *hidden, vocab)
  return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def time_vocab(cfg: dict, vocabs=VOCABS) -> dict:
  """Part 2: GAL's step against AdamW's as the output layer grows."""
  out = {}
  for vocab in vocabs:
    model = _lm(cfg, vocab)
    steps = {m: _step(model, m, vocab) for m in ("adamw", "gal+adamw")}
    res = {k: harness.summarise(v) for k, v in _timed(model, steps, cfg, vocab, 0, 2).items()}
    x, _ = _random_bytes(cfg, vocab)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1]))["params"]
    head = _param_count(params["head"])
    out[str(vocab)] = {
      "adamw": harness.row(res["adamw"]),
      "gal+adamw": harness.row(res["gal+adamw"], res["adamw"], "ratio_to_adamw"),
      "model_params": _param_count(params),
      "head_params": head,
      "regressor_params": regressor_params(vocab),
    }
    print(f"vocab {vocab}: gal/adamw {out[str(vocab)]['gal+adamw']['ratio_to_adamw']:.3f}")
  return out


def _train(cfg, ds, spec, lr, seed):
  """One run: ``(val bits/byte, test bits/byte)``, or NaNs when the loss diverges."""
  model = _lm(cfg)
  opt = registry.make_optimizer(
    spec, registry.make_schedule("constant", 1, 1), lr=lr, output_dim=256
  )
  try:
    res = train_run(
      model, opt, ds, epochs=1, batch_size=cfg["batch"], seed=seed, progress=False, log_every=20
    )
  except NonFiniteLossError:
    return float("nan"), float("nan")
  val = evaluate(make_eval_step(model, "language"), res.state, ds, cfg["batch"], split="val")
  return val["test_bits_per_byte"], res.final["test_bits_per_byte"]


def _nanmin_index(values) -> int:
  finite = [v if math.isfinite(v) else math.inf for v in values]
  return int(np.argmin(finite))


def bits_per_byte(cfg: dict) -> dict:
  """Part 3: learning rate per method on the shared grid (validation), then test over seeds."""
  ds = data_lib.load_dataset("text", context=cfg["context"])
  n_eval = cfg["eval_windows"]
  ds = ds.subset(cfg["steps"] * cfg["batch"], n_eval)
  ds.x_val, ds.y_val = ds.x_val[:n_eval], ds.y_val[:n_eval]
  out = {}
  for spec in BPB_METHODS:
    val = [_train(cfg, ds, spec, lr, 0)[0] for lr in cfg["grid"]]
    best = cfg["grid"][_nanmin_index(val)]
    tests = [_train(cfg, ds, spec, best, s)[1] for s in range(cfg["seeds"])]
    rows = [{"test_bits_per_byte": t} for t in tests]
    mean, std = harness.mean_std(rows, "test_bits_per_byte")
    out[spec] = {"val_by_lr": dict(zip(map(str, cfg["grid"]), val)), "lr": best}
    out[spec].update({"test": tests, "mean": mean, "std": std})
    print(f"{spec}: lr {best:g}, test bits/byte {mean:.3f} ± {std:.3f}", flush=True)
  return {"dataset": ds.name, "train_windows": len(ds.x_train), **out}


def plot(vocab: dict, path: str, directory: str = harness.RESULTS) -> None:
  plt = harness.pyplot()
  vs = [int(v) for v in vocab]
  fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
  ax[0].plot(vs, [vocab[str(v)]["gal+adamw"]["ratio_to_adamw"] for v in vs], "o-")
  ax[0].axhline(1.10, color="k", ls="--", lw=0.8, label="1.10× target")
  ax[0].set(xscale="log", xlabel="vocabulary (output width)", ylabel="gal+adamw step / adamw")
  ax[0].legend(fontsize=8)
  for key, label in (("regressor_params", "GAL regressor"), ("head_params", "output layer")):
    ax[1].plot(vs, [vocab[str(v)][key] for v in vs], "o-", label=label)
  ax[1].set(xscale="log", yscale="log", xlabel="vocabulary", ylabel="parameters")
  ax[1].legend(fontsize=8)
  fig.suptitle("GAL on the transformer LM against the vocabulary size")
  harness.savefig(fig, path, directory=directory)


def _cfg_line(cfg: dict) -> str:
  return (
    f"{cfg['depth']} blocks, width {cfg['width']}, context {cfg['context']}, batch {cfg['batch']}"
  )


def _sitting(result: dict, part: str) -> str:
  """The machine's load average when the part started and ended (it is shared)."""
  load = result.get("loads", {}).get(part)
  return f"Load average {load[0]:.1f} → {load[1]:.1f} ({os.cpu_count()} cores)." if load else ""


def _render_steps(result: dict) -> list[str]:
  cfg, rows = result["config"]["step"], result["step"]
  seeds = cfg.get("seeds", 1)
  lines = [
    f"### Whole train step × AdamW's ({_cfg_line(cfg)}, random bytes, {_plural(seeds, 'seed')} "
    f"× {cfg['reps']} interleaved rounds)",
    "",
    f"The ratio: the median over rounds of each round's ratio, per seed, then the mean over "
    f"seeds (their range in brackets). {_sitting(result, 'step')}".strip(),
    "",
    "| method | median ms (p25–p75) | × adamw (per-seed range) | target | met |",
    "|---|---|---|---|---|",
  ]
  for m, r in rows.items():
    target = TARGETS.get(m)
    each = r.get("ratio_per_seed") or [r["ratio_to_adamw"]]
    spread = f" ({min(each):.3f}–{max(each):.3f})" if len(each) > 1 else ""
    lines.append(
      f"| {m} | {r['median_ms']:.1f} ({r['p25_ms']:.1f}–{r['p75_ms']:.1f}) | "
      f"{r['ratio_to_adamw']:.3f}{spread} | {f'≤ {target:g}×' if target else '–'} | "
      f"{harness.verdict(r['ratio_to_adamw'], target) if target else '–'} |"
    )
  return lines


def _plural(k: int, noun: str) -> str:
  return f"{k} {noun}" + ("" if k == 1 else "s")


def _render_vocab(result: dict) -> list[str]:
  vocab = result["vocab"]
  lines = [
    "",
    f"### GAL against the vocabulary ({_cfg_line(result['config']['vocab'])})",
    "",
    *([_sitting(result, "vocab"), ""] if _sitting(result, "vocab") else []),
    "| vocabulary | adamw ms | gal+adamw × adamw | regressor params | output-layer params "
    "| regressor / output layer | model params |",
    "|---|---|---|---|---|---|---|",
  ]
  for v, r in vocab.items():
    lines.append(
      f"| {int(v):,} | {r['adamw']['median_ms']:.1f} | {r['gal+adamw']['ratio_to_adamw']:.3f} | "
      f"{r['regressor_params']:,} | {r['head_params']:,} | "
      f"{r['regressor_params'] / r['head_params']:.2f} | {r['model_params']:,} |"
    )
  width = result["config"]["vocab"]["width"]
  per_token = GAL_HIDDEN[0] + GAL_HIDDEN[-1] + 1
  lines += [
    "",
    f"Where the regressor stops being small: its first and last layers are vocabulary-wide "
    f"({per_token} parameters per token, hidden widths {GAL_HIDDEN}) as the output layer is "
    f"(width + 1 per token, {width + 1} here), so beside the output layer it stays near "
    f"{per_token}/(width + 1) at every vocabulary size, {per_token / (width + 1):.2f} at this "
    f"width: never small here. It is under a tenth of the output layer only for a model "
    f"wider than {10 * per_token - 1:,}, whatever the vocabulary. Its per-token work (the "
    "regressor at every position, the loss at the tentative outputs) grows with the "
    "vocabulary as the output layer's does.",
  ]
  if result.get("plot"):
    lines += ["", f"![GAL against the vocabulary]({result['plot']})"]
  return lines


def _render_bpb(result: dict) -> list[str]:
  b, cfg = result["bpb"], result["config"]["bpb"]
  lines = [
    "",
    f"### Bits per byte after {cfg['steps']} steps ({_cfg_line(cfg)}; {b['dataset']}, "
    f"{b['train_windows']} training windows)",
    "",
    f"Learning rate: the best validation bits/byte on the grid {list(cfg['grid'])} (seed 0); "
    f"test bits/byte at that rate over {cfg['seeds']} seeds, mean ± std.",
    "",
    "| method | learning rate | test bits/byte | validation bits/byte by learning rate |",
    "|---|---|---|---|",
  ]
  for m in BPB_METHODS:
    r = b[m]
    by_lr = ", ".join(f"{lr}: {v:.3f}" for lr, v in r["val_by_lr"].items())
    lines.append(f"| {m} | {r['lr']:g} | {r['mean']:.3f} ± {r['std']:.3f} | {by_lr} |")
  return lines


PARTS = ("step", "vocab", "bpb")
RENDER = {"step": _render_steps, "vocab": _render_vocab, "bpb": _render_bpb}


def render(result: dict) -> str:
  head = [
    f"Command: `{result.get('command', 'python -m bench.lm_step')}`. Machine: {result['machine']}.",
    "",
  ]
  body = []
  for part in PARTS:
    if part in result:
      body += RENDER[part](result)
    else:
      body += ["", f"Not run at this size: `python -m bench.lm_step --parts {part}`."]
  return "\n".join(head + body)


def main(argv=None) -> dict:
  ap = harness.parser(__doc__, "smaller models, fewer repetitions, steps, seeds and rates")
  ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
  args = ap.parse_args(argv)
  cfg = {part: c[1] if args.quick else c[0] for part, c in CONFIGS.items()}
  tag = harness.tag(args.quick)
  kept = harness.load(f"{STEM}_{tag}") or {}
  result = {k: kept[k] for k in PARTS if k in kept and k not in args.parts}
  result["loads"] = {k: v for k, v in kept.get("loads", {}).items() if k in result}
  result.update(
    command=harness.command("bench.lm_step", args.quick),
    machine=harness.machine_description(),
    config=cfg,
    plot=kept.get("plot"),
  )
  work = {"step": time_steps, "vocab": time_vocab, "bpb": bits_per_byte}
  for part in args.parts:
    print(f"{part} ...", flush=True)
    before = os.getloadavg()[0]
    result[part] = work[part](cfg[part])
    result["loads"][part] = [before, os.getloadavg()[0]]
  if "vocab" in args.parts:
    result["plot"] = f"lm_gal_vocab_{tag}.png"
    plot(result["vocab"], result["plot"])
  md = harness.write(f"{STEM}_{tag}", result, render)
  print(md)
  return result


if __name__ == "__main__":
  main()
