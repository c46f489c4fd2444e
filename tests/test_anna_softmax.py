import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anna_jax import cpu_kernel, plans
from anna_jax.anna import draw_projections
from anna_jax.anna_softmax import ANNASoftmaxConfig as ANNAConfig, anna_softmax_attention as anna_attention
from anna_jax.anna_softmax import keys_up_to, sorted_ranks
from anna_jax.baselines import draw_random_features, full_attention, lowrank_attention
from anna_jax.lsh import hash_codes
from anna_jax.oracle import anna_softmax_dense_reference as anna_dense_reference


def hash_buckets(x, projections):
  return hash_codes(x, projections, 'hyperplane')


def qkv(n, batch=2, heads=2, dim=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, (batch, n, heads, dim)) for key in keys)


def setup(n, config, seed=0, heads=2, dim=8):
  q, k, v = qkv(n, heads=heads, dim=dim, seed=seed)
  return q, k, v, draw_projections(jax.random.key(seed + 100), heads, dim, config)


def padding_mask(n, valid_lengths):
  return jnp.arange(n)[None, :] < jnp.asarray(valid_lengths)[:, None]


@pytest.mark.parametrize('causal, weighting, masked', [
    (False, 'softmax', False), (True, 'softmax', True), (False, 'uniform', True), (True, 'uniform', False)])
def test_anna_equals_dense_oracle_outputs_and_gradients(causal, weighting, masked):
  # n = 45 is not a multiple of the chunk, so internal padding is exercised too.
  n = 45
  config = ANNAConfig(num_tables=3, num_hashes=2, chunk_size=8, window=48, weighting=weighting)
  q, k, v, proj = setup(n, config)
  mask = padding_mask(n, [45, 30]) if masked else None

  def anna(q, k, v):
    return anna_attention(q, k, v, proj, config, mask=mask, causal=causal)

  def oracle(q, k, v):
    return anna_dense_reference(q, k, v, proj, mask=mask, causal=causal, weighting=weighting)

  out, stats = anna(q, k, v)
  assert float(stats.dropped) == 0.0 and float(stats.collisions) > 0
  np.testing.assert_allclose(out, oracle(q, k, v), atol=2e-5)
  probe = jax.random.normal(jax.random.key(7), out.shape)
  grads = jax.grad(lambda *x: jnp.sum(anna(*x)[0] * probe), argnums=(0, 1, 2))(q, k, v)
  grads_ref = jax.grad(lambda *x: jnp.sum(oracle(*x) * probe), argnums=(0, 1, 2))(q, k, v)
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, atol=5e-5)


def test_one_head_per_step_equals_batched_heads():
  # Long sequences run the (batch, head) loop one head at a time; force that path at a small n (a token budget
  # of 1). These are the XLA loops of the CPU plan 'cpu_xla', which 'auto' runs where no kernel can be built.
  n = 40
  config = ANNAConfig(num_tables=3, num_hashes=2, chunk_size=8, window=16, dense_up_to=0, loop_plan='cpu_xla')
  q, k, v, proj = setup(n, config, seed=4)
  mask = padding_mask(n, [40, 29])

  def loss(q, k, v, tuning=None):
    out, stats = anna_attention(q, k, v, proj, config, mask=mask, causal=True, tuning=tuning)
    return jnp.sum(jnp.sin(out)), (out, stats.dropped)

  (_, (batched, dropped)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  one_head = functools.partial(loss, tuning=plans.Tuning(token_budget=1))
  (_, (one_by_one, dropped_again)), grads_again = jax.value_and_grad(one_head, argnums=(0, 1, 2), has_aux=True)(
      q, k, v)
  assert float(dropped) > 0  # windows overflow, so both paths place the same windows, not just the full set
  np.testing.assert_allclose(one_by_one, batched, atol=1e-6)
  assert float(dropped_again) == float(dropped)
  for g, g_again in zip(grads, grads_again):
    np.testing.assert_allclose(g_again, g, atol=1e-6)


def test_small_windows_equal_oracle_when_no_bucket_overflows():
  # Many buckets and windows far shorter than n: still exact as long as nothing is dropped.
  n = 256
  config = ANNAConfig(num_tables=4, num_hashes=6, chunk_size=16, window=64)
  q, k, v, proj = setup(n, config, seed=3)
  out, stats = anna_attention(q, k, v, proj, config)
  assert float(stats.dropped) == 0.0
  np.testing.assert_allclose(out, anna_dense_reference(q, k, v, proj), atol=2e-5)


def test_union_semantics_each_key_counted_once():
  # With uniform weights, each query's output is the plain mean of its colliding values; a key
  # colliding in several tables would pull the mean towards itself if it were counted twice.
  n = 32
  config = ANNAConfig(num_tables=6, num_hashes=1, chunk_size=8, window=32, weighting='uniform')
  q, k, v, proj = setup(n, config, seed=5)
  q_buckets, k_buckets = hash_buckets(q, proj), hash_buckets(k, proj)
  collide = q_buckets[..., :, None] == k_buckets[..., None, :]  # (batch, heads, tables, n, n)
  assert int(jnp.max(jnp.sum(collide, axis=2))) > 1  # some pairs collide in several tables
  union = jnp.any(collide, axis=2).astype(jnp.float32)
  expected = jnp.einsum('bhqk,bkhd->bqhd', union / jnp.sum(union, -1, keepdims=True), v)
  out, _ = anna_attention(q, k, v, proj, config)
  np.testing.assert_allclose(out, expected, atol=1e-5)


# The plan's own path (C++ kernel on CPU), the XLA sorted chunks, the XLA dense layout (n <= dense_up_to: XLA plans
# only; the kernel serves every length).
LAYOUTS = [('auto', 0), ('accelerator', 0), ('accelerator', 256)]
LAYOUT_IDS = ['plan', 'sorted', 'dense']


@pytest.mark.parametrize('plan, dense_up_to', LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize('causal', [False, True])
def test_collision_count_matches_dense_count(causal, plan, dense_up_to):
  n = 40
  config = ANNAConfig(num_tables=3, num_hashes=2, chunk_size=8, window=8, dense_up_to=dense_up_to, loop_plan=plan)
  q, k, v, proj = setup(n, config, seed=1)
  mask = padding_mask(n, [40, 25])
  _, stats = anna_attention(q, k, v, proj, config, mask=mask, causal=causal)
  collide = hash_buckets(q, proj)[..., :, None] == hash_buckets(k, proj)[..., None, :]
  collide &= mask[:, None, None, :, None] & mask[:, None, None, None, :]
  if causal:
    collide &= jnp.tril(jnp.ones((n, n), bool))
  assert float(stats.collisions) == float(jnp.sum(collide))


def attended_by_windows(q_buckets, k_buckets, chunk, window, causal=False):
  """Per table, pairs that share a bucket AND fall in the query's window, placed as the module docstring says:
  not causal, sort by (bucket, position) and take the window from the first key of the chunk's lowest bucket;
  causal, the latest `window` keys of the query's bucket at or before it. Plain numpy."""
  tables, n = q_buckets.shape
  attended = np.zeros((tables, n, n), bool)
  for t in range(tables):
    if causal:
      for i in range(n):
        same = np.flatnonzero((k_buckets[t] == q_buckets[t][i]) & (np.arange(n) <= i))
        attended[t, i, same[-window:]] = True
      continue
    q_order, k_order = np.argsort(q_buckets[t], kind='stable'), np.argsort(k_buckets[t], kind='stable')
    for c in range(n // chunk):
      queries = q_order[c * chunk:(c + 1) * chunk]
      start = np.searchsorted(k_buckets[t][k_order], q_buckets[t][queries[0]], side='left')
      keys = k_order[min(start, n - window):][:window]
      for i in queries:
        attended[t, i, keys] = k_buckets[t][keys] == q_buckets[t][i]
  return attended


@pytest.mark.parametrize('weighting, causal', [('softmax', False), ('uniform', False), ('softmax', True)])
@pytest.mark.parametrize('plan, dense_up_to', LAYOUTS, ids=LAYOUT_IDS)
def test_overflowing_windows_attend_the_union_of_attended_pairs(weighting, causal, plan, dense_up_to):
  # Windows far smaller than the buckets: most collisions are dropped, and a pair dropped by one table but
  # attended by another must still count, exactly once.
  n = 64
  config = ANNAConfig(num_tables=3, num_hashes=1, chunk_size=8, window=8, weighting=weighting,
                      dense_up_to=dense_up_to, loop_plan=plan)
  q, k, v, proj = setup(n, config, seed=6)
  out, stats = anna_attention(q, k, v, proj, config, causal=causal)
  assert float(stats.dropped_fraction) > 0.4
  q_buckets, k_buckets = np.asarray(hash_buckets(q, proj)), np.asarray(hash_buckets(k, proj))
  expected = np.zeros(out.shape)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      union = attended_by_windows(q_buckets[b, h], k_buckets[b, h], 8, 8, causal).any(axis=0)
      scores = np.asarray(q[b, :, h] @ k[b, :, h].T) / np.sqrt(q.shape[-1])
      weights = np.where(union, np.exp(scores) if weighting == 'softmax' else 1.0, 0.0)
      expected[b, :, h] = weights @ np.asarray(v[b, :, h]) / np.maximum(weights.sum(-1, keepdims=True), 1e-30)
  np.testing.assert_allclose(out, expected, atol=2e-5)


def test_causal_with_heavy_dropping_never_reads_the_future():
  # Which keys a causal query's window holds must not depend on where later tokens hash. With chunk-wide
  # windows, replacing only the tokens after position 128 moved outputs at positions <= 128 by up to 2.58.
  n, cut = 256, 128
  config = ANNAConfig(num_tables=4, num_hashes=2, chunk_size=8, window=8)
  q, k, v, proj = setup(n, config, heads=2, dim=16, seed=3)
  future = qkv(n, heads=2, dim=16, seed=13)
  changed = [jnp.where(jnp.arange(n)[None, :, None, None] > cut, f, x) for x, f in zip((q, k, v), future)]
  for plan, dense_up_to in LAYOUTS:  # the kernel (on CPU), the XLA sorted chunks and the XLA dense layout
    planned = dataclasses.replace(config, loop_plan=plan, dense_up_to=dense_up_to and n)
    before, stats = anna_attention(q, k, v, proj, planned, causal=True)
    after, _ = anna_attention(*changed, proj, planned, causal=True)
    assert float(stats.dropped_fraction) > 0.5  # most collisions fall outside the windows
    np.testing.assert_allclose(after[:, : cut + 1], before[:, : cut + 1], atol=1e-5)
    assert float(jnp.max(jnp.abs(after[:, cut + 1:] - before[:, cut + 1:]))) > 1e-2  # the check can fail


def test_overflow_is_counted_and_changes_output():
  n = 64
  config = ANNAConfig(num_tables=2, num_hashes=1, chunk_size=8, window=8)
  q, k, v, proj = setup(n, config, seed=2)
  out, stats = anna_attention(q, k, v, proj, config)
  assert 0.5 < float(stats.dropped_fraction) < 1.0  # 2 buckets of ~32 keys, 8-key windows
  assert float(jnp.max(jnp.abs(out - anna_dense_reference(q, k, v, proj)))) > 1e-2


@pytest.mark.parametrize('causal', [False, True])
def test_single_bucket_full_window_equals_full_attention(causal):
  n = 40
  config = ANNAConfig(num_tables=2, num_hashes=0, chunk_size=16, window=48)
  q, k, v, proj = setup(n, config)
  mask = padding_mask(n, [40, 33])
  out, stats = anna_attention(q, k, v, proj, config, mask=mask, causal=causal)
  np.testing.assert_allclose(out, full_attention(q, k, v, mask=mask, causal=causal), atol=2e-5)
  assert float(stats.dropped) == 0.0


@pytest.mark.parametrize('kind', ['anna_softmax', 'full', 'lowrank'])
def test_padding_does_not_change_valid_outputs(kind):
  n, extra = 24, 9
  config = ANNAConfig(num_tables=3, num_hashes=2, chunk_size=8, window=40)
  q, k, v, proj = setup(n, config)
  features = draw_random_features(jax.random.key(4), 2, 8, 16)
  attend = {
      'anna_softmax': lambda q, k, v, m: anna_attention(q, k, v, proj, config, mask=m)[0],
      'full': lambda q, k, v, m: full_attention(q, k, v, mask=m),
      'lowrank': lambda q, k, v, m: lowrank_attention(q, k, v, features, mask=m),
  }[kind]
  garbage = [100.0 * x for x in qkv(extra, seed=9)]
  padded = [jnp.concatenate([x, g], axis=1) for x, g in zip((q, k, v), garbage)]
  out = attend(q, k, v, jnp.ones((2, n), bool))
  out_padded = attend(*padded, padding_mask(n + extra, [n, n]))
  np.testing.assert_allclose(out_padded[:, :n], out, atol=2e-5)
  np.testing.assert_array_equal(out_padded[:, n:], 0.0)


@pytest.mark.parametrize('kind', ['anna_softmax-plan', 'anna_softmax-sorted', 'anna_softmax-dense', 'full',
                                  'lowrank'])
def test_causal_has_no_leakage_in_outputs_or_gradients(kind):
  # Windows of 8 keys in buckets of about 12: collisions drop, so the windows' placement is under test too.
  n, cut = 48, 20
  plan, dense_up_to = dict(zip(LAYOUT_IDS, LAYOUTS)).get(kind.partition('-')[2], ('auto', 0))
  config = ANNAConfig(num_tables=3, num_hashes=2, chunk_size=8, window=8, loop_plan=plan, dense_up_to=dense_up_to)
  q, k, v, proj = setup(n, config)
  features = draw_random_features(jax.random.key(4), 2, 8, 16)
  attend = {
      'anna_softmax': lambda q, k, v: anna_attention(q, k, v, proj, config, causal=True)[0],
      'full': lambda q, k, v: full_attention(q, k, v, causal=True),
      'lowrank': lambda q, k, v: lowrank_attention(q, k, v, features, causal=True),
  }[kind.partition('-')[0]]
  if kind.startswith('anna_softmax'):
    assert float(anna_attention(q, k, v, proj, config, causal=True)[1].dropped_fraction) > 0.1
  future = qkv(n, seed=11)
  changed = [jnp.where(jnp.arange(n)[None, :, None, None] > cut, f, x) for x, f in zip((q, k, v), future)]
  before, after = attend(q, k, v), attend(*changed)
  np.testing.assert_allclose(after[:, : cut + 1], before[:, : cut + 1], atol=1e-5)
  assert float(jnp.max(jnp.abs(after[:, cut + 1 :] - before[:, cut + 1 :]))) > 1e-3
  # Gradients of the outputs up to `cut` reach no input after it (and do reach the inputs before it).
  probe = jax.random.normal(jax.random.key(5), q.shape)[:, : cut + 1]
  grads = jax.grad(lambda *x: jnp.sum(attend(*x)[:, : cut + 1] * probe), argnums=(0, 1, 2))(q, k, v)
  for g in grads:
    np.testing.assert_array_equal(g[:, cut + 1 :], 0.0)
    assert float(jnp.max(jnp.abs(g[:, : cut + 1]))) > 1e-4


def test_query_without_colliding_key_outputs_zeros():
  config = ANNAConfig(num_tables=1, num_hashes=1, chunk_size=4, window=8)
  proj = jnp.ones((1, 1, 4, 1))  # bucket = sign of the coordinate sum
  q = jnp.ones((1, 8, 1, 4))
  k = -jnp.ones((1, 8, 1, 4))  # every key in the other bucket
  out, stats = anna_attention(q, k, k, proj, config)
  np.testing.assert_array_equal(out, 0.0)
  assert float(stats.collisions) == 0.0 and float(stats.dropped_fraction) == 0.0


def test_deterministic_and_jit_matches_eager():
  config = ANNAConfig(num_tables=3, num_hashes=3, chunk_size=8, window=16)
  q, k, v, proj = setup(64, config)
  _, _, _, proj_again = setup(64, config)
  np.testing.assert_array_equal(proj, proj_again)
  eager, _ = anna_attention(q, k, v, proj, config)
  jitted = jax.jit(lambda q, k, v: anna_attention(q, k, v, proj, config)[0])
  np.testing.assert_array_equal(jitted(q, k, v), jitted(q, k, v))
  np.testing.assert_allclose(jitted(q, k, v), eager, atol=1e-6)


def test_lowrank_approximates_softmax_attention():
  q, k, v = qkv(64, dim=16)
  q, k = 0.3 * q, 0.3 * k  # small logits: where random features approximate softmax well
  features = draw_random_features(jax.random.key(1), 2, 16, 2048)
  for causal in (False, True):
    approx = lowrank_attention(q, k, v, features, causal=causal)
    exact = full_attention(q, k, v, causal=causal)
    assert float(jnp.mean(jnp.abs(approx - exact))) < 0.05 * float(jnp.mean(jnp.abs(exact)))


def test_sort_key_overflow_is_a_clear_error():
  config = ANNAConfig(num_tables=1, num_hashes=20, chunk_size=1024, window=1024)
  q = jnp.zeros((1, 4096, 1, 4))
  with pytest.raises(ValueError, match='overflows int32'):
    anna_attention(q, q, q, jnp.zeros((1, 1, 4, 20)), config)


def test_forward_at_256k_tokens_without_an_n_by_n_tensor():
  n = 2**18  # a dense n x n float32 matrix would take 256 GiB
  config = ANNAConfig(num_tables=2, num_hashes=8, chunk_size=64, window=64)
  proj = draw_projections(jax.random.key(0), 1, 8, config)
  x = jax.random.normal(jax.random.key(1), (1, n, 1, 8))
  fn = jax.jit(lambda x: anna_attention(x, x, x, proj, config))
  memory = fn.lower(x).compile().memory_analysis()
  assert memory.temp_size_in_bytes < 2**30
  out, stats = fn(x)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  assert 0.0 <= float(stats.dropped_fraction) <= 1.0


def test_dense_window_counts_agree_by_product_and_by_comparison():
  # The dense layout counts, per table, the valid keys of a slot's bucket at positions <= the slot:
  # by a product with one-hot buckets (few buckets) or by comparison (many); both against a plain loop.
  q_b, k_b = np.asarray(jax.random.randint(jax.random.key(0), (2, 3, 20), 0, 4))
  valid = np.arange(20) % 7 != 3
  expected = [np.array([[np.sum((k_b[t, :x + 1] == b[t, x]) & valid[:x + 1]) for x in range(20)] for t in range(3)])
              for b in (q_b, k_b)]
  for num_buckets in (4, 1000):  # 1000 > n: the comparison
    for got, want in zip(keys_up_to(jnp.asarray(q_b), jnp.asarray(k_b), jnp.asarray(valid), num_buckets), expected):
      np.testing.assert_array_equal(got, want)
    # Not causal: each slot's place in (bucket, position) order, against numpy's stable sort.
    ranks = np.argsort(np.argsort(q_b * 20 + np.arange(20), axis=-1), axis=-1)
    np.testing.assert_array_equal(sorted_ranks(jnp.asarray(q_b), num_buckets), ranks)


KERNEL_CASES = {  # name: (n, heads, dim, config overrides, how q and k are drawn)
    'overflowing windows, dim 20 (generic width)': (70, 2, 20, dict(num_hashes=2, chunk_size=8, window=8), 'normal'),
    'cross-polytope, padding': (45, 2, 16, dict(num_hashes=1, family='crosspolytope', window=16), 'normal'),
    'code space past 4 n (sorted, not counted)': (40, 1, 8, dict(num_hashes=14, num_tables=4), 'normal'),
    'every key in one bucket': (50, 1, 16, dict(num_hashes=3, chunk_size=8, window=8), 'one bucket'),
    'uniform weights': (45, 2, 16, dict(num_hashes=2, window=8, weighting='uniform'), 'normal'),
}


@pytest.mark.skipif(not cpu_kernel.available(), reason='no C++ compiler')
@pytest.mark.parametrize('case', KERNEL_CASES)
@pytest.mark.parametrize('causal', [False, True])
def test_cpu_kernel_equals_the_accelerator_plan(case, causal):
  # The kernel must attend exactly the pairs the XLA plans attend, dropped ones included: outputs, gradients of
  # q, k and v, and the collision and drop counts, against the accelerator plan on the same hash functions;
  # in both of its walks (query by query for small heads, its keys in one block or in many; table by table for
  # long heads).
  n, heads, dim, overrides, draw = KERNEL_CASES[case]
  config = ANNAConfig(**{**dict(num_tables=3, chunk_size=8, window=16), **overrides})
  q, k, v, proj = setup(n, config, heads=heads, dim=dim, seed=len(case))
  if draw == 'one bucket':  # one direction for every query and key, lengths differ: one bucket in every table
    q, k = (jnp.abs(x[..., :1]) * jnp.ones(dim) + 0.1 for x in (q, k))
  mask = padding_mask(n, [n, n - 13])

  def run(plan, tuning=None):
    plan_config = dataclasses.replace(config, loop_plan=plan, dense_up_to=0)

    def loss(q, k, v):
      out, stats = anna_attention(q, k, v, proj, plan_config, mask=mask, causal=causal, tuning=tuning)
      return jnp.sum(jnp.sin(out)), (out, stats)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

  (_, (want, want_stats)), want_grads = run('accelerator')
  if draw == 'one bucket' or case.startswith('overflowing'):
    assert float(want_stats.dropped) > 0  # the windows cut: the same keys must be dropped
  for query_major_bytes, key_block_bytes in ((2**40, 2**40), (2**40, 2**11), (0, 2**40)):
    tuning = plans.Tuning(query_major_bytes=query_major_bytes, key_block_bytes=key_block_bytes)
    (_, (out, stats)), grads = run('cpu_kernel', tuning)
    np.testing.assert_allclose(out, want, atol=1e-5)
    for g, g_want in zip(grads, want_grads):
      np.testing.assert_allclose(g, g_want, atol=1e-5)
    assert float(stats.collisions) == float(want_stats.collisions) > 0
    assert float(stats.dropped) == float(want_stats.dropped)
