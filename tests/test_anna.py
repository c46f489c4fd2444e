"""The paper's ANNA (Algorithm 1) against its dense oracle, and the LSH families it hashes with."""

import dataclasses
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anna_jax import cpu_kernel, lsh, plans
from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.oracle import anna_dense_reference


def qkv(n, batch=2, heads=2, dim=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, (batch, n, heads, dim)) for key in keys)


def padding_mask(n, valid_lengths):
  return jnp.arange(n)[None, :] < jnp.asarray(valid_lengths)[:, None]


# The CPU's own path: the C++ kernels, or (on a machine without a compiler) the XLA loops, as 'auto' picks.
CPU_PLAN = 'cpu_kernel' if cpu_kernel.available() else 'cpu_xla'


def assert_equals_oracle(q, k, v, proj, config, mask, causal, grad_atol=2e-5, tuning=None):
  """`anna` against the dense oracle: outputs, and v-gradients under a random probe. Returns anna's stats."""
  def anna(v):
    return anna_attention(q, k, v, proj, config, mask=mask, causal=causal, tuning=tuning)

  def oracle(v):
    return anna_dense_reference(q, k, v, proj, family=config.family, mask=mask, causal=causal)

  out, stats = anna(v)
  np.testing.assert_allclose(out, oracle(v), atol=2e-5)
  probe = jax.random.normal(jax.random.key(8), out.shape)
  grad = jax.grad(lambda v: jnp.sum(anna(v)[0] * probe))(v)
  np.testing.assert_allclose(grad, jax.grad(lambda v: jnp.sum(oracle(v) * probe))(v), atol=grad_atol)
  return stats


CASES = [  # (family, tables, hashes, crosspolytope_dim): the paper's ranges, l up to 96 and z up to 6
    ('hyperplane', 1, 1, 0), ('hyperplane', 8, 3, 0), ('hyperplane', 96, 6, 0), ('hyperplane', 40, 2, 0),
    ('crosspolytope', 4, 1, 0), ('crosspolytope', 16, 2, 4), ('crosspolytope', 32, 6, 2),
    ('crosspolytope', 3, 5, 0),  # (2 * 8)**5 = 2**20 codes: more buckets than keys, the sorted path
    ('crosspolytope', 2, 6, 64),  # 128**6 = 2**42 codes: past int32, grouped by a lexicographic sort
]


@pytest.mark.parametrize('family, tables, hashes, cp_dim', CASES)
@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('plan', [CPU_PLAN, 'accelerator'])
def test_equals_dense_oracle_outputs_and_v_gradients(family, tables, hashes, cp_dim, causal, plan):
  n = 100
  config = ANNAConfig(num_tables=tables, num_hashes=hashes, family=family, crosspolytope_dim=cp_dim,
                      loop_plan=plan)
  q, k, v = qkv(n, seed=tables + hashes)
  proj = draw_projections(jax.random.key(tables), 2, 8, config)
  # Batch row 1 is padded after 70 tokens: padded keys never count and padded queries output zeros.
  mask = padding_mask(n, [n, 70])

  def anna(v):
    return anna_attention(q, k, v, proj, config, mask=mask, causal=causal)

  def oracle(v):
    return anna_dense_reference(q, k, v, proj, family=family, mask=mask, causal=causal)

  out, stats = anna(v)
  expected = oracle(v)
  np.testing.assert_allclose(out, expected, atol=2e-5)
  np.testing.assert_array_equal(out[1, 70:], 0.0)  # padded queries
  assert 0.0 <= float(stats.no_collision_fraction) <= 1.0 and float(stats.mean_collisions) > 0
  probe = jax.random.normal(jax.random.key(7), out.shape)
  grad = jax.grad(lambda v: jnp.sum(anna(v)[0] * probe))(v)
  np.testing.assert_allclose(grad, jax.grad(lambda v: jnp.sum(oracle(v) * probe))(v), atol=2e-5)


# Every table in one pass; 3 + 3 + 2 tables; 5 + 3 (a table's bucket sums: 65 ids x 8 floats x 4 bytes).
@pytest.mark.parametrize('group_bytes', [2**28, 3 * 65 * 4 * 8, 5 * 65 * 4 * 8])
@pytest.mark.parametrize('causal', [False, True])
def test_cpu_kernel_table_groups_and_head_chunks_equal_the_oracle(group_bytes, causal):
  # 8 tables of 2**6 buckets, 4 heads, batch 3: with the small budget one head per task and 3 passes of 3, 3
  # and 2 tables, partial sums carried in the output between passes; with the large one 2 heads per task.
  tuning = plans.Tuning(group_bytes=group_bytes)
  n = 100
  config = ANNAConfig(num_tables=8, num_hashes=6, loop_plan=CPU_PLAN)
  q, k, v = qkv(n, batch=3, heads=4, seed=5)
  proj = draw_projections(jax.random.key(5), 4, 8, config)
  mask = padding_mask(n, [n, 61, 1])
  stats = assert_equals_oracle(q, k, v, proj, config, mask, causal, tuning=tuning)
  accelerator = dataclasses.replace(config, loop_plan='accelerator')
  _, stats_too = anna_attention(q, k, v, proj, accelerator, mask=mask, causal=causal)
  assert float(stats.mean_collisions) == float(stats_too.mean_collisions)
  assert float(stats.no_collision_fraction) == float(stats_too.no_collision_fraction)


def test_cpu_kernel_hyperplane_codes_equal_xla_codes():
  config = ANNAConfig(num_tables=5, num_hashes=7)
  x = qkv(203, batch=2, heads=3, dim=8, seed=4)[0]  # 203 tokens: partial blocks and register tiles
  proj = draw_projections(jax.random.key(4), 3, 8, config)
  kernel = cpu_kernel.hyperplane_codes(x, proj)
  np.testing.assert_array_equal(kernel, jnp.transpose(lsh.hash_codes(x, proj, 'hyperplane'), (0, 3, 1, 2)))
  np.testing.assert_array_equal(jax.jit(cpu_kernel.hyperplane_codes)(x, proj), kernel)  # inside jit too


def test_blocked_hashing_equals_hashing_at_once():
  config = ANNAConfig(num_tables=3, num_hashes=2, family='crosspolytope')  # the CPU plan's XLA hashing
  q, k, _ = qkv(100, seed=2)
  proj = draw_projections(jax.random.key(2), 2, 8, config)
  whole = lsh.bucket_ids(q, k, proj, 'crosspolytope')
  blocked = lsh.bucket_ids(q, k, proj, 'crosspolytope', block_size=32)  # 4 blocks, the last overlapping
  for a, b in zip(whole[:2], blocked[:2]):
    np.testing.assert_array_equal(a, b)
  assert whole[2] == blocked[2] == 16**2


def test_cpu_kernel_refuses_bucket_ids_out_of_range():
  ids = jnp.zeros((1, 4, 1, 2), jnp.int32).at[0, 2, 0, 1].set(16)
  v, valid = jnp.ones((1, 4, 1, 8)), jnp.ones((1, 4), bool)
  with pytest.raises(Exception, match='outside'):
    jax.block_until_ready(cpu_kernel.bucket_attend(ids, ids, v, valid, valid, num_ids=16, direction=0,
                                                   normalize=True))


def test_auto_plan_without_a_compiler_runs_the_xla_loops_and_cpu_kernel_says_why_not(tmp_path):
  # A fresh process whose compiler does not exist: one warning, then 'auto' gives the oracle's outputs (by
  # 'cpu_xla'), and asking for 'cpu_kernel' by name is an error that names the way out.
  script = textwrap.dedent("""
      import dataclasses
      import jax, jax.numpy as jnp, numpy as np
      from anna_jax import cpu_kernel
      from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
      from anna_jax.oracle import anna_dense_reference
      config = ANNAConfig(num_tables=4, num_hashes=3, loop_plan='auto')
      q, k, v = (jax.random.normal(key, (1, 50, 2, 8)) for key in jax.random.split(jax.random.key(0), 3))
      proj = draw_projections(jax.random.key(1), 2, 8, config)
      out, _ = anna_attention(q, k, v, proj, config, causal=True)
      np.testing.assert_allclose(out, anna_dense_reference(q, k, v, proj, family='hyperplane', causal=True),
                                 atol=2e-5)
      assert not cpu_kernel.available()
      try:
        anna_attention(q, k, v, proj, dataclasses.replace(config, loop_plan='cpu_kernel'))
      except RuntimeError as e:
        assert "use loop_plan='auto' or 'cpu_xla'" in str(e), e
      else:
        raise AssertionError('cpu_kernel ran without kernels')
      print('fallback ok')
  """)
  env = dict(os.environ, CXX=str(tmp_path / 'no-such-compiler'), ANNA_JAX_CACHE=str(tmp_path / 'cache'))
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr
  assert 'fallback ok' in result.stdout
  assert result.stderr.count('no CPU kernel') == 1


def test_cpu_kernel_is_built_once_per_machine(tmp_path):
  # A second process finds the library the first one built (same source, flags, compiler, jaxlib and CPU).
  env = dict(os.environ, ANNA_JAX_CACHE=str(tmp_path))
  script = 'from anna_jax import cpu_kernel; assert cpu_kernel.available()'
  for _ in range(2):
    subprocess.run([sys.executable, '-c', script], check=True, env=env, timeout=300)
  assert len([f for f in os.listdir(tmp_path) if f.endswith('.so')]) == 1
  assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]


def test_stats_count_collisions_and_lonely_queries():
  n = 100
  config = ANNAConfig(num_tables=2, num_hashes=6)
  q, k, v = qkv(n, seed=3)
  proj = draw_projections(jax.random.key(3), 2, 8, config)
  out, stats = anna_attention(q, k, v, proj, config, causal=True)
  codes_q, codes_k = lsh.hash_codes(q, proj, 'hyperplane'), lsh.hash_codes(k, proj, 'hyperplane')
  c = jnp.sum(codes_q[..., :, None] == codes_k[..., None, :], axis=2) * jnp.tril(jnp.ones((n, n), int))
  total = jnp.sum(c, axis=-1)  # (batch, heads, n)
  assert float(jnp.mean(total == 0)) > 0  # 64 buckets per table, causal: early queries are often alone
  np.testing.assert_allclose(float(stats.no_collision_fraction), float(jnp.mean(total == 0)), atol=1e-6)
  np.testing.assert_allclose(float(stats.mean_collisions), float(jnp.mean(total)), rtol=1e-6)
  lonely = jnp.transpose(total == 0, (0, 2, 1))  # (batch, n, heads)
  np.testing.assert_array_equal(jnp.where(lonely[..., None], out, 0.0), 0.0)


def test_multiplicity_hand_built_three_to_one():
  # One hyperplane per table, chosen by hand. The query (1, 0) has bits (1, 1, 1, 0); key A = (1, 0.1) has
  # (1, 1, 1, 1) and collides in 3 of 4 tables, key B = (-1, -0.1) has (0, 0, 0, 0) and collides in 1.
  # So A weighs 3x B: output (3 vA + vB) / 4.
  normals = jnp.array([[1.0, 0.0], [1.0, 0.5], [1.0, -0.5], [0.0, 1.0]])
  proj = normals[None, :, :, None]  # (heads 1, tables 4, dim 2, hashes 1)
  config = ANNAConfig(num_tables=4, num_hashes=1)
  q = jnp.array([[1.0, 0.0], [1.0, 0.0]])[None, :, None, :]  # two identical queries
  k = jnp.array([[1.0, 0.1], [-1.0, -0.1]])[None, :, None, :]
  v = jnp.array([[10.0], [2.0]])[None, :, None, :]
  out, stats = anna_attention(q, k, v, proj, config)
  np.testing.assert_allclose(out[0, :, 0, 0], [(3 * 10.0 + 1 * 2.0) / 4] * 2, rtol=1e-6)
  causal, _ = anna_attention(q, k, v, proj, config, causal=True)
  np.testing.assert_allclose(causal[0, :, 0, 0], [10.0, (3 * 10.0 + 1 * 2.0) / 4], rtol=1e-6)
  np.testing.assert_allclose(float(stats.mean_collisions), 4.0)


def test_query_without_collision_outputs_zeros():
  config = ANNAConfig(num_tables=2, num_hashes=1)
  proj = jnp.ones((1, 2, 4, 1))
  q = jnp.ones((1, 8, 1, 4))
  k = -jnp.ones((1, 8, 1, 4))  # every key on the other side of every hyperplane
  for causal in (False, True):
    out, stats = anna_attention(q, k, jnp.ones_like(k), proj, config, causal=causal)
    np.testing.assert_array_equal(out, 0.0)
    assert float(stats.no_collision_fraction) == 1.0 and float(stats.mean_collisions) == 0.0


def test_q_and_k_get_no_gradient():
  config = ANNAConfig(num_tables=3, num_hashes=2)
  q, k, v = qkv(16)
  proj = draw_projections(jax.random.key(0), 2, 8, config)
  grads = jax.grad(lambda q, k: jnp.sum(anna_attention(q, k, v, proj, config, causal=True)[0] ** 2),
                   argnums=(0, 1))(q, k)
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize('plan, tolerance', [(CPU_PLAN, 0.0), ('accelerator', 1e-5)])
def test_causal_has_no_leakage(plan, tolerance):
  n, cut = 48, 20
  config = ANNAConfig(num_tables=4, num_hashes=2, loop_plan=plan)
  q, k, v = qkv(n)
  proj = draw_projections(jax.random.key(0), 2, 8, config)
  future = qkv(n, seed=11)
  changed = [jnp.where(jnp.arange(n)[None, :, None, None] > cut, f, x) for x, f in zip((q, k, v), future)]
  before = anna_attention(q, k, v, proj, config, causal=True)[0]
  after = anna_attention(*changed, proj, config, causal=True)[0]
  # CPU: exactly equal (only keys j <= i are ever added). Accelerator: up to float rounding, as the prefix sums
  # over sorted keys run through every bucket.
  np.testing.assert_allclose(after[:, : cut + 1], before[:, : cut + 1], rtol=0, atol=tolerance)
  assert float(jnp.max(jnp.abs(after[:, cut + 1:] - before[:, cut + 1:]))) > 1e-3


@pytest.mark.parametrize('family', lsh.FAMILIES)
def test_codes_are_scale_invariant_and_in_range(family):
  config = ANNAConfig(num_tables=3, num_hashes=2, family=family, crosspolytope_dim=4)
  x = qkv(20)[0]
  proj = draw_projections(jax.random.key(1), 2, 8, config)
  codes = lsh.hash_codes(x, proj, family)
  assert codes.shape == (2, 2, 3, 20) and codes.dtype == jnp.int32
  space = lsh.code_space(proj, family)
  assert space == (4 if family == 'hyperplane' else 64)
  assert int(codes.min()) >= 0 and int(codes.max()) < space
  np.testing.assert_array_equal(lsh.hash_codes(3.5 * x, proj, family), codes)


def test_crosspolytope_code_is_index_and_sign_of_largest_coordinate():
  rotation = jnp.eye(3)[None, None, None]  # (heads, tables, hashes, dim, d'): the identity
  x = jnp.array([[0.1, -2.0, 0.5], [3.0, 0.0, 1.0], [0.0, 0.2, -0.3]])[None, :, None, :]
  codes = lsh.hash_codes(x, rotation, 'crosspolytope')[0, 0, 0]
  np.testing.assert_array_equal(codes, [1 + 3, 0, 2 + 3])  # index, plus d' when negative


def test_wide_code_space_is_grouped_exactly_never_by_modulo():
  config = ANNAConfig(num_tables=1, num_hashes=6, family='crosspolytope', crosspolytope_dim=64)
  q, k, _ = qkv(30, dim=8)
  proj = draw_projections(jax.random.key(2), 2, 8, config)
  with pytest.raises(ValueError, match='int32'):
    lsh.hash_codes(q, proj, 'crosspolytope')
  q_ids, k_ids, num_ids = lsh.bucket_ids(q, k, proj, 'crosspolytope')
  assert num_ids == 60
  digits_q = lsh.hash_digits(q, proj, 'crosspolytope')[..., 0, :]  # (batch, n, heads, hashes)
  digits_k = lsh.hash_digits(k, proj, 'crosspolytope')[..., 0, :]
  same_digits = jnp.all(digits_q[:, :, None] == digits_k[:, None, :], axis=-1)  # (batch, nq, nk, heads)
  same_ids = q_ids[:, :, None, :, 0] == k_ids[:, None, :, :, 0]
  np.testing.assert_array_equal(same_ids, same_digits)
  q_again, _, _ = lsh.bucket_ids(q, q, proj, 'crosspolytope')
  same_q = jnp.all(digits_q[:, :, None] == digits_q[:, None, :], axis=-1)
  np.testing.assert_array_equal(q_again[:, :, None, :, 0] == q_again[:, None, :, :, 0], same_q)


@pytest.mark.parametrize('plan', [CPU_PLAN, 'accelerator'])
def test_million_tokens_compile_linear_memory(plan):
  n = 2**20  # a dense n x n float32 matrix would take 4 TiB
  config = ANNAConfig(num_tables=2, num_hashes=10, loop_plan=plan)
  proj = draw_projections(jax.random.key(0), 1, 8, config)
  x = jax.ShapeDtypeStruct((1, n, 1, 8), jnp.float32)
  for causal in (False, True):
    memory = jax.jit(lambda q, k, v: anna_attention(q, k, v, proj, config, causal=causal)).lower(
        x, x, x).compile().memory_analysis()
    assert memory.temp_size_in_bytes < 40 * n * 8 * 4  # a few copies of one (n, d) array, not n x n


def test_cpu_kernel_reads_bfloat16_and_returns_bfloat16_gradients():
  config = ANNAConfig(num_tables=6, num_hashes=3, loop_plan=CPU_PLAN)
  q, k, v = (x.astype(jnp.bfloat16) for x in qkv(64, seed=6))
  proj = draw_projections(jax.random.key(6), 2, 8, config)
  for causal in (False, True):
    def loss(v):
      return jnp.sum(anna_attention(q, k, v, proj, config, causal=causal)[0].astype(jnp.float32) ** 2)

    out = anna_attention(q, k, v, proj, config, causal=causal)[0]
    # The same bf16-rounded numbers in float32 hash alike (hashing is float32 either way).
    exact = anna_dense_reference(*(x.astype(jnp.float32) for x in (q, k, v)), proj, family='hyperplane',
                                 causal=causal)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), exact, atol=2e-2)
    grad = jax.grad(loss)(v)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(grad.astype(jnp.float32), jax.grad(loss)(v.astype(jnp.float32)), atol=5e-2)


def test_cpu_kernels_under_vmap_equal_one_call_per_element():
  # The kernels declare a heads-before-tokens layout for the ids; vmap adds an axis in front of it.
  config = ANNAConfig(num_tables=3, num_hashes=3, loop_plan=CPU_PLAN)
  q, k, v = (x.reshape(2, 1, 40, 2, 8) for x in qkv(40))  # a leading axis of 2 over batches of 1
  proj = draw_projections(jax.random.key(9), 2, 8, config)
  attend = lambda q, k, v: anna_attention(q, k, v, proj, config, causal=True)[0]
  mapped = jax.vmap(attend)(q, k, v)
  for i in range(2):
    np.testing.assert_allclose(mapped[i], attend(q[i], k[i], v[i]), atol=1e-6)


@pytest.mark.parametrize('dim', [64, 128])  # the kernel's unrolled widths (the main job runs 64)
def test_cpu_kernel_at_wide_heads_equals_the_oracle(dim):
  config = ANNAConfig(num_tables=3, num_hashes=2, loop_plan=CPU_PLAN)
  q, k, v = qkv(40, batch=1, heads=2, dim=dim, seed=dim)
  proj = draw_projections(jax.random.key(dim), 2, dim, config)
  mask = padding_mask(40, [33])
  for causal in (False, True):
    out, _ = anna_attention(q, k, v, proj, config, mask=mask, causal=causal)
    expected = anna_dense_reference(q, k, v, proj, family='hyperplane', mask=mask, causal=causal)
    np.testing.assert_allclose(out, expected, atol=2e-5)
    grad = jax.grad(lambda v: jnp.sum(anna_attention(q, k, v, proj, config, mask=mask, causal=causal)[0] ** 2))(v)
    expected_grad = jax.grad(lambda v: jnp.sum(anna_dense_reference(q, k, v, proj, family='hyperplane', mask=mask,
                                                                    causal=causal) ** 2))(v)
    np.testing.assert_allclose(grad, expected_grad, atol=2e-4)


@pytest.mark.parametrize('hashes, min_ids, n', [(24, 4096, 60), (7, 0, 60), (40, 0, 60), (24, 4096, 400),
                                                (12, 0, 400)])
@pytest.mark.parametrize('causal', [False, True])
def test_cpu_kernel_hashed_rows_equal_the_oracle(hashes, min_ids, n, causal):
  # Code spaces past max(n, kernel_min_ids) are hashed into 2n-4n rows per table: 2**24 codes; 128 (4096) codes
  # forced into 128 (1024) hashed rows (probes collide and wrap); 2**40 codes, numbered by lsh's sort past int32.
  tuning = plans.Tuning(kernel_min_ids=min_ids)
  config = ANNAConfig(num_tables=3, num_hashes=hashes, loop_plan=CPU_PLAN)
  q, k, v = qkv(n, seed=hashes)
  k = k.at[:, ::2].set(q[:, ::2])  # shared directions, so fine buckets still hold pairs
  proj = draw_projections(jax.random.key(hashes), 2, 8, config)
  mask = padding_mask(n, [n, n * 2 // 3])
  assert cpu_kernel.hashed_rows(n, lsh.bucket_ids(q, k, proj, 'hyperplane')[2], tuning) == 2 ** math.ceil(
      math.log2(2 * n))
  stats = assert_equals_oracle(q, k, v, proj, config, mask, causal, tuning=tuning)
  assert 0.0 < float(stats.no_collision_fraction) < 1.0


@pytest.mark.parametrize('causal', [False, True])
def test_accelerator_plan_two_key_sort_equals_the_oracle(causal):
  # 2**24 buckets at n = 60: (buckets + 1) * 2n overflows int32, so keys and queries sort on two keys.
  config = ANNAConfig(num_tables=2, num_hashes=24, loop_plan='accelerator')
  q, k, v = qkv(60, seed=11)
  k = k.at[:, ::2].set(q[:, ::2])  # shared directions, so buckets of 2**24 still hold pairs
  proj = draw_projections(jax.random.key(11), 2, 8, config)
  out, stats = anna_attention(q, k, v, proj, config, causal=causal)
  np.testing.assert_allclose(out, anna_dense_reference(q, k, v, proj, family='hyperplane', causal=causal),
                             atol=2e-5)
  assert float(stats.mean_collisions) > 0  # the check compares real collisions, not zeros with zeros


def test_cpu_and_accelerator_plans_agree_in_bfloat16():
  # Stated tolerance: both sum in float32 and round to bfloat16 once, so they may differ by the rounding of a
  # float32 sum taken in another order: within 2**-7 absolute plus 2**-7 relative (a bfloat16 ulp at 1 is 2**-7).
  q, k, v = (x.astype(jnp.bfloat16) for x in qkv(64, seed=12))
  mask = padding_mask(64, [64, 50])
  results = {}
  for plan in (CPU_PLAN, 'accelerator'):
    config = ANNAConfig(num_tables=5, num_hashes=3, loop_plan=plan)
    proj = draw_projections(jax.random.key(12), 2, 8, config)
    attend = lambda v: anna_attention(q, k, v, proj, config, mask=mask, causal=True)[0]  # noqa: E731
    results[plan] = (attend(v), jax.grad(lambda v: jnp.sum(attend(v).astype(jnp.float32) ** 2))(v))
  for a, b in zip(results[CPU_PLAN], results['accelerator']):
    assert a.dtype == b.dtype == jnp.bfloat16
    np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), atol=2**-7, rtol=2**-7)


@pytest.mark.parametrize('plan', [CPU_PLAN, 'accelerator'])
def test_stats_under_padding_count_real_queries_and_keys_only(plan):
  from anna_jax.oracle import collision_counts
  config = ANNAConfig(num_tables=3, num_hashes=3, loop_plan=plan)
  q, k, v = qkv(50, seed=13)
  proj = draw_projections(jax.random.key(13), 2, 8, config)
  mask = padding_mask(50, [50, 20])
  _, stats = anna_attention(q, k, v, proj, config, mask=mask)
  counts = collision_counts(q, k, proj, 'hyperplane', mask=mask)  # (batch, heads, n, n)
  per_query = jnp.sum(counts, axis=-1)  # (batch, heads, n)
  real = jnp.broadcast_to(mask[:, None, :], per_query.shape)
  assert float(stats.mean_collisions) == pytest.approx(float(jnp.sum(per_query) / jnp.sum(real)), rel=1e-6)
  assert float(stats.no_collision_fraction) == pytest.approx(
      float(jnp.sum((per_query == 0) & real) / jnp.sum(real)), rel=1e-6)


def test_straight_through_runs_algorithm_1_forward_and_the_collision_kernel_backward_for_q_and_k():
  from flax import nnx

  from anna_jax.attention import AttentionConfig, make_attention
  from anna_jax.baselines import unit_softmax_attention
  q, k, v = qkv(12, batch=1)
  mask = padding_mask(12, [10])
  config = ANNAConfig(num_tables=3, num_hashes=2)
  plain, through = (make_attention(AttentionConfig(kind='anna', anna=dataclasses.replace(config, straight_through=s)),
                                   2, 8, rngs=nnx.Rngs(0)) for s in (False, True))
  probe = jax.random.normal(jax.random.key(9), q.shape)

  def loss(module, q, k, v):
    return jnp.sum(module(q, k, v, mask=mask, causal=True)[0] * probe)

  forward = jax.jit(lambda q, k, v: (plain(q, k, v, mask=mask, causal=True)[0],
                                      through(q, k, v, mask=mask, causal=True)[0]))
  np.testing.assert_array_equal(*forward(q, k, v))
  dq, dk, dv = jax.jit(jax.grad(lambda *a: loss(through, *a), argnums=(0, 1, 2)))(q, k, v)
  _, _, plain_dv = jax.jit(jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(dv, plain_dv, atol=1e-6)  # v: Algorithm 1's own gradient

  def kernel(q, k):  # the collision kernel with z = 2; padded queries get no gradient
    return jnp.sum(unit_softmax_attention(q, k, v, beta=1.0, mask=mask, causal=True, collision_hashes=2) * probe)
  want_dq, want_dk = jax.jit(jax.grad(kernel, argnums=(0, 1)))(q, k)
  assert float(jnp.max(jnp.abs(want_dq))) > 1e-3 and not np.any(np.asarray(dq)[:, 10:])
  np.testing.assert_allclose(dq, want_dq, atol=1e-5)
  np.testing.assert_allclose(dk, want_dk, atol=1e-5)
  with pytest.raises(ValueError, match='straight_through'):
    ANNAConfig(family='crosspolytope', straight_through=True)
