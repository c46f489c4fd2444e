"""The README's main job: a small k-hop sweep (depth x attention kind) that finishes on a CPU in minutes.

Every field can be overridden from the command line, e.g. --config.steps=2000 --config.sweep.depth='(2,3,4)'.
The sweep runs the product of the non-empty `sweep` tuples; an empty tuple keeps the single value above it.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  # Task.
  c.task = 'khop'  # 'khop' (k-hop induction heads) or 'match2'
  c.n = 24  # symbols per sequence (k-hop adds one leading k token)
  c.max_k = 2  # k-hop: k ~ uniform 0..max_k per training sequence; error is reported per k
  c.alphabet = 4  # k-hop: number of symbols
  c.modulus = 37  # match2: tokens are 0..modulus-1
  # Model.
  c.depth = 2  # transformer blocks
  c.width = 64  # residual width
  c.num_heads = 4
  c.mlp_ratio = 4  # MLP hidden width = mlp_ratio * width
  c.positional = 'learned'  # 'learned' or 'sinusoidal'
  c.causal = True  # k-hop only looks back; causal attention matches it
  # Attention.
  c.attention = 'full'  # 'full', 'anna' or 'lowrank', used for training
  c.eval_attention = ''  # '' evaluates with the training attention; a kind swaps it in for evaluation only
  c.num_tables = 4  # ANNA: hash tables (l)
  c.num_hashes = 2  # ANNA: sign bits per table (z), 2**z buckets
  c.chunk_size = 64  # ANNA: sorted queries per chunk
  c.window = 128  # ANNA: sorted keys each chunk reads
  c.weighting = 'softmax'  # ANNA: 'softmax' or 'uniform' over colliding keys
  c.resample_hashes = False  # ANNA: redraw hash projections every step instead of fixing them per layer
  c.lowrank_features = 64  # low-rank (Performer) baseline: random features
  # Optimisation (AdamW, linear warm-up then linear decay to 0).
  c.seed = 0  # model init, hash projections and the data stream
  c.steps = 1000
  c.batch_size = 32  # global batch, split over the data-parallel devices
  c.learning_rate = 1e-3
  c.warmup_steps = 50
  c.weight_decay = 0.01
  c.grad_clip = 1.0  # global-norm clip; 0 disables it
  c.num_devices = 1  # data-parallel devices; 0 takes every device
  # Logging, evaluation, checkpoints.
  c.log_every = 100  # steps between console / TensorBoard logs
  c.eval_every = 500  # steps between evaluations (and at the end)
  c.eval_batches = 4  # batches of fresh sequences per evaluation (per k for k-hop)
  c.checkpoint_every = 200  # steps between Orbax checkpoints (and at the end)
  c.keep_checkpoints = 2  # checkpoints kept on disk
  # Sweep axes: the product of the non-empty tuples.
  c.sweep = ml_collections.ConfigDict()
  c.sweep.task = ()
  c.sweep.depth = (1, 2)
  c.sweep.width = ()
  c.sweep.n = ()
  c.sweep.attention = ('full', 'anna')
  c.sweep.max_k = ()
  c.sweep.num_tables = ()
  c.sweep.num_hashes = ()
  c.sweep.seed = ()
  return c
