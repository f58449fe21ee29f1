"""The Python examples of the README and of the Getting started page give the output they show.

Every ```python block of README.md and docs/getting_started.md is a doctest: its
printed output must match the text. The blocks run in order in one namespace, the
README's first and then the page's (as a reader would paste them), and the tests
below recompute the values they print from the equations of docs/design.md in
NumPy, or with plain ``jax.grad``/``jax.vjp`` of the model, never with optax_ext.
"""

import doctest
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", ROOT / "docs" / "getting_started.md"]


def _blocks(path):
  """(path, 0-based line, text) of every ```python block of one file."""
  text = path.read_text()
  return [
    (path, text.count("\n", 0, m.start(1)), m.group(1))
    for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)
  ]


FOUND = [block for path in SOURCES for block in _blocks(path)]
BLOCKS = [text for _, _, text in FOUND]
FLAGS = doctest.NORMALIZE_WHITESPACE


pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def blocks():
  """Runs every block as a doctest; returns the namespace as it was after each block."""
  namespace, snapshots = {"__name__": "readme"}, []
  parser, failures = doctest.DocTestParser(), []
  for index, (path, line, block) in enumerate(FOUND):
    name = f"{path.relative_to(ROOT)} python block {index}"
    test = parser.get_doctest(block, namespace, name, str(path), line)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test, out=failures.append, clear_globs=False)
    namespace = dict(test.globs)
    snapshots.append(namespace)
  assert not failures, "".join(failures)
  return snapshots


@pytest.fixture(scope="module")
def ns(blocks):
  return blocks[-1]


def test_every_example_is_a_doctest_with_output():
  assert [sum(1 for p, _, _ in FOUND if p == path) >= 1 for path in SOURCES] == [True, True]
  assert len(BLOCKS) >= 6
  for index, block in enumerate(BLOCKS):
    examples = doctest.DocTestParser().get_examples(block)
    assert examples, f"block {index} has no >>> examples"
    assert any(e.want for e in examples), f"block {index} shows no output to check"


def test_examples_print_what_the_text_shows(blocks):
  assert len(blocks) == len(BLOCKS)  # the fixture fails if any output differs from the text


def test_angulargrad_first_step(blocks):
  # Loss sum((X w + b - 1)^2) with X = ones(4, 3), w = ones, b = 0: every residual is 2,
  # so every gradient entry is 2 * 2 * 4 = 16 (8 entries); clipping to global norm 1
  # makes each 16 / sqrt(8 * 256) = 1/sqrt(8).
  g = 1 / np.sqrt(8.0)
  # First step (g_0 = 0): r_1 = |g| / 1, phi = 0.5 tanh(1/sqrt(1 + r^2)) + 0.5 (cos);
  # m_hat = g, v_hat = g^2, update = -lr * phi * g / (|g| + eps).
  phi = 0.5 * np.tanh(1 / np.sqrt(1 + g * g)) + 0.5
  expected = -1e-3 * phi * g / (g + 1e-8)
  # float32: 0.999 is not exact, so 1 - b2 and the bias correction 1 - b2^t each carry a
  # relative error up to about 3e-5; the square root halves it.
  updates = blocks[0]["updates"]
  np.testing.assert_allclose(updates["b"], [expected] * 2, rtol=2e-5)
  np.testing.assert_allclose(updates["w"], np.full((3, 2), expected), rtol=2e-5)


def _np_prune(w, g, lr, p, ties):
  """docs/design.md, SP — Ties, transcribed: which entries end at zero."""
  w, g = np.asarray(w, np.float64).ravel(), np.asarray(g, np.float64).ravel()
  u = -lr * g
  c = w + u
  s = (u**2 / 2) * (c**2 / 2)
  n = s.size
  k = int(np.floor(p * (n - 1))) + 1
  if ties == "magnitude":
    chosen = np.lexsort((np.arange(n), np.abs(c), s))[:k]
  else:
    chosen = np.flatnonzero(s <= np.sort(s)[k - 1])
  pruned = np.zeros(n, bool)
  pruned[chosen] = True
  return pruned.reshape(np.shape(w))


@pytest.mark.parametrize("ties", ["magnitude", "all"])
def test_saliency_tie_example(ns, ties):
  w, g = np.asarray(ns["w"]), np.asarray(ns["g"])
  pruned = _np_prune(w, g, 0.1, 0.25, ties).reshape(w.shape)
  new = np.asarray(ns["prune"](ties))
  np.testing.assert_array_equal(new == 0, pruned)
  # Entries not pruned took the plain SGD step.
  np.testing.assert_allclose(new[~pruned], (w - 0.1 * g)[~pruned], rtol=1e-6)
  assert pruned.sum() == (3 if ties == "magnitude" else 4)


def _mnist_cnn_start(ns):
  model, x = ns["model"], ns["x"]
  return jax.jit(model.init)(jax.random.key(0), x)["params"]


def _linen_grads(ns, params):
  model, x, xent = ns["model"], ns["x"], ns["xent"]
  return jax.jit(jax.grad(lambda p: xent(model.apply({"params": p}, x))))(params)


def test_angulargrad_linen_step(ns):
  # First step of AngularGrad — Definition with g_0 = 0: rho = r_1 = |g|, phi (cos) =
  # tanh(1/sqrt(1 + g^2))/2 + 1/2, m_hat = g, v_hat = g^2: u = -lr phi g / (|g| + eps).
  p0 = _mnist_cnn_start(ns)
  grads = _linen_grads(ns, p0)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    g = np.asarray(g, np.float64)
    phi = 0.5 * np.tanh(1 / np.sqrt(1 + g * g)) + 0.5
    want = np.asarray(_at(p0, path), np.float64) - 1e-3 * phi * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(_at(ns["ag_params"], path), want, rtol=1e-5, atol=1e-8)
  phi = [0.5 * np.tanh(1 / np.sqrt(1 + np.asarray(g) ** 2)) + 0.5 for g in jax.tree.leaves(grads)]
  assert f"{max(float(np.max(v)) for v in phi):.4f}" == "0.8808"


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return np.asarray(tree)


def _check_sp_pruned(new_params):
  """SP — Ties with the fast quantile: k = floor(p (n - 1)) + 1 to k + floor(0.0045 n) zeros."""
  sizes = zeros = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(new_params):
    if "kernel" not in jax.tree_util.keystr(path):
      continue
    leaf = np.asarray(leaf)
    n, k = leaf.size, int(np.floor(0.1 * (leaf.size - 1))) + 1
    assert k <= np.sum(leaf == 0) <= k + np.floor(0.0045 * n), jax.tree_util.keystr(path)
    sizes, zeros = sizes + n, zeros + np.sum(leaf == 0)
  assert f"{zeros / sizes:.2f}" == "0.10"


def test_sp_linen_step(ns):
  # The initial kernels have no zero entry, so every zero is a pruned entry.
  for leaf in jax.tree.leaves(_mnist_cnn_start(ns)):
    assert leaf.ndim == 1 or np.all(np.asarray(leaf) != 0)
  _check_sp_pruned(ns["sp_params"])


def test_sp_nnx_step(ns):
  _check_sp_pruned(nnx.as_pure(nnx.state(ns["sp_model"], nnx.Param)))


def test_insgd_step(ns):
  model, x, xent = ns["model"], ns["x"], ns["xent"]
  p0 = _mnist_cnn_start(ns)
  grads = jax.jit(jax.grad(lambda p: xent(model.apply({"params": p}, x))))(p0)
  # First step: P_1 = m_1; the first convolution's input vectors are 3x3x1 patches of
  # ones, so m_1 = ||x||_2^2 = 9 and its kernel's gradient is divided by log 9.
  # Momentum's first step is the gradient itself (optax.trace); the bias is plain SGD.
  assert ns["power"].norm_order == 2
  np.testing.assert_allclose(ns["power"].powers["Conv_0"]["kernel"], 9.0, rtol=1e-6)
  p1 = ns["params"]
  conv = p1["Conv_0"]
  np.testing.assert_allclose(
    conv["kernel"],
    p0["Conv_0"]["kernel"] - 0.05 * grads["Conv_0"]["kernel"] / np.log(9.0),
    rtol=1e-5,
    atol=1e-7,
  )
  np.testing.assert_allclose(
    conv["bias"], p0["Conv_0"]["bias"] - 0.05 * grads["Conv_0"]["bias"], rtol=1e-5, atol=1e-7
  )


def _gal_expected(forward, params, reg, xent, diag):
  """GAL — Definition, for one step from ``params`` with the regressor's initial parameters.

  ``forward`` maps the parameters to the outputs; checks the step's diagnostics
  ``diag`` and returns the expected update, ``-lr`` times the chosen cotangent's VJP.
  """
  z, vjp = jax.jit(lambda p: jax.vjp(forward, p))(params)
  zn = np.asarray(z, np.float64)
  nabla = np.asarray(jax.grad(xent)(z), np.float64)

  def loss(zz):  # the batch-mean cross-entropy with every label 0, in float64
    zz = zz - zz.max(-1, keepdims=True)
    return float(np.mean(np.log(np.exp(zz).sum(-1)) - zz[:, 0]))

  v = zn  # the published RNet: dense layers with nothing between them
  for i in range(4):
    v = v @ reg[f"Dense_{i}"]["kernel"] + reg[f"Dense_{i}"]["bias"]
  alpha, eta_t = 1e-3, 1.0 * 0.05  # defaults alpha = 1e-3, beta = 1; eta = 0.05
  v_t = alpha * np.linalg.norm(nabla, axis=-1, keepdims=True) * v
  v_t /= np.linalg.norm(v, axis=-1, keepdims=True)
  g = nabla + v_t
  tentative = loss(zn - eta_t * g)
  used = tentative <= loss(zn)
  cot = g if used else nabla
  (grad,) = vjp(jnp.asarray(cot, jnp.float32))
  diag = {k: float(v) for k, v in diag.items()}
  assert diag["gal/used_adjusted"] == float(used)
  np.testing.assert_allclose(diag["gal/tentative_loss"], tentative, rtol=1e-5)
  cosine = np.sum(v_t * nabla) / (np.linalg.norm(v_t) * np.linalg.norm(nabla))
  np.testing.assert_allclose(diag["gal/cosine"], cosine, rtol=1e-4, atol=1e-5)
  return jax.tree.map(lambda a: -0.05 * np.asarray(a), grad)


def _regressor(ns, params):
  reg = jax.tree.map(lambda a: np.asarray(a, np.float64), ns["gal_tx"].init(params)[0])
  return reg.regressor_params


def test_gal_step(ns):
  model, x, xent = ns["model"], ns["x"], ns["xent"]
  params = ns["params"]
  want = _gal_expected(
    lambda p: model.apply({"params": p}, x),
    params,
    _regressor(ns, params),
    xent,
    ns["optax_ext"].diagnostics(ns["gal_state"]),
  )
  for got, w in zip(jax.tree.leaves(ns["updates"]), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-8)
  for got, p, u in zip(
    jax.tree.leaves(ns["new_params"]), jax.tree.leaves(params), jax.tree.leaves(ns["updates"])
  ):
    np.testing.assert_array_equal(got, optax.apply_updates(p, u))


def _nnx_start(ns):
  """The NNX model of the examples as built, and its parameters as plain arrays."""
  model = ns["NnxMnistCNN"](10, image_shape=(28, 28, 1), rngs=nnx.Rngs(0))
  return model, nnx.as_pure(nnx.state(model, nnx.Param))


def test_nnx_insgd_step(ns):
  x, xent = ns["x"], ns["xent"]
  model, p0 = _nnx_start(ns)
  grads = nnx.as_pure(nnx.grad(lambda m: xent(m(x)))(model))
  p1 = nnx.as_pure(nnx.state(ns["nnx_model"], nnx.Param))
  # As for linen: 3x3 patches of ones, m_1 = 9, the kernel's step divided by log 9.
  np.testing.assert_allclose(
    p1["conv1"]["kernel"],
    p0["conv1"]["kernel"] - 0.05 * grads["conv1"]["kernel"] / np.log(9.0),
    rtol=1e-5,
    atol=1e-7,
  )
  np.testing.assert_allclose(
    p1["conv1"]["bias"], p0["conv1"]["bias"] - 0.05 * grads["conv1"]["bias"], rtol=1e-5, atol=1e-7
  )


def test_nnx_gal_step(ns):
  x, xent = ns["x"], ns["xent"]
  model, p0 = _nnx_start(ns)
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  want = _gal_expected(
    lambda p: nnx.merge(graphdef, p, nnx.as_pure(rest))(x),
    p0,
    _regressor(ns, p0),
    xent,
    ns["optax_ext"].diagnostics(ns["gal_optimizer"].opt_state),
  )
  p1 = nnx.as_pure(nnx.state(ns["gal_model"], nnx.Param))
  for got, p, u in zip(jax.tree.leaves(p1), jax.tree.leaves(p0), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, p + u, rtol=1e-5, atol=1e-7)
