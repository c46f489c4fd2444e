import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from anna_jax.anna import draw_projections
from anna_jax.anna_softmax import ANNASoftmaxConfig, anna_softmax_attention
from anna_jax.oracle import anna_softmax_dense_reference
from anna_jax.sequence_parallel import sequence_parallel_anna_softmax


def inputs(n, config, heads=2, dim=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q, k, v = (jax.random.normal(key, (2, n, heads, dim)) for key in keys[:3])
  return q, k, v, draw_projections(keys[3], heads, dim, config)


@pytest.fixture(scope='module')
def mesh():
  assert jax.device_count() == 8  # tests/conftest.py asks XLA for 8 host devices
  return jax.make_mesh((8,), ('seq',))


@pytest.mark.parametrize('causal, masked', [(False, False), (True, True)])
def test_equals_single_device_anna_softmax_on_8_devices(mesh, causal, masked):
  n = 128
  config = ANNASoftmaxConfig(num_tables=3, num_hashes=3, chunk_size=8, window=128)
  q, k, v, proj = inputs(n, config)
  mask = (jnp.arange(n)[None, :] < jnp.array([[128], [77]])) if masked else None
  single, stats = anna_softmax_attention(q, k, v, proj, config, mask=mask, causal=causal)
  assert float(stats.dropped) == 0.0
  fn = jax.jit(lambda q, k, v: sequence_parallel_anna_softmax(q, k, v, proj, config, mesh, mask=mask, causal=causal,
                                                      capacity=16))
  sharded, sp_stats = fn(q, k, v)
  assert float(sp_stats['overflow_tokens']) == 0.0 and float(sp_stats['dropped_fraction']) == 0.0
  np.testing.assert_allclose(sharded, single, atol=2e-5)
  np.testing.assert_allclose(sharded, anna_softmax_dense_reference(q, k, v, proj, mask=mask, causal=causal), atol=2e-5)


def test_small_buffers_overflow_and_are_counted(mesh):
  config = ANNASoftmaxConfig(num_tables=2, num_hashes=1, chunk_size=8, window=64)  # 2 buckets: 2 busy devices
  q, k, v, proj = inputs(128, config, seed=1)
  out, stats = jax.jit(lambda q, k, v: sequence_parallel_anna_softmax(q, k, v, proj, config, mesh, capacity=2))(q, k, v)
  assert float(stats['overflow_tokens']) > 0
  assert out.shape == q.shape and bool(jnp.all(jnp.isfinite(out)))


def test_length_must_split_over_devices(mesh):
  config = ANNASoftmaxConfig(num_tables=1, num_hashes=1, chunk_size=8, window=8)
  q, k, v, proj = inputs(100, config)
  with pytest.raises(ValueError, match='divisible'):
    sequence_parallel_anna_softmax(q, k, v, proj, config, mesh)


def test_accelerator_plan_exports_for_cuda_with_only_the_scan_over_tables(mesh):
  # The loop plan reaches the sharded path: exported for CUDA, its only loop is the scan over tables (the CPU
  # plan, exported the same way, has its row and chunk loops: the check can fail).
  loops = {}
  for plan in ('accelerator', 'cpu'):
    config = ANNASoftmaxConfig(num_tables=3, num_hashes=3, chunk_size=8, window=32, loop_plan=plan)
    proj = draw_projections(jax.random.key(0), 2, 8, config)
    fn = jax.jit(lambda q, k, v: sequence_parallel_anna_softmax(q, k, v, proj, config, mesh, causal=True)[0])
    x = jax.ShapeDtypeStruct((2, 1024, 2, 8), jnp.bfloat16, sharding=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(None, 'seq')))
    module = export.export(fn, platforms=['cuda'])(x, x, x).mlir_module()
    loops[plan] = len(re.findall(r'stablehlo\.while', module))
  assert loops['accelerator'] == 1 and loops['cpu'] > 1, loops
