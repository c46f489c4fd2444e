"""The k-hop depth table on a CPU: every attention kind at depth 1..5, N = 32, k ~ uniform 0..8.

What it measures (../shared/SPEC.md, PAPER.md section 5): the largest k solved (error < 5% on every k' <= k)
per depth and kind. Theory: full attention and ANNA solve k-hop at depth O(log k); low rank needs depth
Omega(k) or width Omega(N / k^6); a Reformer with O(1) bucket size needs Omega(log N) layers.

Sizes, chosen to fit one background run of about 2 hours on a 2-core CPU (khop_paper.py is the full scale):
N = 32 symbols (33 tokens with the k token), 4 letters, max_k = 8; width 64, 4 heads, MLP 4x; AdamW lr 1e-3,
200 warm-up steps then linear decay, batch 32, 5,000 steps, one seed. Per kind:
  full          exact softmax attention
  unit_softmax  the paper's surrogate (beta swept), then `anna` (Algorithm 1) swapped into every layer by the
                grid: the same table count in every layer x hashes x 3 draws, on 4,096 fixed test sequences
  anna_softmax  trained end to end: 4 tables x 3 hashes (8 buckets), window 64 >= N, so exact union attention
  reformer      2 rounds, 8 buckets, chunks of 8: O(1) bucket size, as the lower bound assumes
  lowrank       Performer, 64 random features; a width axis (32, 128) at depths 1, 3, 5 as well
The exact commands, in the order they ran: experiments/scripts/khop_depth_table.sh; the table and heat maps:
  python -m experiments.khop_table --workdir=runs/khop_depth_table
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.task.khop.n, c.task.khop.max_k, c.task.khop.alphabet = 32, 8, 4
  c.model.width, c.model.num_heads = 64, 4
  c.train.steps, c.train.batch_size, c.optim.learning_rate, c.optim.warmup_steps = 5_000, 32, 1e-3, 200
  c.train.log_every, c.evaluation.every, c.evaluation.batches = 500, 5_000, 8
  c.train.checkpoint_every, c.train.keep_checkpoints = 2_500, 1
  c.attention.unit_softmax.beta = 8.0
  c.attention.anna_softmax.update(dict(num_tables=4, num_hashes=3, chunk_size=64, window=64))
  c.attention.reformer.update(dict(num_rounds=2, num_buckets=8, chunk_size=8))
  # The grid (python -m experiments.main --mode=grid, unit_softmax runs only): anna in every layer, the same table
  # count in each; it needs a fixed test set: experiments/scripts/khop_depth_table.sh passes
  # --config.evaluation.test_size=4096 (training used fresh ones).
  c.grid.tables_every_layer, c.grid.hashes, c.grid.draws = (1, 4, 16, 64), (1, 2, 4, 6), 3
  c.sweep.model.depth = (1, 2, 3, 4, 5)
  c.sweep.attention.kind = ('full', 'unit_softmax', 'anna_softmax', 'reformer', 'lowrank')
  return c
