"""The k-hop length table: every attention kind learning k-hop as the sequence grows, N in {128, 512, 2048}.

  --config=experiments/configs/khop_length_table.py:N,ALPHABET[,gpu]   (default 128,4; ALPHABET 'grow' = N / 8)
  --config=experiments/configs/khop_length_table.py:gpu               (8192,grow,gpu)

Two regimes (issue 43): alphabet 4, Sanford et al.'s, where a hop jumps back about 4 positions so every k <= 8
stays within a window of 64 at any N; and a growing alphabet N / 8, where a hop jumps back about N / 8 positions,
so the hops span the whole sequence and only attention that reaches far can chain them. `local` (a window of 64
keys) is the control that tells the regimes apart.

The depth table's model and recipe (khop_depth_table.py: depth 4, width 64, 4 heads, AdamW lr 1e-3, 200 warm-up
steps, linear decay, 5,000 steps, k ~ uniform 0..8), with batches sized by TOKENS: 1,024 symbols a step, the depth table's (batch
1024 / N, at least 1: one sequence of 2,048 at N = 2048), since the MLPs cost per token and a batch of 32
sequences at N = 2048 would be 64x the depth table's step. Evaluation every 500 steps (the time-to-accuracy curves) on 8 fresh batches per k.

Per kind, the settings scale with N:
  full          exact softmax attention (XLA's)
  local         softmax over the 64 keys before each query (the control)
  lowrank       Performer, 64 random features
  reformer      2 rounds, chunks of 32, N / 32 buckets (a mean bucket of one chunk, as the Reformer paper)
  anna_softmax  4 tables x log2(N / 16) hashes (buckets of about 16 keys), chunks of 64, window 128
  anna          Algorithm 1 trained through (straight_through, hashes redrawn every step) from the full run of the
                same cell, 256 tables x 8 hashes with the learned value gain at 10x the rate: the recipe that put
                it within 1 of full attention at N = 32 (experiments/results/reasoning/, section 18), with the
                sub-quadratic 'colliding' gradient (16 of the tables, windows of 16 keys: anna_jax.collision_gradient)
The exact commands: experiments/scripts/khop_length_table.sh; the table, heat maps and time-to-accuracy plots:
  python -m experiments.length_table --workdir=runs/khop_length --out=experiments/results/khop_length_table
GPU scale (',gpu', for N = 8K to 64K on a GPU host): 16,384 tokens a step and 20,000 steps, evaluation every
1,000; the same model and kinds. Not run yet (no GPU lent); its train steps are timed by the device check
(benchmarks/device_check.sh, benchmarks/scripts/long_train_step.py). Launch, one run per GPU, e.g.:
  python -m launch.launch --target=local --num_shards=5 --gpus=5 --workdir=runs/khop_length_gpu/n32768_a4096 -- \
      --mode=train --config=experiments/configs/khop_length_table.py:32768,grow,gpu
"""

import math

from experiments.configs import default

TOKENS_PER_STEP = {'cpu': 1024, 'gpu': 16384}
STEPS = {'cpu': 5_000, 'gpu': 20_000}
WINDOW = 64  # local attention's keys before each query


def parse(arg):
  """'N,ALPHABET[,gpu]' or 'gpu' -> (n, alphabet, scale); ALPHABET 'grow' is N / 8."""
  parts = (arg or '128,4').split(',')
  if parts == ['gpu']:
    parts = ['8192', 'grow', 'gpu']
  scale = parts.pop() if parts[-1] in ('cpu', 'gpu') else 'cpu'
  if len(parts) != 2:
    raise ValueError(f"khop_length_table takes 'N,ALPHABET[,gpu]' or 'gpu', got {arg!r}")
  n = int(parts[0])
  return n, n // 8 if parts[1] == 'grow' else int(parts[1]), scale


def get_config(arg=''):
  n, alphabet, scale = parse(arg)
  c = default.get_config()
  c.task.khop.n, c.task.khop.max_k, c.task.khop.alphabet = n, 8, alphabet
  c.model.depth, c.model.width, c.model.num_heads = 4, 64, 4
  c.train.steps, c.train.batch_size = STEPS[scale], max(1, TOKENS_PER_STEP[scale] // n)
  c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 200
  every = 500 if scale == 'cpu' else 1_000
  c.train.log_every, c.evaluation.every, c.evaluation.batches = every, every, 8
  c.train.checkpoint_every, c.train.keep_checkpoints = every, 1
  c.attention.local.window = WINDOW
  c.attention.lowrank.num_features = 64
  c.attention.reformer.update(dict(num_rounds=2, num_buckets=max(2, n // 32), chunk_size=32))
  c.attention.anna_softmax.update(dict(num_tables=4, num_hashes=max(1, round(math.log2(n / 16))), chunk_size=64,
                                       window=128))
  c.attention.anna.update(dict(num_tables=256, num_hashes=8, straight_through=True, resample_hashes=True,
                               straight_through_pairs='colliding', straight_through_tables=16,
                               straight_through_window=16))
  c.sweep.model.depth = ()
  c.sweep.attention.kind = ('full', 'local', 'lowrank', 'reformer', 'anna_softmax')
  return c
