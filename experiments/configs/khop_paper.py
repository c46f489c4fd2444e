"""The k-hop depth table at Sanford et al.'s scale (2024): every attention kind, depth 2..6, for a GPU host.

N = 100 symbols, 4 letters, k ~ uniform 0..16 per sequence; width 128, 4 heads; AdamW lr 1e-4, batch 32, 1k
warm-up, linear decay, 100k steps. Sanford et al. measured full attention only: the largest k with error < 5% is
1, 3, 5, 8, 15 at depth 2..6. This config runs full, unit_softmax (then `anna` swapped into every layer over the
grid), anna_softmax, reformer and lowrank: 25 runs. The CPU-scale version, with results, is khop_depth_table.py.

Launch (one host, 8 GPUs: 8 shards of the 25 runs, one GPU each; then the grid and the table):
  python -m launch.launch --target=local --num_shards=8 --gpus=8 --workdir=runs/khop_paper -- --mode=train \
      --config=experiments/configs/khop_paper.py
  python -m experiments.main --mode=grid --config=experiments/configs/khop_paper.py --workdir=runs/khop_paper \
      --config.sweep.attention.kind="('unit_softmax',)" --config.evaluation.test_size=4096
  python -m experiments.khop_table --workdir=runs/khop_paper
SLURM: the same first command with --target=slurm --num_shards=25 --gpus_per_node=1 (see README, Scaling out).
Expected cost: not measured on a GPU (none was lent to this project's sessions). 25 runs x 100k steps = 2.5M
steps; the depth-2 model has the induction-heads model's size (2 layers, m = 128, N = 100, batch 32), which
trains at about 6 steps/s on this project's 2-core CPU, so about 4.6 hours per depth-2 run there and days for
the table. Measure a GPU's steps/s with --config.train.steps=2000 before launching.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.task.khop.n, c.task.khop.max_k, c.task.khop.alphabet = 100, 16, 4
  c.model.width, c.model.num_heads = 128, 4
  c.train.steps, c.train.batch_size, c.optim.learning_rate, c.optim.warmup_steps = 100_000, 32, 1e-4, 1_000
  # anna_softmax: window >= N, so exact attention over the union of the 4 tables' buckets (8 per table).
  c.attention.anna_softmax.update(dict(num_tables=4, num_hashes=3, chunk_size=64, window=128))
  c.attention.unit_softmax.beta = 8.0
  c.attention.reformer.update(dict(num_rounds=2, num_buckets=16, chunk_size=8))  # O(1) bucket size
  c.train.log_every, c.evaluation.every, c.evaluation.batches = 500, 10_000, 8
  c.train.checkpoint_every, c.train.keep_checkpoints, c.train.num_devices = 5_000, 2, 0
  c.grid.tables_every_layer, c.grid.hashes, c.grid.draws = (1, 4, 16, 64), (1, 2, 4, 6), 3
  c.sweep.model.depth = (2, 3, 4, 5, 6)
  c.sweep.attention.kind = ('full', 'unit_softmax', 'anna_softmax', 'reformer', 'lowrank')
  return c
