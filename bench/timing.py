"""Timing helpers shared by every benchmark: medians of repeated jitted calls.

Machines are shared and noisy, so every benchmark reports ratios to a baseline
measured in the same run, interleaving the candidates so drift hits all alike.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import numpy as np


def block(tree: Any) -> Any:
  """Waits for every array in ``tree``."""
  return jax.block_until_ready(tree)


def time_calls(
  fns: dict[str, Callable[[], Any]], reps: int = 10, warmup: int = 2
) -> dict[str, dict[str, float]]:
  """Times zero-argument callables, interleaved round-robin.

  Each callable is called ``warmup`` times (compilation), then ``reps`` rounds
  call each once. Returns, per name, the median, the 25th and 75th percentiles
  and the minimum, in seconds.
  """
  for fn in fns.values():
    for _ in range(warmup):
      block(fn())
  samples: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      block(fn())
      samples[name].append(time.perf_counter() - t0)
  out = {}
  for name, s in samples.items():
    a = np.asarray(s)
    out[name] = {
      "median": float(statistics.median(s)),
      "p25": float(np.percentile(a, 25)),
      "p75": float(np.percentile(a, 75)),
      "min": float(a.min()),
    }
  return out


def ratios(results: dict[str, dict[str, float]], baseline: str) -> dict[str, float]:
  """Median time of each entry divided by the baseline's median."""
  base = results[baseline]["median"]
  return {k: v["median"] / base for k, v in results.items()}


def machine_description() -> str:
  """One line naming the JAX backend and device, for results tables."""
  import os
  import platform

  dev = jax.devices()[0]
  kept = "MALLOC_TRIM_THRESHOLD_" in os.environ
  return (
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
    f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}); malloc "
    + ("keeps freed memory (make bench's settings)" if kept else "default settings")
  )
