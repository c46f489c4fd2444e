import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.anna_softmax import ANNASoftmaxConfig, anna_softmax_attention
from anna_jax.lsh import hash_codes
from anna_jax.oracle import anna_softmax_dense_reference
from anna_jax.sequence_parallel import owner, sequence_parallel_anna, sequence_parallel_anna_softmax


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


def sent(buckets, num_buckets, devices, capacity):
  """(tables, n) bool: the token left its device: among the tokens of its device bound for the same owner of
  the bucket, it is one of the first `capacity` by position (the module's send rule)."""
  tables, n = buckets.shape
  owner = buckets * devices // num_buckets
  source = np.arange(n) // (n // devices)
  rank = np.array([[np.sum((owner[t, :i] == owner[t, i]) & (source[:i] == source[i])) for i in range(n)]
                   for t in range(tables)])
  return rank < capacity


def test_overflowing_buffers_drop_exactly_the_tokens_the_send_rule_names(mesh):
  # 2 buckets on 8 devices, 2 slots per buffer: most tokens stay home. A pair counts in the first table where it
  # collides, if both its tokens were sent there (later tables skip pairs that collided earlier): a numpy oracle.
  n, capacity = 128, 2
  config = ANNASoftmaxConfig(num_tables=2, num_hashes=1, chunk_size=8, window=64)
  q, k, v, proj = inputs(n, config, seed=1)
  out, stats = jax.jit(lambda q, k, v: sequence_parallel_anna_softmax(q, k, v, proj, config, mesh,
                                                                      capacity=capacity))(q, k, v)
  assert float(stats['overflow_tokens']) > n
  q_b, k_b = (np.asarray(hash_codes(x, proj, 'hyperplane')) for x in (q, k))  # (batch, heads, tables, n)
  expected = np.zeros(out.shape)
  for b in range(2):
    for h in range(2):
      q_sent, k_sent = (sent(x[b, h], 2, 8, capacity) for x in (q_b, k_b))
      collide = q_b[b, h][:, :, None] == k_b[b, h][:, None, :]  # (tables, n, n)
      first = np.argmax(collide, axis=0)
      pairs = np.any(collide, axis=0) & np.take_along_axis(q_sent[:, :, None] & k_sent[:, None, :],
                                                          first[None], axis=0)[0]
      scores = np.asarray(q[b, :, h] @ k[b, :, h].T) / np.sqrt(8)
      weights = np.where(pairs, np.exp(scores - scores.max(-1, keepdims=True)), 0.0)
      expected[b, :, h] = weights @ np.asarray(v[b, :, h]) / np.maximum(weights.sum(-1, keepdims=True), 1e-30)
  np.testing.assert_allclose(out, expected, atol=2e-5)


def test_length_must_split_over_devices(mesh):
  config = ANNASoftmaxConfig(num_tables=1, num_hashes=1, chunk_size=8, window=8)
  q, k, v, proj = inputs(100, config)
  with pytest.raises(ValueError, match='divisible'):
    sequence_parallel_anna_softmax(q, k, v, proj, config, mesh)


def cuda_while_loops(mesh, attend):
  """Per loop plan, the loops (stablehlo.while) of attend(q, k, v, plan), exported for CUDA at n = 1024."""
  loops = {}
  for plan in ('accelerator', 'cpu_xla'):
    x = jax.ShapeDtypeStruct((2, 1024, 2, 8), jnp.bfloat16, sharding=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(None, 'seq')))
    module = export.export(jax.jit(lambda q, k, v, plan=plan: attend(q, k, v, plan)), platforms=['cuda'])(
        x, x, x).mlir_module()
    assert re.search(r'all_to_all', module)
    loops[plan] = len(re.findall(r'stablehlo\.while', module))
  return loops


def test_accelerator_plan_exports_for_cuda_with_only_the_scan_over_tables(mesh):
  # The loop plan reaches the sharded path: exported for CUDA, its only loop is the scan over tables (the CPU
  # plan, exported the same way, has its row and chunk loops: the check can fail).
  def attend(q, k, v, plan):
    config = ANNASoftmaxConfig(num_tables=3, num_hashes=3, chunk_size=8, window=32, loop_plan=plan)
    proj = draw_projections(jax.random.key(0), 2, 8, config)
    return sequence_parallel_anna_softmax(q, k, v, proj, config, mesh, causal=True)[0]

  loops = cuda_while_loops(mesh, attend)
  assert loops['accelerator'] == 1 and loops['cpu_xla'] > 1, loops


# --- sequence_parallel_anna: Algorithm 1 with the sequence sharded ----------------------------------------------

def owned_by_one_device(x, proj, num_devices):
  """Vectors of x's shape whose buckets, in every table, all belong to device 0: every device sends all its
  records to one owner, which the default buffers cannot take in one round. Drawn by rejection per head."""
  batch, n, heads, dim = x.shape
  pool = jax.random.normal(jax.random.key(42), (1, 500_000, heads, dim))
  owned = np.all(np.asarray(owner(hash_codes(pool, proj, 'hyperplane'), num_devices)) == 0, axis=2)[0]
  out = np.zeros(x.shape, np.float32)
  for h in range(heads):
    chosen = np.flatnonzero(owned[h])[: batch * n]
    assert len(chosen) == batch * n
    out[:, :, h] = np.asarray(pool[0, chosen, h]).reshape(batch, n, dim)
  return jnp.asarray(out)


def anna_case(n, z, family='hyperplane', seed=0, plan='auto'):
  config = ANNAConfig(num_tables=3, num_hashes=z, family=family, loop_plan=plan)
  q, k, v, proj = inputs(n, config, seed=seed)
  return config, q, k, v, proj


@pytest.mark.parametrize('z, family, causal, masked, capacity, skewed, per_exchange', [
    (2, 'hyperplane', False, False, None, False, 0),  # 4 buckets <= n / P: tables summed across devices
    (2, 'hyperplane', True, True, None, False, 0),  # the same, causal: an exclusive scan over devices
    (6, 'hyperplane', True, True, 1, False, 0),  # records routed to owners; 1 slot per buffer: many rounds
    (8, 'hyperplane', False, True, None, True, 0),  # every bucket owned by device 0: its buffers overflow
    (2, 'crosspolytope', True, False, None, False, 1),  # 256 buckets: routed; one table at a time
])
def test_sequence_parallel_anna_equals_single_device_anna(mesh, z, family, causal, masked, capacity, skewed,
                                                          per_exchange):
  n = 128
  config, q, k, v, proj = anna_case(n, z, family)
  if skewed:
    q = k = owned_by_one_device(q, proj, mesh.shape['seq'])
  mask = (jnp.arange(n)[None, :] < jnp.array([[128], [77]])) if masked else None
  weights = jnp.sin(jnp.arange(8.0))

  def single(v):
    return anna_attention(q, k, v, proj, config, mask=mask, causal=causal)

  def sharded(v):
    return sequence_parallel_anna(q, k, v, proj, config, mesh, mask=mask, causal=causal, capacity=capacity,
                                  tables_per_exchange=per_exchange)

  def output_and_v_gradient(attend):  # one compiled function per side
    def loss(v):
      out, stats = attend(v)
      return jnp.sum(out * weights), (out, stats)
    (_, (out, stats)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(v)
    return out, stats, grad

  with jax.set_mesh(mesh):  # the mesh's axes are Explicit: the loss of sharded outputs is taken under it
    (out, stats, grad), (sp_out, sp_stats, sp_grad) = map(output_and_v_gradient, (single, sharded))
  np.testing.assert_allclose(sp_out, out, atol=2e-6)
  np.testing.assert_allclose(sp_grad, grad, atol=2e-6)
  for name in ('no_collision_fraction', 'mean_collisions'):
    np.testing.assert_allclose(sp_stats[name], getattr(stats, name), rtol=1e-6)
  rounds = int(sp_stats['rounds'])  # exchange rounds: 0 when dense; several when a buffer overflowed
  assert (rounds == 0) == (family == 'hyperplane' and z == 2)
  assert rounds > 1 or (capacity != 1 and not skewed)  # the overflow cases do overflow


def test_sequence_parallel_anna_refuses_codes_past_int32_and_uneven_table_groups(mesh):
  config, q, k, v, proj = anna_case(128, 32)
  with pytest.raises(ValueError, match='int32'):
    sequence_parallel_anna(q, k, v, proj, config, mesh)
  config, q, k, v, proj = anna_case(128, 4)
  with pytest.raises(ValueError, match='divide the 3 tables'):
    sequence_parallel_anna(q, k, v, proj, config, mesh, tables_per_exchange=2)


def test_sequence_parallel_anna_exports_for_cuda_without_device_or_chunk_loops(mesh):
  # Accelerator plan, causal, routed: the only loops are the rounds of the exchange and the local walk's scan
  # over tables. The XLA CPU plan ('cpu_xla', as 'auto' runs without a compiler) adds its row loop: the count
  # can fail.

  def attend(q, k, v, plan):
    config = ANNAConfig(num_tables=3, num_hashes=12, loop_plan=plan)
    proj = draw_projections(jax.random.key(0), 2, 8, config)
    return sequence_parallel_anna(q, k, v, proj, config, mesh, causal=True)[0]

  loops = cuda_while_loops(mesh, attend)
  assert loops['accelerator'] == 2 and loops['cpu_xla'] > 2, loops


def test_straight_through_anna_trains_q_and_k_under_a_sequence_mesh_as_on_one_device(mesh):
  # attention.anna.straight_through is applied after the plan is chosen, so a sequence-parallel layer gets the
  # same q and k gradients (the collision kernel's, over the gathered sequence) as one device. Inputs laid out as
  # the Trainer lays them out: tokens split over the mesh, with a mask.
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec

  from anna_jax.attention import AttentionConfig, make_attention
  config = ANNAConfig(num_tables=3, num_hashes=2, straight_through=True)
  q, k, v, _ = inputs(64, config)
  mask = jnp.arange(64)[None, :] < jnp.array([[64], [50]])
  layer = make_attention(AttentionConfig(kind='anna', anna=config), 2, 8, rngs=nnx.Rngs(0))
  weights = jnp.sin(jnp.arange(8.0))
  grads = jax.jit(jax.grad(lambda q, k, v, mask: jnp.sum(layer(q, k, v, mask=mask, causal=True)[0] * weights),
                           argnums=(0, 1, 2)))
  one = grads(q, k, v, mask)
  split_over = NamedSharding(mesh, PartitionSpec(None, 'seq'))
  with jax.set_mesh(mesh):
    split = grads(*(jax.device_put(x, split_over) for x in (q, k, v, mask)))
  assert float(jnp.max(jnp.abs(one[0]))) > 1e-3
  for a, b in zip(split, one):
    np.testing.assert_allclose(a, b, atol=2e-6)
