"""`pip install optax_ext` brings the library and its four dependencies, and nothing more.

The extras (``[train]``, ``[bench]``, ``[docs]``, ``[dev]``) hold the training
command line, the benchmarks, the documentation and the tests; importing
``optax_ext`` or ``flax_models`` must never import one of them. The first test
checks that in this environment, where every extra is installed. The second
builds the project's wheel, installs it into a fresh virtual environment with
pip (which resolves jax, optax, flax and chex from the configured index), checks
that no extra came along, and runs one step of every method there, comparing
each with the equations of docs/design.md in NumPy. It installs packages, so it
is in the slow tier and has its own target, ``make test-install``, which CI runs.
"""

import functools
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE = ("jax", "optax", "flax", "chex")
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "optax_ext", "flax_models", "train")
# The import names of the packages the extras bring.
EXTRAS = (
  "sklearn",
  "tensorflow_datasets",
  "tensorflow",
  "tqdm",
  "matplotlib",
  "tensorboardX",
  "tensorboard",
  "grain",
  "hypothesis",
  "pytest",
  "sphinx",
)

# Run in the fresh environment: no extra is importable, and one step of each method
# gives the numbers of docs/design.md.
STEP_EVERY_METHOD = textwrap.dedent(
  """
  import importlib.util, sys
  import flax.linen as nn
  import jax, jax.numpy as jnp, numpy as np, optax
  import optax_ext, flax_models

  extras = {extras!r}
  found = [name for name in extras if importlib.util.find_spec(name) is not None]
  assert not found, f"the bare install brought extras: {{found}}"

  # AngularGrad — Definition, first step (g_0 = 0): u = -lr phi g / (|g| + eps),
  # phi = tanh(1 / sqrt(1 + g^2)) / 2 + 1 / 2 for cos.
  g = {{"w": jnp.array([0.5, -2.0, 0.0])}}
  tx = optax_ext.angulargrad(0.1, method="cos")
  u, _ = tx.update(g, tx.init(g), g)
  gw = np.asarray(g["w"], np.float64)
  phi = np.tanh(1 / np.sqrt(1 + gw**2)) / 2 + 0.5
  np.testing.assert_allclose(u["w"], -0.1 * phi * gw / (np.abs(gw) + 1e-8), rtol=1e-5)

  # SP — Ties: k = floor(p (n - 1)) + 1 entries of the kernel end at zero (here with
  # distinct saliencies, so the count is exact for the fast quantile too).
  w = {{"w": jnp.arange(1.0, 21.0).reshape(4, 5)}}
  tx = optax_ext.sp(0.01, sparsity=0.25, quantile="exact")
  u, _ = tx.update(w, tx.init(w), w)
  assert int(jnp.sum(optax.apply_updates(w, u)["w"] == 0)) == int(np.floor(0.25 * 19)) + 1

  # INSGD — Definition, first step: P_1 = m_1 = ||x||^2 = 4 for a Dense layer fed ones
  # of width 4, so the kernel's step is -lr g / log 4 (momentum's first step is g).
  model = nn.Dense(3)
  x = jnp.ones((2, 4))
  params = model.init(jax.random.key(0), x)["params"]
  loss = lambda z: jnp.sum(z**2)
  def loss_fn(p):
    z, power = optax_ext.capture_input_power(model.apply, {{"params": p}}, x)
    return loss(z), power
  (_, power), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  tx = optax_ext.insgd(0.1)
  u, _ = tx.update(grads, tx.init(params), params, input_power=power)
  np.testing.assert_allclose(u["kernel"], -0.1 * grads["kernel"] / np.log(4.0), rtol=1e-5)
  np.testing.assert_allclose(u["bias"], -0.1 * grads["bias"], rtol=1e-5)

  # GAL — Definition: with alpha = 0 there is no adjustment, so the step is SGD's.
  tx = optax_ext.gal_chain(optax.sgd, 0.1, output_dim=3, alpha=0.0)
  extra = optax_ext.gal_extra_args(lambda p: model.apply({{"params": p}}, x), params, loss)
  u, state = tx.update(None, tx.init(params), params, **extra)
  want = jax.grad(lambda p: loss(model.apply({{"params": p}}, x)))(params)
  for got, g in zip(jax.tree.leaves(u), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, -0.1 * np.asarray(g), rtol=1e-5, atol=1e-7)
  assert float(optax_ext.diagnostics(state)["gal/used_adjusted"]) == 1.0

  # A model of the library runs too.
  cnn = flax_models.MnistCNN(num_classes=10)
  variables = cnn.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
  assert cnn.apply(variables, jnp.ones((1, 8, 8, 1))).shape == (1, 10)
  print("every method stepped")
  """
)


def test_importing_the_library_imports_no_extra():
  code = (
    "import sys, optax_ext, flax_models\n"
    f"print(sorted(m for m in {(*EXTRAS, 'train', 'bench')!r} if m in sys.modules))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
  )
  assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.slow
def test_bare_install_steps_every_method(tmp_path):
  started = time.perf_counter()
  # The sources are built from a copy, so that the build leaves nothing in the repository,
  # and nothing runs with the repository on its path.
  source = tmp_path / "source"
  source.mkdir()
  for name in SOURCES:
    if (ROOT / name).is_dir():
      shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy2(ROOT / name, source / name)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  pip = [sys.executable, "-m", "pip"]
  run = functools.partial(subprocess.run, env=env, cwd=tmp_path, check=True)
  run([*pip, "wheel", "-q", "--no-deps", "-w", tmp_path / "wheel", source])
  (wheel,) = (tmp_path / "wheel").glob("optax_ext-*.whl")
  venv = tmp_path / "venv"
  run([sys.executable, "-m", "venv", "--without-pip", venv])
  python = venv / "bin" / "python"
  run([*pip, "--python", python, "install", "-q", wheel])
  listed = run(
    [*pip, "--python", python, "list", "--format=freeze"], capture_output=True, text=True
  )
  installed = listed.stdout.lower()
  assert all(f"{name}==" in installed for name in (*CORE, "optax_ext")), installed
  out = subprocess.run(
    [python, "-c", STEP_EVERY_METHOD.format(extras=EXTRAS)],
    cwd=tmp_path,  # not the repository: the installed package, not the sources
    env=env,
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith("every method stepped")
  print(f"bare install and one step of every method: {time.perf_counter() - started:.0f} s")
