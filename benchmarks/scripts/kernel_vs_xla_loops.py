"""anna_softmax at 16K tokens (B 1, H 8, d 64, l 8, z 11, chunk 32, window 64): its CPU kernels (loop plan
'cpu_kernel') against the XLA loops ('cpu_xla'), in one process, median of 3 calls. Run from the repository root:
  .venv/bin/python benchmarks/scripts/kernel_vs_xla_loops.py
2026-12-03, this 2-core VM, nothing else running: benchmarks/results/cpu-2core-epyc-extra/kernel_vs_xla_loops.log."""
import time, jax, jax.numpy as jnp, numpy as np
import dataclasses
from anna_jax import anna_softmax as asm
from anna_jax.anna import draw_projections
from benchmarks import measure
measure.keep_freed_memory()
n,b,h,d=16384,1,8,64
ks = jax.random.split(jax.random.PRNGKey(0), 5)
q, k, v = (jax.random.normal(kk, (b, n, h, d)) for kk in ks[:3])
base = asm.ANNASoftmaxConfig(num_tables=8, num_hashes=11, chunk_size=32, window=64)
proj = draw_projections(ks[4], h, d, base)
def med(fn):
  jax.block_until_ready(fn(q,k,v)); ts=[]
  for _ in range(3):
    t=time.perf_counter(); jax.block_until_ready(fn(q,k,v)); ts.append(time.perf_counter()-t)
  return np.median(ts)
for name, plan in (('kernels', 'cpu_kernel'), ('xla loops', 'cpu_xla')):
  cfg = dataclasses.replace(base, loop_plan=plan)
  f = lambda q, k, v, cfg=cfg: asm.anna_softmax_attention(q, k, v, proj, cfg)[0]
  fwd = jax.jit(f)
  g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v)), argnums=(0, 1, 2)))
  print(name, 'forward %.3f s train %.3f s' % (med(fwd), med(g)), flush=True)
