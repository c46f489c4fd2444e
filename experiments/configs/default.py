"""The base config every other config starts from: a small k-hop sweep, depth x attention kind, that finishes on a
CPU in minutes.

Sections mirror the library's dataclasses and are built into them by `experiments.experiment.build`, the one
factory (its docstring lists the sections). Every field can be overridden from the command line, and swept:
  --config.train.steps=2000 --config.attention.anna_softmax.num_tables=8
  --config.sweep.model.depth='(2,3,4)' --config.sweep.attention.kind="('full','anna_softmax')"
The sweep runs the product of the non-empty `sweep` tuples; runs are named by the fields they sweep.
"""

import ml_collections

from anna_jax.tasks import KHop, Match2
from experiments.experiment import (EvalConfig, OptimConfig, TrainConfig, attention_sections, model_section, section,
                                    with_sweep_axes)


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init, hash functions and the data streams
  # Task: 'khop' (k-hop induction heads: n symbols, k ~ uniform 0..max_k per training sequence, error per k) or
  # 'match2' (n tokens mod `modulus`); each task's section holds its dataclass's fields (anna_jax.tasks).
  c.task = ml_collections.ConfigDict()
  c.task.name = 'khop'
  c.task.khop = section(KHop, n=24, alphabet=4, max_k=2)
  c.task.match2 = section(Match2, n=32, modulus=37)
  # Model (anna_jax.model.TransformerConfig): pre-LayerNorm blocks; k-hop only looks back, so causal.
  c.model = model_section(depth=2, width=64, num_heads=4, mlp_ratio=4, positional='learned', causal=True)
  # Attention: the kind used for training, and one section per kind (anna_jax.attention.AttentionConfig).
  # Kinds: 'full', 'full_blockwise', 'unit_softmax' (the paper's surrogate), 'anna' (Algorithm 1: q and k get no
  # gradient), 'anna_softmax' (softmax over ANNA's collision set, trainable), 'lowrank', 'reformer'.
  # One section per registered kind (anna_jax.registry), at its dataclass's defaults but where set below.
  c.attention = attention_sections(
      # anna: tables l, hashes z, LSH family ('hyperplane': 2**z buckets; 'crosspolytope': (2 d')**z),
      # crosspolytope_dim d' (0 = head dim), resample_hashes, loop_plan (anna_jax.plans).
      anna=dict(num_tables=4, num_hashes=2),
      # anna_softmax: anna's hashing, plus chunk_size (sorted queries per chunk), window (sorted keys each chunk,
      # causal: each query, reads) and weighting ('softmax' or 'uniform' over the colliding keys).
      anna_softmax=dict(num_tables=4, num_hashes=2, chunk_size=64, window=128))
  # Other sections: full (implementation: '' XLA's choice, 'xla' or 'cudnn'), full_blockwise (block),
  # unit_softmax (beta: softmax(beta * q.k) over unit-norm q, k; or collision_hashes z > 0: weights p^z / sum p^z
  # with p = 1 - angle(q, k) / pi, what Algorithm 1 with z hashes converges to as its tables grow), lowrank
  # (num_features), reformer (num_rounds, num_buckets (even), chunk_size: each chunk attends itself and the
  # previous one). attention.per_layer: () or one dict of overrides per layer, e.g. ({'kind': 'full'}, {'kind': 'anna'})
  # Training (experiments.experiment.TrainConfig), optimisation (OptimConfig: AdamW, weight_decay 0 is Adam),
  # evaluation (EvalConfig): every field is commented on its dataclass.
  c.train = section(TrainConfig)
  c.optim = section(OptimConfig)
  c.evaluation = section(EvalConfig)
  # Grid evaluation (python -m experiments.main --mode=grid): every finished run of the sweep is evaluated with `anna`
  # (Algorithm 1, attention.anna's family) swapped in, over tables per layer x hashes x draws. Empty: no grid.
  c.grid = ml_collections.ConfigDict()
  c.grid.tables_per_layer = ()  # one tuple of table counts per layer, e.g. ((1, 2, 4),) for one layer
  c.grid.tables_every_layer = ()  # or table counts given to every layer at once, e.g. (1, 4, 16), at any depth
  c.grid.hashes = ()  # hashes per table (z)
  c.grid.draws = 10  # fresh hash functions per cell: mean and std over them
  c.grid.seed = 0  # draw d of every cell uses hash seed (grid.seed, d)
  # Sweep: the same tree, every leaf a tuple of values (empty: not swept).
  with_sweep_axes(c)
  c.sweep.model.depth = (1, 2)
  c.sweep.attention.kind = ('full', 'anna_softmax')
  return c
