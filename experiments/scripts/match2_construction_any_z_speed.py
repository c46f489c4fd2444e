"""anna forward at N = 2^20, B = 1, H = 8, d = 64, l = 1: z = 20 (indexed rows) vs z > log2 N (hashed rows), and
z = 23 on the scan plan (what the CPU plan fell back to before; the log says plan=cpu, now 'cpu_kernel'). Median of 3 after a compile."""
import sys, time, jax, jax.numpy as jnp, numpy as np
from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
n = 2**20
q, k, v = (jax.random.normal(jax.random.key(i), (1, n, 8, 64)) for i in range(3))
for z, plan in [(20, 'cpu_kernel'), (23, 'cpu_kernel'), (26, 'cpu_kernel'), (30, 'cpu_kernel'), (23, 'accelerator')]:
  config = ANNAConfig(num_tables=1, num_hashes=z, loop_plan=plan)
  proj = draw_projections(jax.random.key(z), 8, 64, config)
  f = jax.jit(lambda q, k, v, p: anna_attention(q, k, v, p, config)[0]).lower(q, k, v, proj).compile()
  jax.block_until_ready(f(q, k, v, proj))
  ts = []
  for _ in range(3):
    t0 = time.perf_counter(); jax.block_until_ready(f(q, k, v, proj)); ts.append(time.perf_counter() - t0)
  print(f'z={z} plan={plan}: {np.median(ts):.3f} s (runs {", ".join(f"{t:.3f}" for t in ts)})', flush=True)
