"""The base config every other config starts from (every field commented): a small k-hop sweep, depth x
attention kind, that finishes on a CPU in minutes.

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
  c.train_size = 0  # match2: > 0 trains on a fixed label-balanced set of this many sequences; 0: fresh ones
  c.test_size = 0  # > 0: evaluate on a fixed set of this many sequences (match2: balanced); 0: fresh batches
  c.eval_k = -1  # k-hop: evaluate this k only; -1: every k in 0..max_k
  c.error_over = 'answers'  # k-hop: count errors on 'answers' (targets other than "none") or on 'all' tokens
  # Model.
  c.depth = 2  # transformer blocks
  c.width = 64  # residual width
  c.num_heads = 4
  c.mlp_ratio = 4  # MLP hidden width = mlp_ratio * width
  c.positional = 'learned'  # 'learned', 'sinusoidal' or 'none'
  c.causal = True  # k-hop only looks back; causal attention matches it
  # Attention.
  # Kinds: 'full', 'unit_softmax' (the paper's surrogate), 'anna' (Algorithm 1: q and k get no gradient),
  # 'anna_softmax' (softmax over ANNA's collision set, trainable), 'lowrank'. Used for training.
  c.attention = 'full'
  c.eval_attention = ''  # '' evaluates with the training attention; a kind swaps it in for evaluation only
  c.beta = 1.0  # unit_softmax: softmax(beta * q.k) over unit-norm q, k
  c.num_tables = 4  # anna / anna_softmax: hash tables (l)
  c.num_hashes = 2  # anna / anna_softmax: hashes per table (z)
  c.family = 'hyperplane'  # LSH family: 'hyperplane' (2**z buckets) or 'crosspolytope' ((2 d')**z)
  c.crosspolytope_dim = 0  # d' of each cross-polytope hash; 0 = head dim
  c.chunk_size = 64  # anna_softmax: sorted queries per chunk
  c.window = 128  # anna_softmax: sorted keys each chunk reads
  c.weighting = 'softmax'  # anna_softmax: 'softmax' or 'uniform' over colliding keys
  c.resample_hashes = False  # anna / anna_softmax: redraw hash functions every call instead of fixing them
  c.lowrank_features = 64  # low-rank (Performer) baseline: random features
  # Optimisation (AdamW; weight_decay = 0 is Adam).
  c.seed = 0  # model init, hash projections and the data stream
  c.steps = 1000
  c.batch_size = 32  # global batch, split over the data-parallel devices
  c.learning_rate = 1e-3
  c.warmup_steps = 50
  c.schedule = 'linear_decay'  # after warm-up: 'linear_decay' (to 0 at `steps`) or 'constant'

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
  c.sweep.attention = ('full', 'anna_softmax')
  c.sweep.max_k = ()
  c.sweep.num_tables = ()
  c.sweep.num_hashes = ()
  c.sweep.beta = ()
  c.sweep.seed = ()
  # Grid evaluation (python -m experiments.grid): every finished run of the sweep is evaluated with `anna`
  # (Algorithm 1) swapped in, over tables per layer x hashes x draws, without retraining. Empty: no grid.
  c.grid = ml_collections.ConfigDict()
  c.grid.tables_per_layer = ()  # one tuple of table counts per layer, e.g. ((1, 2, 4),) for one layer
  c.grid.hashes = ()  # hashes per table (z)
  c.grid.draws = 10  # fresh hash functions per cell: mean and std over them
  c.grid.seed = 0  # draw d of every cell uses hash seed (grid.seed, d)
  return c
