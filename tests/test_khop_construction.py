"""The constructed k-hop / induction-heads model (Theorems 5.4 and 5.6, weights set, not trained)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anna_jax import khop_construction
from anna_jax.anna import ANNAConfig
from anna_jax.tasks import khop_targets

N, ALPHABET, MAX_K = 40, 4, 5


@pytest.fixture(scope='module')
def construction():
  return khop_construction.build(N, ALPHABET, MAX_K, base=2, width=32, seed=0)


@pytest.fixture(scope='module')
def symbols():
  return jnp.asarray(np.random.default_rng(1).integers(0, ALPHABET, N))


def anna_predictions(construction, x, tables, hashes, draw):
  config = ANNAConfig(num_tables=tables, num_hashes=hashes)
  projections = khop_construction.draw(construction, jax.random.key(draw), config)
  forward = jax.jit(lambda x, k, p: khop_construction.forward(construction, x, k,
                                                              khop_construction.anna_attend(p, config))[0])
  return [forward(x, k, projections) for k in range(MAX_K + 1)], projections


def test_exact_when_every_position_code_has_a_bucket_of_its_own(construction, symbols):
  # The argument: a lookup's query is the code of its target index, the same float vector as that token's key,
  # so they share every bucket. If the n + 1 index codes hash to n + 1 distinct codes in every table of every
  # head of every layer, the target is the only key in the query's buckets (and "none", index 0, reads the k
  # token's zeros): every lookup returns exactly the target's value, so every token of every k is right.
  assert construction.max_false_cosine < 1
  predictions, projections = anna_predictions(construction, symbols, tables=2, hashes=32, draw=0)
  every_index = np.asarray(khop_construction.encode(construction, jnp.arange(N + 1)))
  for layer in projections:  # (heads, tables, width, hashes): one sign bit per hash
    for table in np.asarray(layer).reshape(-1, *layer.shape[2:]):
      bits = every_index @ table > 0
      assert len({row.tobytes() for row in bits}) == N + 1  # the precondition holds for this draw
  softmax = jax.jit(lambda x, k: khop_construction.forward(
      construction, x, k, khop_construction.softmax_attend(construction, block=16))[0])
  for k, predicted in enumerate(predictions):
    want = khop_targets(symbols, k, ALPHABET, MAX_K)
    np.testing.assert_array_equal(predicted, want)
    np.testing.assert_array_equal(softmax(symbols, k), want)  # the same weights under exact softmax
  assert any(int(jnp.sum(khop_targets(symbols, k, ALPHABET, MAX_K) == ALPHABET)) > 0 for k in range(MAX_K + 1))


def test_layers_and_heads_follow_the_base():
  two = khop_construction.build(1000, 4, 16, base=2, width=8)
  thirty_two = khop_construction.build(1000, 4, 16, base=32, width=8)
  assert two.layer_heads() == [1] * 10 + [1] + [2] * 5 + [1]  # log2 1001 -> 10 prefix layers, 5 bits of k <= 16
  assert thirty_two.layer_heads() == [31] * 2 + [1] + [2] * 5 + [1]
  with pytest.raises(ValueError, match='base >= 2'):
    khop_construction.build(10, 4, 2, base=1)
  with pytest.raises(ValueError, match='even'):
    khop_construction.build(10, 4, 2, width=7)


def test_a_larger_base_gives_the_same_exact_answers(symbols):
  construction = khop_construction.build(N, ALPHABET, MAX_K, base=4, width=32, seed=0)
  predictions, _ = anna_predictions(construction, symbols, tables=1, hashes=24, draw=1)
  for k, predicted in enumerate(predictions):
    np.testing.assert_array_equal(predicted, khop_targets(symbols, k, ALPHABET, MAX_K))


def test_runner_rows_and_reports(tmp_path):
  from experiments import khop_construction as runner
  args = dict(n=16, alphabet=4, ks=[0, 2], base=2, tables=[1], hashes=[2, 40], draws=2, seed=0, width=16,
              softmax_up_to=16)
  rows = list(runner.evaluate_n(**args))
  assert [r['kind'] for r in rows] == ['softmax', 'anna', 'anna']
  assert rows[0]['mean'] == 0.0 and set(rows[1]['errors_by_k']) == {'0', '2'}
  # The error rises when z is too small: z = 2 gives 4 buckets per table for 17 indices, so a lookup averages
  # about a quarter of the sequence in; z = 40 separates them (a construction that did not look up by exact
  # codes, or ignored what it read, would not go from one to the other).
  assert rows[1]['worst_k_error'] > 0.2 and rows[2]['worst_k_error'] == 0.0
  assert not list(runner.evaluate_n(**args, done={runner.row_key(r) for r in rows}))  # a rerun skips them
  table = runner.write_reports(str(tmp_path), rows, tolerance=0.01)
  assert table[0]['layers'] == 5 + 1 + 2 + 1 and (tmp_path / 'construction.png').stat().st_size > 0
  assert '| 4 | 2 | 2^4 | 9 |' in (tmp_path / 'construction.md').read_text()
