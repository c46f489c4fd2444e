"""Match2 as the paper ran it (Figure 1a; arXiv 2509.09001 section 6, experiment 1): train the unit_softmax
surrogate once per beta, then evaluate its checkpoint with ANNA (Algorithm 1) over tables 1..16 x hashes 1..6 x
10 hash draws.

N = 32, M = 37; a fixed label-balanced training set of 10,000 sequences and 256 test sequences
(`anna_jax.tasks.balanced_match2_tokens` documents the balancing); 1 layer, 1 head, m = 64, MLP 4m with GeLU;
Adam (AdamW with weight decay 0), lr 0.01, batch 32, 20,000 steps; beta in {0.1, 1, 10}.
Not in the paper, chosen here: no positional encoding (Match2 does not depend on order, and a position added
to every token would only blur the angles the hashes see), pre-LayerNorm blocks, 500 warm-up steps then a
linear decay, global-norm clipping at 1. Paper: beta = 0.1 is best; l >= 8 with z = 1 gives 0 test error.

Exact commands (train the three surrogates, then the grid; the first also runs the grid when training ends):
  python -m experiments.main --config=experiments/configs/match2_paper.py --workdir=runs/match2_paper
  python -m experiments.main --mode=grid --config=experiments/configs/match2_paper.py --workdir=runs/match2_paper
Measured here (2-core AMD EPYC VM, jax 0.10.2 CPU, sharing the CPU with another job): 275-327 s of training per
beta (52-85 steps/s), 4-7 minutes of grid per beta, 33 minutes in all; results in
experiments/results/match2_paper/README.md.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.task.name = 'match2'
  c.task.match2.n, c.task.match2.modulus = 32, 37
  c.train.train_size, c.evaluation.test_size = 10_000, 256
  c.model.update(dict(depth=1, width=64, num_heads=1, mlp_ratio=4, causal=False, positional='none'))
  c.attention.kind, c.attention.unit_softmax.beta = 'unit_softmax', 0.1
  c.train.steps, c.train.batch_size = 20_000, 32
  c.optim.learning_rate, c.optim.warmup_steps, c.optim.weight_decay = 0.01, 500, 0.0
  c.train.log_every, c.evaluation.every, c.train.checkpoint_every = 1_000, 5_000, 5_000
  c.sweep.model.depth, c.sweep.attention.kind = (), ()
  c.sweep.attention.unit_softmax.beta = (0.1, 1.0, 10.0)
  c.grid.tables_per_layer = (tuple(range(1, 17)),)
  c.grid.hashes = (1, 2, 3, 4, 5, 6)
  c.grid.draws = 10
  return c
