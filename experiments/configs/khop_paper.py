"""The k-hop depth sweep (Sanford et al.'s setup, SPEC.md): depth 2..6, full attention vs anna_softmax.

Width 128, 4 heads, AdamW lr 1e-4, batch 32, 1k warm-up, linear decay, 100k steps, N = 100, 4 letters,
k ~ uniform 0..16. Expected shape: the largest k with error < 5% grows like 2**(depth - 2) with full attention
(Sanford et al.: 1, 3, 5, 8, 15). anna_softmax is the trainable sibling of ANNA (Algorithm 1 passes no gradient
to queries and keys); the paper's own ANNA is evaluated on trained surrogates by induction_paper.py.
Hours on a GPU per run; fan it out with launch/ (see README).
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.n, c.max_k, c.alphabet = 100, 16, 4
  c.width, c.num_heads = 128, 4
  c.steps, c.batch_size, c.learning_rate, c.warmup_steps = 100_000, 32, 1e-4, 1_000
  c.num_tables, c.num_hashes, c.chunk_size, c.window = 4, 2, 32, 64
  c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every, c.keep_checkpoints = 500, 10_000, 8, 5_000, 2
  c.num_devices = 0
  c.sweep.depth = (2, 3, 4, 5, 6)
  c.sweep.attention = ('full', 'anna_softmax')
  return c
