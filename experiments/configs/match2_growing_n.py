"""Match2 as N grows (CPU scale): the paper's Figure 1a recipe at N = 32..512, then `anna` over a larger grid.

The paper ran N = 32 only (M = 37). Here the modulus grows with N by the rule of `anna_jax.tasks.match2_modulus`
(modulus 0: the smallest prime >= 37 N / 32, so about as many residues as tokens at every N: 37, 79, 149, 307,
593). Per N: the unit_softmax surrogate at the paper's best beta = 0.1 only (beta 1 and 10 cost 3x and lost in
the paper), the Figure 1a model and optimiser (1 layer, 1 head, m = 64, MLP 4m, Adam lr 0.01, batch 32, a fixed
label-balanced set of 10,000 training and 256 test sequences), then `anna` swapped in over tables
{1, 2, 4, ..., 128} x hashes {1..10} x 3 draws (the paper: 10). Then `python -m experiments.n_scaling` reports per
N the surrogate's error, the best cell and the cheapest cell (cost l (z + 1) per token) within 0.01 of the
surrogate, with the plots.

Steps: the CPU forces fewer at large N (measured here, batch 32: ~160 steps/s at N = 32, ~11 at N = 256): 20k
(the paper's) at N = 32 and 64, 10k at 128, 5k at 256, 3k at 512, each given on its command line
(experiments/results/match2_growing_n/run.sh). The GPU-scale version, N = 32..4096 at 20k steps each:
  python -m experiments.main --config=experiments/configs/match2_growing_n.py:gpu --workdir=runs/match2_n_gpu
(then experiments.n_scaling as below). Not run: no GPU was lent to this project's sessions.
"""

from experiments.configs import match2_paper


def get_config(scale='cpu'):
  if scale not in ('cpu', 'gpu'):
    raise ValueError(f"scale must be 'cpu' or 'gpu', got {scale!r}")
  c = match2_paper.get_config()
  c.task.match2.modulus = 0  # by the rule above, per N
  c.sweep.attention.unit_softmax.beta = ()  # beta = 0.1 (match2_paper's attention section)
  c.sweep.task.match2.n = (32, 64, 128, 256, 512) if scale == 'cpu' else (32, 64, 128, 256, 512, 1024, 2048, 4096)
  c.train.log_every, c.evaluation.every, c.train.checkpoint_every = 500, 2_500, 2_500
  c.grid.tables_per_layer = ((1, 2, 4, 8, 16, 32, 64, 128),)
  c.grid.hashes = tuple(range(1, 11))
  c.grid.draws = 3 if scale == 'cpu' else 10
  return c
