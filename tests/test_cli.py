"""Optimizer settings on the command line: ``NAME[@LR][:KEY=VALUE,...]``."""

import json
import os
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext
from bench import spaces
from train import cli, methods, registry
from train.errors import UsageError

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 64).reshape(8, 8), "b": jnp.linspace(0.1, 0.3, 8)}
GRADS = jax.tree.map(lambda p: 0.1 * jnp.cos(3 * p) + 0.01, PARAMS)


def _build(spec, **kwargs):
  return registry.make_optimizer(spec, lambda lr: lr, **kwargs)


def _step(tx, steps=2, **extra):
  """The update after ``steps`` from PARAMS with GRADS (two: moments matter)."""
  state = tx.init(PARAMS)
  for _ in range(steps):
    updates, state = tx.update(GRADS, state, PARAMS, **extra)
  return updates


def _assert_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9), a, b)


def test_the_forms_of_a_spec():
  sp = registry.Spec("sp", 0.1, {"sparsity": 0.2})
  assert registry.parse_spec("sp:lr=0.1,sparsity=0.2") == sp
  assert registry.parse_spec("sp@0.1:sparsity=0.2") == sp
  assert registry.parse_spec("sp@1e-1: sparsity = 2e-1") == sp
  assert registry.parse_spec("adam@3e-4") == registry.Spec("adam", 3e-4, {})
  assert registry.parse_name("adam@3e-4") == ("adam", 3e-4)
  gal = registry.parse_spec("gal+adamw:alpha=1e-2,hidden=64/16,weight_decay=1e-3,nesterov=true")
  assert gal.settings == {"alpha": 0.01, "hidden": (64, 16), "weight_decay": 1e-3, "nesterov": True}
  assert registry.parse_spec("sp:momentum=none,quantile=exact").settings == {
    "momentum": None,
    "quantile": "exact",
  }
  # One text per configuration, whichever way it was written, and back.
  assert sp.text() == "sp:lr=0.1,sparsity=0.2"
  assert registry.parse_spec(gal.text()) == gal
  assert registry.format_spec("gal+sgd", None, {"hidden": ()}) == "gal+sgd:hidden="
  assert registry.parse_spec("gal+sgd:hidden=").settings == {"hidden": ()}


@pytest.mark.parametrize("name", [*methods.METHODS, "gal+sgd", "gal+adamw"])
def test_every_settable_name_reaches_the_factory(name):
  """Each name --help lists for a method, set to its default, builds; so does --help name it."""
  method = methods.get(name)
  names = registry.settable(method)
  assert names and not set(names) & set(registry.NOT_SETTABLE)
  spec = registry.format_spec(name, 0.01, names)
  assert registry.parse_spec(spec).settings == names  # the defaults read back as they are
  o = _build(spec, output_dim=8)
  assert o.spec == spec and o.lr == 0.01
  assert all(o.hyperparameters[k] == registry._json_ready(v) for k, v in names.items())
  listing = registry.describe_settings()
  assert all(f" {k}=" in listing or f" {k} " in listing for k in names)


def test_a_setting_changes_the_transform():
  # AdamW's decay: the update is optax.adamw's at that decay, not at its default.
  got = _step(_build("adamw:lr=0.01,weight_decay=0.5").tx)
  _assert_equal(got, _step(optax.adamw(0.01, weight_decay=0.5)))
  assert not np.allclose(got["w"], _step(optax.adamw(0.01))["w"])
  # A mask of leaf paths: AdamW decays only the leaves it names.
  got = _step(_build("adamw:lr=0.01,weight_decay=0.5,mask=^w$").tx)
  _assert_equal(got, _step(optax.adamw(0.01, weight_decay=0.5, mask={"w": True, "b": False})))
  assert not np.allclose(got["b"], _step(optax.adamw(0.01, weight_decay=0.5))["b"])
  # AngularGrad's λs, against the factory called directly.
  got = _step(_build("angulargrad_tan:lambda1=0.2,lambda2=0.9").tx)
  _assert_equal(got, _step(optax_ext.angulargrad(1e-3, "tan", lambda1=0.2, lambda2=0.9)))
  # SP's sparsity: test_a_run_with_settings_records_them, in a whole run.


def test_gal_settings_reach_gal_and_the_optimizer_after_it():
  x = jnp.linspace(-1.0, 1.0, 40).reshape(5, 8)
  y = jnp.linspace(0.0, 1.0, 40).reshape(5, 8)
  loss_fn = lambda z: jnp.mean((z - y) ** 2)
  extra = optax_ext.gal_extra_args(lambda p: x @ p["w"] + p["b"], PARAMS, loss_fn)

  def step(tx):
    state = tx.init(PARAMS)
    for _ in range(2):
      updates, state = tx.update(None, state, PARAMS, **extra)
    return updates

  o = _build("gal+adamw:lr=0.01,alpha=0.5,beta=0.2,hidden=6,weight_decay=0.5", output_dim=8)
  want = optax_ext.gal_chain(
    lambda lr: optax.adamw(lr, weight_decay=0.5), 0.01, 8, hidden=(6,), alpha=0.5, beta=0.2
  )
  _assert_equal(step(o.tx), step(want))
  plain = _build("gal+adamw:lr=0.01,alpha=0.5,beta=0.2,hidden=6", output_dim=8)
  assert not np.allclose(step(plain.tx)["w"], step(want)["w"])
  # --gal-alpha and friends stand where a spec sets nothing.
  opts = registry.GalOptions(alpha=0.5, beta=0.2, hidden=(6,))
  _assert_equal(
    step(_build("gal+adamw@0.01:weight_decay=0.5", output_dim=8, gal=opts).tx), step(want)
  )


@pytest.mark.parametrize(
  "spec,needle",
  [
    ("sp:sparsty=0.2", "sp has no setting 'sparsty'; it takes: lr, sparsity, momentum"),
    ("gal+sgd:activation=relu", "gal+sgd has no setting 'activation'"),
    ("momentum:momentum=0.95", "momentum is fixed by the name (momentum=0.9)"),
    ("sp:sparsity=abc", "sparsity='abc' is not a number"),
    ("sp:nesterov=maybe", "nesterov='maybe' is not true or false"),
    ("gal+adamw:hidden=wide", "hidden='wide' is not whole numbers"),
    ("sp:sparsity=1.5", "sparsity must lie in [0.0, 1.0), got 1.5"),  # sp's own check
    ("sp:quantile=bogus", "quantile must be one of ('fast', 'exact'), got 'bogus'"),
    ("gal+sgd:alpha=-1", "alpha must lie in [0.0, inf], got -1.0"),
    ("adamw:weight_decay=1,weight_decay=2", "sets weight_decay twice"),
    ("adam@0.1:lr=0.2", "sets lr twice"),
    ("adam:0.1", "expected KEY=VALUE after ':', got '0.1'"),
    ("adam:lr=-1", "must be positive"),
    ("adamx:lr=0.1", "unknown optimizer 'adamx'"),
  ],
)
def test_a_bad_setting_is_one_line_and_status_2(spec, needle, capsys, tmp_path):
  with pytest.raises(UsageError, match=None):
    _build(spec)
  argv = ["--optimizers", spec, "--out", str(tmp_path), "--no-progress", "--train-size", "64"]
  rc = cli.main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2
  assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
  assert not os.listdir(tmp_path)  # refused before anything ran


def test_run_folders_are_safe_and_one_per_configuration():
  specs = [
    "sp",
    "sp@0.1",
    "sp:sparsity=0.2",
    "sp:sparsity=0.25",
    "sp:nesterov=true",
    "sp_nesterov",
    "sp_nesterov:b_max=5",
    "sp:b_max=5,quantile=exact",
    "gal+adamw:hidden=64/16",
    "gal+adamw:hidden=6416",
    "gal+adamw:mu_dtype=bfloat16",
    "sp:mask=a/b",
    "sp:mask=axb",
    "sp:mask=a_b",
    "adamw:weight_decay=1e-05",
  ]
  folders = [registry.parse_spec(s).folder() for s in specs]
  assert len(set(folders)) == len(folders), folders
  assert all(set(f) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-+~") for f in folders)
  assert folders[:3] == ["sp", "sp_lr0.1", "sp_sparsity-0.2"]
  same = ("sp@0.1:sparsity=0.2", "sp:sparsity=2e-1,lr=1e-1", "sp@.1:sparsity=.20")
  assert len({registry.parse_spec(s).folder() for s in same}) == 1
  assert registry.parse_spec("gal+sgd@0.01").folder() == "gal_plus_sgd_lr0.01"


def test_a_run_with_settings_records_them(tmp_path, capsys):
  argv = ["--model", "mlp", "--dataset", "diabetes", "--epochs", "1", "--batch-size", "64"]
  argv += ["--train-size", "128", "--test-size", "64", "--out", str(tmp_path), "--no-progress"]
  rc = cli.main(argv + ["--optimizers", "sp@0.02:sparsity=0.5,mask=^Dense_0/"])
  out = capsys.readouterr()
  assert rc == 0, out.err
  config = json.load(open(tmp_path / "results.json"))["config"]
  sp = config["optimizer_settings"]["sp@0.02:sparsity=0.5,mask=^Dense_0/"]
  assert sp["spec"] == "sp:lr=0.02,mask=^Dense_0/,sparsity=0.5"
  assert sp["learning_rate"] == 0.02 and sp["hyperparameters"]["b_max"] == 10.0
  assert sp["hyperparameters"]["sparsity"] == 0.5
  assert sp["hyperparameters"]["mask"] == "^Dense_0/"
  folder = "sp_lr0.02_mask-~5e~Dense~5f~0~2f~_sparsity-0.5"
  records = [json.loads(line) for line in open(tmp_path / folder / "steps.jsonl")]
  # Every leaf the mask selects, biases too, is half at zero after each step (a little
  # more where weights tie at zero), not the default tenth; the other layers are left alone.
  pruned: dict[str, list] = {}
  for r in records:
    for k, v in r.items():
      if k.startswith("sp/pruned/"):
        pruned.setdefault(k.removeprefix("sp/pruned/"), []).append(v)
  assert len(pruned) == 6, pruned
  for leaf, values in pruned.items():
    if leaf.startswith("Dense_0/"):
      assert all(0.5 <= v < 0.52 for v in values), (leaf, values)
    else:
      assert not any(values), (leaf, values)


def test_the_same_configuration_twice_is_refused(capsys, tmp_path):
  argv = ["--optimizers", "adam", "adam:lr=0.001", "--out", str(tmp_path), "--no-progress"]
  assert cli.main(argv + ["--train-size", "64"]) == 2
  assert "each optimizer configuration may be named once" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(spaces.CANDIDATES))
def test_the_comparisons_selections_read_back_as_the_same_optimizer(name):
  """bench.compare's selected configurations, as RESULTS.md prints them, are the command
  line's: the spec parses back to the same values and builds the same update."""
  candidate = spaces.get(name)
  units = np.linspace(0.05, 0.95, 2 * len(candidate.space("normal"))).reshape(2, -1)
  for config in candidate.configs(units, "normal"):
    spec = spaces.cli_spec(name, config)
    parsed = registry.parse_spec(spec)
    rest = {k: v for k, v in config.items() if k != "learning_rate"}
    assert (parsed.name, parsed.lr, parsed.settings) == (name, config["learning_rate"], rest)
    o = _build(spec, output_dim=8)
  if not candidate.gal and not name.startswith("insgd"):  # those need extra arguments
    want = candidate.build(config, output_dim=8, task="classification").tx
    _assert_equal(_step(o.tx, steps=1), _step(want, steps=1))


def test_the_documented_example_builds():
  """docs/training.md's example of settings is a command the parser and factories accept."""
  text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "training.md")).read()
  section = text[text.index("## Optimizer settings") :]
  block = section[section.index("```bash") + 7 : section.index("```", section.index("```bash") + 7)]
  argv = shlex.split(block.replace("\\\n", " "))
  assert argv[1:3] == ["-m", "train"]
  args = cli.build_parser().parse_args(argv[3:])
  assert len(args.optimizers) == 5
  for spec in args.optimizers:
    settings = registry.parse_spec(spec).settings
    used = _build(spec, output_dim=8).hyperparameters
    assert {k: used[k] for k in settings} == {
      k: registry._json_ready(v) for k, v in settings.items()
    }


def test_the_stored_comparison_prints_specs_the_command_line_builds():
  """The report of the stored comparison lists each workload's selections as specs, each
  one parsing and building as printed."""
  from bench import compare_render

  path = os.path.join(os.path.dirname(__file__), "..", "bench", "results", "compare_quick.json")
  result = json.load(open(path))
  text = compare_render.render(result)
  blocks = text.split("The selected configurations on the command line")[1:]
  assert len(blocks) >= len(result["workloads"])
  for block in blocks:
    specs = block.split("```text\n")[1].split("\n```")[0].splitlines()
    assert specs
    for spec in specs:
      _build(spec, output_dim=8)


def test_a_mask_pattern_selects_leaves_by_their_path():
  params = {"Dense_0": {"kernel": 1.0, "bias": 2.0}, "Conv_0": {"kernel": 3.0}, "emb": [4.0]}
  assert registry.path_mask("kernel$")(params) == {
    "Dense_0": {"kernel": True, "bias": False},
    "Conv_0": {"kernel": True},
    "emb": [False],
  }
  assert registry.path_mask("^emb/0$")(params)["emb"] == [True]
  assert registry.parse_spec("sp:mask=none").settings == {"mask": None}
  with pytest.raises(UsageError, match=r"sp: mask='\(' is not a regular expression"):
    registry.parse_spec("sp:mask=(")


def test_a_mask_pattern_reads_nnx_parameters_as_linen_ones():
  from flax import nnx

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.Dense_0 = nnx.Linear(3, 4, rngs=rngs)

  state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
  got = registry.path_mask("^Dense_0/kernel$")(state)
  assert [bool(v) for v in jax.tree.leaves(got)] == [False, True]  # bias, kernel
