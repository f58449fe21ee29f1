"""Test-wide setup: eight simulated CPU devices for the sharding tests.

Must run before JAX initialises its backend; on a machine with accelerators the
flag only affects the CPU platform.
"""

import jax

jax.config.update("jax_num_cpu_devices", 8)
