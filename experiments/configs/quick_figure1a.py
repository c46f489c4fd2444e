"""The README's main job (`make run`): a small Figure 1a in about a minute on a 2-core CPU.

Trains the Match2 unit_softmax surrogate (the paper's setup, match2_paper.py, with fewer steps and one beta),
then evaluates its checkpoint with ANNA (Algorithm 1) over tables {1, 2, 4, 8, 16} x hashes {1, 2, 3} x 3 hash
draws, and prints the table; the plot is grid.png in the workdir and in TensorBoard.
"""

from experiments.configs import match2_paper


def get_config():
  c = match2_paper.get_config()
  c.train.steps, c.optim.warmup_steps = 3_000, 200
  c.train.log_every, c.evaluation.every, c.train.checkpoint_every = 500, 3_000, 1_000
  c.sweep.attention.unit_softmax.beta = (0.1,)
  c.grid.tables_per_layer = ((1, 2, 4, 8, 16),)
  c.grid.hashes = (1, 2, 3)
  c.grid.draws = 3
  return c
