"""Match2 as N grows (CPU scale): the paper's Figure 1a recipe at N = 32..512, then `anna` over a larger grid.

The paper ran N = 32 only (M = 37). Here the modulus grows with N by the rule of `anna_jax.tasks.match2_modulus`
(modulus 0: the smallest prime >= 37 N / 32, so about as many residues as tokens at every N: 37, 79, 149, 307,
593). Per N: the unit_softmax surrogate, the Figure 1a model and optimiser (1 layer, 1 head, m = 64, MLP 4m, Adam
lr 0.01, batch 32, a fixed label-balanced set of 10,000 training and 256 test sequences), then `anna` swapped in
over tables {1, 2, 4, ..., 128} x hashes {1..16} x 3 draws (the paper: 10). Then `python -m experiments.n_scaling`
reports per N the surrogate's error, the best cell and the cheapest cell (cost l (z + 1) per token) within 0.01 of
the surrogate, with the plots.

beta = 3, not the paper's 0.1 (chosen here, measured: experiments/results/match2_growing_n/README.md). At beta =
0.1 every score lies within +-0.1: roughly, one matching key moves a query's output by beta / N while N - 1 random
others add noise of beta sqrt(N / d) / N, so the signal fades as N grows; that surrogate learnt N = 32 only (12%
error at N = 64, 43% at 512).
At beta = 3 it learns every N to 512 in the same steps. A sharp surrogate needs `anna` with many hashes (its
partner must be the query's only collision), so the grid runs z to 16 (the constructed model needs z = log2 N + 6).
Earlier runs at beta = 0.1 and z <= 10: `--config.attention.unit_softmax.beta=0.1
--config.grid.hashes=1,2,3,4,5,6,7,8,9,10,` (their commands in that README).

Steps: the CPU forces fewer at large N (measured here, batch 32: ~90 steps/s at N = 32, ~15 at 128, ~2.5 at 512):
20k (the paper's) at N = 32 and 64, 10k at 128, 5k at 256, 3k at 512, each given on its command line
(experiments/scripts/match2_growing_n_beta3.sh). The GPU-scale version, N = 32..4096 at 20k steps each (beta = 3
untested beyond N = 512):
  python -m experiments.main --config=experiments/configs/match2_growing_n.py:gpu --workdir=runs/match2_n_gpu
(then experiments.n_scaling as below). Not run: no GPU was lent to this project's sessions.
"""

from experiments.configs import match2_paper


def get_config(scale='cpu'):
  if scale not in ('cpu', 'gpu'):
    raise ValueError(f"scale must be 'cpu' or 'gpu', got {scale!r}")
  c = match2_paper.get_config()
  c.task.match2.modulus = 0  # by the rule above, per N
  c.attention.unit_softmax.beta = 3.0
  c.sweep.attention.unit_softmax.beta = ()
  c.sweep.task.match2.n = (32, 64, 128, 256, 512) if scale == 'cpu' else (32, 64, 128, 256, 512, 1024, 2048, 4096)
  c.train.log_every, c.evaluation.every, c.train.checkpoint_every = 500, 2_500, 2_500
  c.grid.tables_per_layer = ((1, 2, 4, 8, 16, 32, 64, 128),)
  c.grid.hashes = tuple(range(1, 17))
  c.grid.draws = 3 if scale == 'cpu' else 10
  return c
