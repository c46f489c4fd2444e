import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anna_jax.tasks import KHop, Match2, khop_targets, make_task, match2_labels

NONE = 3  # alphabet of 3 below: "none" is class 3


def match2_reference(x, modulus):
  return [int(any((a + b) % modulus == 0 for b in x)) for a in x]


def khop_reference(x, k):
  """Straight from the definition: hop k times, each hop searching before the current position."""
  out = []
  for i in range(len(x)):
    pos = i
    for _ in range(k):
      earlier = [j for j in range(pos) if x[j] == x[pos]]
      if not earlier:
        pos = None
        break
      pos = earlier[-1] + 1
    out.append(None if pos is None else x[pos])
  return out


def test_match2_hand_worked():
  # M = 5: 1 + 4 = 5, 2 + 3 = 5, 0 + 0 = 0 (a token may pair with itself).
  np.testing.assert_array_equal(match2_labels(jnp.array([1, 4, 2, 0, 3]), 5), [1, 1, 1, 1, 1])
  np.testing.assert_array_equal(match2_labels(jnp.array([1, 1, 2, 0]), 5), [0, 0, 0, 1])
  np.testing.assert_array_equal(match2_labels(jnp.array([3, 3, 2]), 6), [1, 1, 0])  # 3 + 3 = 6


def test_match2_matches_reference_on_random_batches():
  task = Match2(n=16, modulus=7)
  batch = task.sample(jax.random.key(0), 32)
  for x, labels in zip(np.asarray(batch['tokens']), np.asarray(batch['targets'])):
    assert list(labels) == match2_reference(list(x), 7)
  assert 0.2 < float(jnp.mean(batch['targets'])) < 0.9  # both classes occur


def test_khop_hand_worked():
  x = jnp.array([0, 1, 2, 0, 1, 0, 2])  # a b c a b a c
  np.testing.assert_array_equal(khop_targets(x, 0, 3, 4), x)
  np.testing.assert_array_equal(khop_targets(x, 1, 3, 4), [NONE, NONE, NONE, 1, 2, 1, 0])
  np.testing.assert_array_equal(khop_targets(x, 2, 3, 4), [NONE, NONE, NONE, NONE, NONE, 2, 1])
  np.testing.assert_array_equal(khop_targets(x, 3, 3, 4), [NONE] * 6 + [NONE])


def test_khop_matches_reference_and_recipe():
  task = KHop(n=40, alphabet=3, max_k=5)
  batch = task.sample(jax.random.key(1), 24)
  tokens, targets = np.asarray(batch['tokens']), np.asarray(batch['targets'])
  for row, target, k in zip(tokens, targets, np.asarray(batch['k'])):
    x = list(row[1:])
    assert row[0] == 3 + k  # leading k token
    assert all(a != b for a, b in zip(x, x[1:]))  # no immediate repeats
    assert [NONE if t is None else t for t in khop_reference(x, int(k))] == list(target[1:])
  assert set(np.asarray(batch['k'])) == set(range(6))
  np.testing.assert_array_equal(batch['eval_mask'], batch['loss_mask'] & (batch['targets'] != NONE))
  assert not bool(jnp.any(batch['loss_mask'][:, 0]))


def test_sampling_is_seeded_and_k_can_be_fixed():
  task = KHop(n=20, alphabet=4, max_k=3)
  a, b = task.sample(jax.random.key(5), 4), task.sample(jax.random.key(5), 4)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])
  fixed = jax.jit(lambda key: task.sample(key, 8, k=2))(jax.random.key(0))
  np.testing.assert_array_equal(fixed['k'], 2)


@pytest.mark.parametrize('name, fields, message', [
    ('copy', {}, 'unknown task'),
    ('khop', dict(max_k=-1), 'max_k >= 0'),
    ('khop', dict(n=5, max_k=4), 'too small'),
    ('match2', dict(n=1), 'n >= 2'),
])
def test_invalid_tasks_are_clear_errors(name, fields, message):
  with pytest.raises(ValueError, match=message):
    make_task(name, **fields)


def test_balanced_match2_set_is_exactly_half_ones_and_seeded():
  from anna_jax.tasks import balanced_match2_tokens
  x = balanced_match2_tokens(0, 500, 32, 37)
  labels = np.asarray(match2_labels(jnp.asarray(x), 37))
  assert x.shape == (500, 32) and x.min() >= 0 and x.max() < 37
  np.testing.assert_array_equal(labels.sum(axis=1), 16)  # every sequence: exactly n // 2 ones
  np.testing.assert_array_equal(balanced_match2_tokens(0, 500, 32, 37), x)
  assert not np.array_equal(balanced_match2_tokens(1, 500, 32, 37), x)
  assert len(np.unique(x, axis=0)) == 500  # no repeated sequences
  with pytest.raises(ValueError, match='odd modulus'):
    balanced_match2_tokens(0, 1, 32, 36)


def test_khop_every_token_counts_none_targets():
  task = KHop(n=20, alphabet=4, max_k=1)
  batch = task.sample(jax.random.key(0), 8, k=1, every_token=True)
  np.testing.assert_array_equal(batch['eval_mask'], batch['loss_mask'])
  assert bool(jnp.any(batch['targets'][:, 1:] == 4))  # some "none" targets are counted
  assert not bool(jnp.any(batch['eval_mask'][:, 0]))  # the leading k token is not a symbol
