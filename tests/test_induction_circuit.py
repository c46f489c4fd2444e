import numpy as np

from experiments import induction_circuit as circuit


def test_layer1_reads_the_previous_symbol_and_sampled_counts_follow_their_expectation():
  x, _ = circuit.sequences(seed=5, size=8)
  prev = circuit.layer1(x, np.pi / 6, 0.3, 2, 0, None)
  np.testing.assert_array_equal(prev[:, 1:], x[:, :-1])  # exact with expected weights
  rng = np.random.default_rng(0)
  q, k = rng.standard_normal((1, 5, 6)), rng.standard_normal((1, 7, 6))
  q, k = q / np.linalg.norm(q, axis=-1, keepdims=True), k / np.linalg.norm(k, axis=-1, keepdims=True)
  keys = np.ones((5, 7), bool)
  sampled = circuit.collision_weights(q, k, keys, 2, 20000, rng) / 20000
  np.testing.assert_allclose(sampled, circuit.collision_weights(q, k, keys, 2, 0, None), atol=0.02)


def test_layer2_needs_value_recency_at_two_hashes():
  x, targets = circuit.sequences(seed=6, size=20)
  prev = circuit.true_previous(x)
  error = lambda params: float(np.mean(circuit.layer2(x, prev, params, 2, 0, None) != targets))
  angles_only, with_recency = error((0.4, 'rotation', np.pi / 50, 0.0)), error((0.99, 'rotation', np.pi / 200, 0.3))
  assert angles_only > 0.35 and with_recency < 0.15  # section 15 of experiments/results/reasoning: 0.43 / 0.09
