"""One input check and one NaN policy for every attention kind and loop plan (anna_jax.checks)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anna_jax import cpu_kernel
from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.anna_softmax import ANNASoftmaxConfig, anna_softmax_attention
from anna_jax.baselines import (draw_random_features, full_attention, full_blockwise_attention, lowrank_attention,
                                unit_softmax_attention)
from anna_jax.reformer import ReformerConfig, draw_rotations, reformer_attention

HEADS, DIM = 2, 8
CPU_PLAN = 'cpu_kernel' if cpu_kernel.available() else 'cpu_xla'  # as 'auto' picks on a CPU


def hashing(fn, config, draw):
  """fn(q, k, v, hash functions of config, config, ...) with hash functions drawn for (HEADS, DIM)."""
  projections = draw(jax.random.key(7), HEADS, DIM, config)
  return lambda q, k, v, hashes=projections, **kw: fn(q, k, v, hashes, config, **kw)[0]


ANNA = functools.partial(ANNAConfig, num_tables=3, num_hashes=1)
SOFTMAX = functools.partial(ANNASoftmaxConfig, num_tables=3, num_hashes=1, chunk_size=4, window=8)
# Every kind and plan: (q, k, v, mask=, causal=) -> output. 'dense' is anna_softmax's dense XLA layout.
ATTEND = {
    'full': full_attention,
    'full_blockwise': functools.partial(full_blockwise_attention, block=4),
    'unit_softmax': functools.partial(unit_softmax_attention, beta=4.0),
    'lowrank': lambda q, k, v, **kw: lowrank_attention(
        q, k, v, draw_random_features(jax.random.key(1), HEADS, DIM, 16), **kw),
    'anna-cpu': hashing(anna_attention, ANNA(loop_plan=CPU_PLAN), draw_projections),
    'anna-accelerator': hashing(anna_attention, ANNA(loop_plan='accelerator'), draw_projections),
    'anna_softmax-cpu': hashing(anna_softmax_attention, SOFTMAX(loop_plan=CPU_PLAN), draw_projections),
    'anna_softmax-accelerator': hashing(anna_softmax_attention, SOFTMAX(loop_plan='accelerator', dense_up_to=0),
                                        draw_projections),
    'anna_softmax-dense': hashing(anna_softmax_attention, SOFTMAX(loop_plan='accelerator'), draw_projections),
    'reformer-cpu': hashing(reformer_attention, ReformerConfig(num_rounds=2, num_buckets=4, chunk_size=4,
                                                               loop_plan='cpu_xla'), draw_rotations),
    'reformer-accelerator': hashing(reformer_attention, ReformerConfig(num_rounds=2, num_buckets=4, chunk_size=4,
                                                                       loop_plan='accelerator'), draw_rotations),
}
HASHED = [name for name in ATTEND if '-' in name]


def qkv(batch=3, n=12, dim=DIM, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  return tuple(jax.random.normal(key, (batch, n, HEADS, dim)).astype(dtype) for key in keys)


@pytest.mark.parametrize('name', ATTEND)
def test_mismatched_and_degenerate_inputs_get_one_clear_error(name):
  attend = ATTEND[name]
  q, k, v = qkv(batch=2)
  cases = {
      'v of another head width': (q, k, v[..., :4], None),
      'v wider than q': (q, k, jnp.concatenate([v, v], -1), None),
      'k of another batch': (q[:1], k, v[:1], None),
      'mask of another batch': (q[:1], k[:1], v[:1], jnp.ones((2, 12), bool)),
      'k of another length': (q, k[:, :6], v[:, :6], None),
      'no tokens': (q[:, :0], k[:, :0], v[:, :0], None),
      'integer values': (q, k, v.astype(jnp.int32), None),
  }
  if name.startswith('anna-'):  # Algorithm 1 averages values of any width
    del cases['v of another head width'], cases['v wider than q']
  for case, (q_, k_, v_, mask) in cases.items():
    with pytest.raises(ValueError, match=r'^\w+: ') as error:
      attend(q_, k_, v_, mask=mask)
    assert '\n' not in str(error.value), case


@pytest.mark.parametrize('plan', ['cpu', 'accelerator'])
def test_anna_averages_values_of_another_width(plan):
  q, k, v = qkv()
  wide = jnp.concatenate([v, 2 * v], axis=-1)
  out = ATTEND[f'anna-{plan}'](q, k, wide)
  np.testing.assert_allclose(out, jnp.concatenate([ATTEND[f'anna-{plan}'](q, k, v)] * 2, -1) * jnp.repeat(
      jnp.asarray([1.0, 2.0]), DIM), rtol=1e-6)


def test_lowrank_features_that_do_not_fit_get_one_clear_error():
  q, k, v = qkv()
  for features in (draw_random_features(jax.random.key(1), HEADS + 1, DIM, 16),
                   draw_random_features(jax.random.key(1), HEADS, DIM - 1, 16)):
    with pytest.raises(ValueError, match='^lowrank: random features of shape'):
      lowrank_attention(q, k, v, features)


@pytest.mark.parametrize('name', HASHED)
def test_hash_functions_that_do_not_fit_get_one_clear_error(name):
  q, k, v = qkv()
  family_config = {'anna': ANNA, 'anna_softmax': SOFTMAX}.get(name.split('-')[0])
  if family_config:
    wrong = [draw_projections(jax.random.key(0), HEADS, DIM, family_config(num_tables=1))[:, :0],  # no tables
             draw_projections(jax.random.key(0), HEADS + 1, DIM, family_config()),  # heads
             draw_projections(jax.random.key(0), HEADS, DIM + 1, family_config())]  # head width
  else:
    config = ReformerConfig(num_rounds=2, num_buckets=4)
    wrong = [draw_rotations(jax.random.key(0), HEADS, DIM, config)[:, :0],
             draw_rotations(jax.random.key(0), HEADS, DIM + 2, config)]
  for hashes in wrong:
    with pytest.raises(ValueError, match='hash functions of shape'):
      ATTEND[name](q, k, v, hashes=hashes)


def expected_nan(n, causal, reformer):
  """The policy's NaN rows (batch, n, heads) for `poisoned_inputs`: row 0's query 3 (head 0), row 1's key 5
  (head 1; Reformer: its query 5, which is also its key), row 2's value 10 (head 0), a padded token."""
  nan = np.zeros((3, n, HEADS), bool)
  nan[0, 3, 0] = True
  if reformer:
    nan[0, 3 if causal else 0:, 0] = True  # the NaN query is a key too
  nan[1, 5 if causal else 0:, 1] = True
  return nan


def poisoned_inputs(n=12):
  q, k, v = qkv(n=n)
  q = q.at[0, 3, 0, 1].set(jnp.nan)
  k = k.at[1, 5, 1, 0].set(jnp.inf)
  q = q.at[1, 5, 1, 0].set(jnp.nan)  # Reformer's key 5 is its query 5 (shared QK); others see one NaN query
  v = v.at[2, 10, 0, :].set(jnp.nan)
  mask = jnp.arange(n)[None, :] < jnp.asarray([n, n, 9])[:, None]
  return q, k, v, mask


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('name', ATTEND)
def test_a_nonfinite_input_reaches_exactly_the_outputs_exact_attention_gives_it(name, causal):
  if name.endswith('-cpu') and not cpu_kernel.available():
    pytest.skip('no C++ compiler')
  q, k, v, mask = poisoned_inputs()
  out = jax.jit(lambda q, k, v: ATTEND[name](q, k, v, mask=mask, causal=causal))(q, k, v)
  reformer = name.startswith('reformer')
  expected = expected_nan(12, causal, reformer)
  if not reformer:  # row 1's NaN query 5 poisons only itself (it is no key here)
    expected[1, 5, 1] = True
  got = np.isnan(np.asarray(out, np.float32)).any(-1)
  np.testing.assert_array_equal(got, expected)
  assert np.all(np.isfinite(np.asarray(out, np.float32))[~expected])
  assert np.all(np.asarray(out)[2, 9:] == 0)  # padded queries output zeros


@pytest.mark.parametrize('name', ['anna-cpu', 'anna_softmax-cpu'])
def test_nonfinite_hash_functions_make_every_real_output_nan(name):
  q, k, v = qkv()
  config = ANNA() if name.startswith('anna-') else SOFTMAX()
  hashes = draw_projections(jax.random.key(0), HEADS, DIM, config).at[0, 0, 0, 0].set(jnp.nan)
  assert np.all(np.isnan(np.asarray(ATTEND[name](q, k, v, hashes=hashes))))


@pytest.mark.skipif(not cpu_kernel.available(), reason='no C++ compiler')
def test_the_anna_softmax_kernel_checks_every_buffer_it_reads():
  q, k, v = qkv()
  config = SOFTMAX()
  q_ids, k_ids, num_ids = cpu_kernel.bucket_ids(q, k, draw_projections(jax.random.key(0), HEADS, DIM, config),
                                                'hyperplane')
  layout = cpu_kernel.SoftmaxLayout(num_ids=num_ids, key_slots=12, window=8, chunk=4, causal=False, uniform=False,
                                    scale=0.3)
  valid = jnp.ones(q.shape[:2], bool)
  for bad_v in (v[..., :4], jnp.concatenate([v, v], -1)):
    with pytest.raises(Exception, match='q, k and v must have equal shapes'):
      jax.block_until_ready(cpu_kernel.softmax_attend(q, k, bad_v, q_ids, k_ids, valid, layout))
