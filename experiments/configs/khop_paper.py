"""The k-hop depth sweep (Sanford et al. 2024's setup): depth 2..6, full attention vs anna_softmax.

Width 128, 4 heads, AdamW lr 1e-4, batch 32, 1k warm-up, linear decay, 100k steps, N = 100, 4 letters,
k ~ uniform 0..16. Expected shape: the largest k with error < 5% grows like 2**(depth - 2) with full attention
(Sanford et al.: 1, 3, 5, 8, 15). anna_softmax is the trainable sibling of ANNA (Algorithm 1 passes no gradient
to queries and keys); the paper's own ANNA is evaluated on trained surrogates by induction_paper.py.
Hours on a GPU per run; fan it out with launch/ (see README):
  python -m experiments.main --config=experiments/configs/khop_paper.py --workdir=runs/khop_paper
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.task.khop.n, c.task.khop.max_k, c.task.khop.alphabet = 100, 16, 4
  c.model.width, c.model.num_heads = 128, 4
  c.train.steps, c.train.batch_size, c.optim.learning_rate, c.optim.warmup_steps = 100_000, 32, 1e-4, 1_000
  c.attention.anna_softmax.update(dict(num_tables=4, num_hashes=2, chunk_size=32, window=64))
  c.train.log_every, c.evaluation.every, c.evaluation.batches = 500, 10_000, 8
  c.train.checkpoint_every, c.train.keep_checkpoints, c.train.num_devices = 5_000, 2, 0
  c.sweep.model.depth = (2, 3, 4, 5, 6)
  c.sweep.attention.kind = ('full', 'anna_softmax')
  return c
