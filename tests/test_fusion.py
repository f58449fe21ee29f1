"""optax_ext._fusion: one_pass (the identity, written in one loop on CPU) and detached."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_ext import _fusion

SPECIAL = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, 1e-45, -3.0, 7.5e37], np.float32)


def _count_big_outputs(fn):
  """How many f32[1024] arrays the compiled entry computation writes from fusions."""
  x = jnp.ones(1024)
  hlo = jax.jit(fn).lower(x, x).compile().as_text()
  entry = hlo[hlo.index("ENTRY") :]
  return len(re.findall(r"= \(?f32\[1024\][^=]*fusion\(", entry))


def test_values_come_back_bit_for_bit():
  x = jnp.asarray(SPECIAL)
  out = jax.jit(lambda x: _fusion.one_pass(x * 1.0, -x, x * 0.5))(x)
  for got, want in zip(out, (SPECIAL, -SPECIAL, SPECIAL * np.float32(0.5))):
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), want.view(np.uint32))


def test_mixed_dtypes_shapes_and_empty_arrays_pass_through():
  a = jnp.arange(6.0).reshape(2, 3)
  b = a.astype(jnp.bfloat16)
  ints = jnp.arange(6).reshape(2, 3)
  other_shape = jnp.ones(4)
  empty = jnp.zeros((0, 3))
  out = jax.jit(lambda *xs: _fusion.one_pass(*xs))(a, b * 2, a * 3, ints, other_shape, empty, b)
  want = (a, b * 2, a * 3, ints, other_shape, empty, b)
  assert [o.dtype for o in out] == [w.dtype for w in want]
  for o, w in zip(out, want):
    np.testing.assert_array_equal(np.asarray(o, np.float64), np.asarray(w, np.float64))
  assert _fusion.one_pass() == ()


def test_derivatives_and_vmap_are_those_of_the_identity():
  def f(x):
    a, b = _fusion.one_pass(jnp.sin(x), x * x)
    return jnp.sum(a * b)

  x = jnp.linspace(-1.0, 1.0, 7)
  np.testing.assert_allclose(
    jax.grad(f)(x), np.cos(x) * x**2 + np.sin(x) * 2 * x, rtol=1e-6, atol=1e-7
  )
  batched = jax.vmap(lambda x: _fusion.one_pass(x + 1.0, x * 2.0))(jnp.ones((3, 4)))
  np.testing.assert_array_equal(batched[0], 2 * np.ones((3, 4)))
  np.testing.assert_array_equal(batched[1], 2 * np.ones((3, 4)))


def test_cpu_program_writes_the_arrays_in_one_loop():
  # The point of one_pass: on CPU its arrays come out of a single fusion with
  # several outputs, rather than one loop each. (Without it: three fusions.)
  if jax.default_backend() != "cpu":
    pytest.skip("one_pass is the plain identity off CPU")
  plain = lambda g, m: (m * 0.9 + g, g * g + 1.0, jnp.sqrt(m * 0.9 + g))  # noqa: E731
  assert _count_big_outputs(plain) == 3
  assert _count_big_outputs(lambda g, m: _fusion.one_pass(*plain(g, m))) == 1


def test_detached_computes_the_same_values():
  x = jnp.asarray(SPECIAL)
  scale = jnp.float32(0.5)

  def program(x, scale):
    fn = lambda: jnp.sort(x * scale - 1.0)  # noqa: E731
    return fn(), _fusion.detached(fn)()

  for run in (program, jax.jit(program)):
    plain, detached = run(x, scale)
    np.testing.assert_array_equal(
      np.asarray(detached).view(np.uint32), np.asarray(plain).view(np.uint32)
    )
  constant = lambda: jnp.arange(3.0)  # noqa: E731  (captures no traced array)
  assert _fusion.detached(constant) is constant


def test_detached_keeps_a_shared_expression_out_of_memory():
  # u feeds a reduction and the output. Merged, XLA writes u to memory for
  # both loops (two array outputs); detached, each loop computes its own u.
  if jax.default_backend() != "cpu":
    pytest.skip("fusion decisions checked on the CPU backend")

  def program(detach):
    def fn(g, p):
      u = lambda: g * 0.1 * (1.0 + g * g)  # noqa: E731
      v = (_fusion.detached(u) if detach else u)()
      sum_sq, largest = jax.lax.reduce(
        (v * v, v), (0.0, 0.0), lambda a, b: (a[0] + b[0], jnp.maximum(a[1], b[1])), (0,)
      )
      return p + u() * (sum_sq + largest)

    return fn

  assert _count_big_outputs(program(False)) == 2
  assert _count_big_outputs(program(True)) == 1


def _fusions_writing(fn, *args, shape="f32[1024]"):
  """Per fusion of the compiled entry computation, how many ``shape`` arrays it writes."""
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  entry = hlo[hlo.index("ENTRY") :]
  # A fusion's line reads `%name = <result type(s)> fusion(<operands>), ...`.
  results = [
    line.split(" = ", 1)[1].split(" fusion(")[0]
    for line in entry.splitlines()
    if " fusion(" in line
  ]
  return [n for n in (r.count(shape + "{") for r in results) if n]


@pytest.mark.parametrize("method", ["cos", "tan"])
def test_angulargrad_writes_each_leaf_from_one_fusion(method):
  # update, mu, nu, tan_angle and prev_grad of a leaf come out of one loop on
  # CPU (the learning rate and weight decay formed in it); without the seam,
  # XLA:CPU gives them loops of their own. The leaf is larger than the block
  # the φ statistics read: a leaf read whole shares φ with them, and XLA then
  # writes φ (and tan A) to memory for both loops.
  if jax.default_backend() != "cpu":
    pytest.skip("fusion decisions checked on the CPU backend")
  import optax

  import optax_ext

  def fusions(setting):
    optax_ext.config.update("cpu_fusion", setting)
    try:
      tx = optax_ext.angulargrad(optax.cosine_decay_schedule(0.1, 10), method, weight_decay=1e-2)
      params = {"w": jnp.ones(4096)}
      state = tx.init(params)
      program = lambda g, s, p: tx.update(g, s, p)  # noqa: E731
      return _fusions_writing(program, params, state, params, shape="f32[4096]")
    finally:
      optax_ext.config.update("cpu_fusion", True)

  assert fusions(True) == [5]
  assert len(fusions(False)) > 1  # (prev_grad may be a plain copy there, not a fusion)


# ----------------------------------------------------------------------------
# The constructs SP's update relies on, and the whole SP program.


def _compiled_entry(fn, *args):
  # A fresh function each time: jax.jit reuses the trace of a function it has
  # seen, whatever the seam's setting is now.
  hlo = jax.jit(lambda *a: fn(*a)).lower(*args).compile().as_text()
  return hlo[hlo.index("ENTRY") :]


def _with_seam(setting, build):
  """``build()`` traced with the seam set to ``setting`` (restored after)."""
  import optax_ext

  optax_ext.config.update("cpu_fusion", setting)
  try:
    return build()
  finally:
    optax_ext.config.update("cpu_fusion", True)


def _cpu_only():
  if jax.default_backend() != "cpu":
    pytest.skip("fusion decisions checked on the CPU backend")


def test_count_true_is_one_loop_that_writes_no_array():
  # As a two-output reduction the comparison is counted where it is computed;
  # as a plain int32 sum XLA:CPU writes the comparison to memory first.
  _cpu_only()
  x = jnp.linspace(-1.0, 1.0, 1024)
  count = lambda x: _fusion.count_true(x * x > 0.25)  # noqa: E731
  assert int(jax.jit(count)(x)) == int(np.sum(np.asarray(x) ** 2 > 0.25))
  written = lambda entry: re.findall(r"= (?:s32|pred|u8)\[1024\]", entry)  # noqa: E731
  assert written(_with_seam(True, lambda: _compiled_entry(count, x))) == []
  assert written(_with_seam(False, lambda: _compiled_entry(count, x))) != []


def test_select_by_scalar_leaves_no_select_in_the_loop():
  _cpu_only()

  def program(pred, x):
    v = _fusion.select_by_scalar(pred, jnp.minimum(1.0 + x * x, 10.0), jnp.float32(0.5))
    return jnp.sum(v * x)

  x, pred = jnp.linspace(-2.0, 2.0, 1024), jnp.asarray(True)
  compiled = lambda: jax.jit(lambda *a: program(*a)).lower(pred, x).compile().as_text()  # noqa: E731
  with_seam, without = _with_seam(True, compiled), _with_seam(False, compiled)
  selects = lambda hlo: re.findall(r"f32\[1024\]\{0\} select\(", hlo)  # noqa: E731
  assert selects(with_seam) == [] and selects(without) != []
  for p in (True, False):
    run = lambda p=p: jax.jit(lambda *a: program(*a))(jnp.asarray(p), x)  # noqa: E731
    np.testing.assert_array_equal(_with_seam(True, run), _with_seam(False, run))


def _sp_program(setting, **kwargs):
  import optax_ext

  rng = np.random.default_rng(0)
  params = {
    "w": jnp.asarray(rng.normal(size=(256, 300)), jnp.float32),
    "v": jnp.asarray(rng.normal(size=(300, 256)), jnp.float32),
  }

  def build():
    tx = optax_ext.sp(0.05, **kwargs)
    program = lambda g, s, p: tx.update(g, s, p)  # noqa: E731
    return _compiled_entry(program, params, tx.init(params), params)

  return _with_seam(setting, build)


def _leaf_arrays_written_outside_loops(entry):
  """Parameter-shaped arrays written by fusions of the entry computation."""
  return sum(
    line.split(" = ", 1)[1].split(" fusion(")[0].count(s)
    for line in entry.splitlines()
    if " fusion(" in line
    for s in ("f32[256,300]{", "f32[300,256]{")
  )


def test_sp_fast_mode_writes_only_the_updates():
  # With the seam, B⁻¹, the step and the saliency are recomputed inside each
  # loop (recomputed, negated_difference, select_by_scalar): the only
  # parameter-sized arrays fusions write are the two leaves' updates. Without
  # it, the secant differences, B⁻¹ and the saliency are written as well.
  _cpu_only()
  assert _leaf_arrays_written_outside_loops(_sp_program(True)) == 2
  assert _leaf_arrays_written_outside_loops(_sp_program(False)) > 4


@pytest.mark.parametrize(
  "construct, plain",
  [
    ("negated_difference", lambda a, b: a - b),
    ("recomputed", lambda fn, inputs=(): (lambda value: lambda: value)(fn())),
  ],
)
def test_each_construct_keeps_arrays_out_of_the_sp_program(monkeypatch, construct, plain):
  # Each construct, replaced alone by its plain form, costs the SP update
  # parameter-sized writes: an XLA change that makes one of them useless
  # fails here.
  _cpu_only()
  monkeypatch.setattr(_fusion, construct, plain)
  assert _leaf_arrays_written_outside_loops(_sp_program(True)) > 2


def test_sp_exact_mode_writes_the_saliency_once():
  # The exact search takes many passes: the saliency is written once per leaf
  # (detached, so the step inside it is not written as well), then the updates.
  _cpu_only()
  assert _leaf_arrays_written_outside_loops(_sp_program(True, quantile="exact")) == 4


def test_first_counting_pass_runs_before_the_loop():
  # before_loop: the warm pass counts every leaf at the top level, where
  # XLA:CPU runs independent work side by side; without the seam every pass
  # runs inside the while loop.
  _cpu_only()

  def counts_outside(entry):
    top = [line for line in entry.splitlines() if " fusion(" in line and " while(" not in line]
    reads_grads = lambda line: "a_0___w__" in line or "a_0___v__" in line  # noqa: E731
    return sum(
      1 for line in top if re.match(r"\(?s32\[\]", line.split(" = ", 1)[1]) and reads_grads(line)
    )

  assert counts_outside(_sp_program(True)) >= 2
  assert counts_outside(_sp_program(False)) == 0


def _op_histogram(module_text):
  """Counts of each StableHLO op, leaving out the case/return wrappers platform_dependent adds."""
  ops = re.findall(r"(?:stablehlo|func|chlo)\.([a-z_]+)", module_text)
  skip = {"case", "return", "constant", "call", "func"}
  return {op: ops.count(op) for op in set(ops) if op not in skip}


@pytest.mark.parametrize("method", ["sp", "sp_exact", "angulargrad"])
def test_off_cpu_the_program_is_the_plain_one(method):
  # Lowered for a GPU, the program holds only the plain branch of every
  # construct: no optimization barrier, no extra reduction.
  import optax
  from jax import export

  import optax_ext

  params = {"w": jnp.ones((64, 32)), "b": jnp.ones((32,))}
  factories = {
    "sp": lambda: optax_ext.sp(0.05),
    "sp_exact": lambda: optax_ext.sp(0.05, quantile="exact", momentum=0.9),
    "angulargrad": lambda: optax_ext.angulargrad(0.01, weight_decay=1e-3),
  }

  def lowered(setting):
    def build():
      tx = factories[method]()
      program = jax.jit(lambda g, s, p: tx.update(g, s, p))
      return export.export(program, platforms=["cuda"])(params, tx.init(params), params)

    return _with_seam(setting, build).mlir_module()

  on, off = lowered(True), lowered(False)
  assert "optimization_barrier" not in on
  assert _op_histogram(on) == _op_histogram(off)
  del optax


# ----------------------------------------------------------------------------
# The seam changes no value: every method, every dtype, several steps.


def _seam_params(dtype):
  k = jax.random.split(jax.random.key(3), 4)
  return {
    "conv": jax.random.normal(k[0], (3, 3, 3, 7), dtype),
    "kernel": jax.random.normal(k[1], (33, 17), dtype),
    "bias": jax.random.normal(k[2], (17,), dtype),
    "odd": jax.random.normal(k[3], (1001,), dtype),  # a size no vector width divides
  }


def _seam_loss(p):
  f = lambda x: jnp.sum(jnp.sin(3.0 * x) * (x - 0.3) ** 2)  # noqa: E731
  return sum(f(x.astype(jnp.float32)) for x in jax.tree.leaves(p))


def _gal_args(p):
  import optax_ext

  x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3).astype(p["kernel"].dtype)
  model = lambda q: x @ q["kernel"][:3, :5]  # noqa: E731
  return optax_ext.gal_extra_args(model, p, lambda z: jnp.mean(jnp.square(z.astype(jnp.float32))))


def _seam_methods():
  import optax

  import optax_ext

  power = lambda p: optax_ext.InputPower(  # noqa: E731
    jax.tree.map(lambda x: jnp.asarray(5.0, x.dtype) if x.ndim >= 2 else None, p), 2
  )
  return {
    "angulargrad_cos": (lambda: optax_ext.angulargrad(1e-2, method="cos"), None),
    "angulargrad_tan_wd": (
      lambda: optax_ext.angulargrad(1e-2, method="tan", weight_decay=1e-2),
      None,
    ),
    "sp": (lambda: optax_ext.sp(1e-2, sparsity=0.1), None),
    "sp_exact": (lambda: optax_ext.sp(1e-2, sparsity=0.1, quantile="exact"), None),
    "sp_nesterov": (lambda: optax_ext.sp(1e-2, sparsity=0.1, momentum=0.9, nesterov=True), None),
    "adam_saliency": (
      lambda: optax.chain(optax.adam(1e-2), optax_ext.saliency_proximal(0.1)),
      None,
    ),
    "insgd": (lambda: optax_ext.insgd(1e-2), lambda p: {"input_power": power(p)}),
    "gal": (lambda: optax_ext.gal_chain(optax.sgd, 1e-2, output_dim=5, hidden=(4,)), _gal_args),
  }


def _trajectory(setting, method, dtype, steps):
  """Updates and states of ``steps`` steps, the update traced with the seam at ``setting``.

  The gradient and the parameter step are jitted apart from the update, so
  the compared programs are the method's alone.
  """
  import optax

  make, extra = _seam_methods()[method]
  tx = _with_seam(setting, make)
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, **(extra(p) if extra else {})))
  grad, apply = jax.jit(jax.grad(_seam_loss)), jax.jit(optax.apply_updates)
  params = _seam_params(dtype)
  state, out = tx.init(params), []
  for _ in range(steps):
    grads = None if method == "gal" else grad(params)
    updates, state = _with_seam(setting, lambda: update(grads, state, params))
    out.append((updates, state))
    params = apply(params, updates)
  return out


def _assert_same_values(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    # Equal values (NaN equal to NaN); the sign of a zero is not compared.
    np.testing.assert_array_equal(x, y, strict=True)


_DTYPES = [
  "float32",
  "bfloat16",
  pytest.param("float16", marks=pytest.mark.slow),
  pytest.param("float64", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize(
  "method",
  [
    "angulargrad_cos",
    "angulargrad_tan_wd",
    "sp",
    "sp_exact",
    "sp_nesterov",
    "adam_saliency",
    "insgd",
    "gal",
  ],
)
def test_seam_on_and_off_give_the_same_updates_and_states(method, dtype):
  _cpu_only()
  slow = method.startswith("sp") or method == "adam_saliency"
  if slow and dtype in ("float16", "float64") and method != "sp":
    pytest.skip("one SP program per extra dtype keeps the suite short; sp covers them")
  with jax.enable_x64(dtype == "float64"):
    on = _trajectory(True, method, jnp.dtype(dtype), steps=4)
    off = _trajectory(False, method, jnp.dtype(dtype), steps=4)
  for a, b in zip(on, off):
    _assert_same_values(a, b)
