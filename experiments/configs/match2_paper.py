"""Match2 as in the paper's recipe: one layer trained with softmax attention, evaluated with ANNA swapped in,
over tables 1..16 x hashes 1..6 (N = 32, M = 37). Each sweep point retrains the same full-attention model
(same seed, so the same weights) and evaluates it with its own ANNA configuration.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.task, c.n, c.modulus = 'match2', 32, 37
  c.depth, c.width, c.num_heads, c.causal = 1, 128, 4, False
  c.attention, c.eval_attention = 'full', 'anna'
  c.chunk_size, c.window = 32, 32
  c.steps, c.learning_rate, c.warmup_steps = 5_000, 1e-3, 200
  c.log_every, c.eval_every, c.checkpoint_every = 500, 5_000, 1_000
  c.sweep.depth = ()
  c.sweep.attention = ()
  c.sweep.num_tables = (1, 2, 4, 8, 16)
  c.sweep.num_hashes = (1, 2, 3, 4, 5, 6)
  return c
