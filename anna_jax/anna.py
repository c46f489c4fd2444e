"""ANNA as the paper defines it: Algorithm 1 of arXiv 2509.09001 (attention kind `anna`).

l hash tables, each the concatenation of z angular LSH functions (`anna_jax.lsh`); queries and keys are hashed
separately with the same functions. Per table every bucket holds the SUM of the values and the COUNT of the
keys hashed into it; a query adds the (sum, count) of the bucket it hits in each table and outputs sum / count.
So w_ij = c_ij / sum_j' c_ij', with c_ij the number of tables in which q_i and k_j collide: a key colliding in
t tables weighs t times (multiplicity, not union). There is no q.k product, no softmax and no dropped pair.

Loop plans (`loop_plan`, `anna_jax.plans`; 'auto' picks by backend), equal outputs, no n x n tensor and no
dropped pair in any:
- 'accelerator' (GPU/TPU): every table hashed at once, then one `lax.scan` over tables (the paper's
  Algorithm 2: memory O(n * d) per step), each step a few large kernels batched over batch and heads.
  Non-causal: a scatter-add of (v, 1) into the buckets and a gather per query, no sort. Causal (not in the
  paper; k-hop / induction heads need it: query i counts only keys j <= i): keys and queries sorted together
  by (bucket, position), a key before the query at its own position; prefix sums over the sorted values give
  each query its bucket's sum up to its position. The sorted path also serves buckets outnumbering keys.
- 'cpu_kernel': two C++ kernels (`anna_jax.cpu_kernel`, built on first use; XLA FFI custom calls on XLA's CPU thread
  pool), because XLA's CPU scatter and gather cost several times the memory they touch. Hyperplane codes
  by a register-tiled product (cross-polytope codes by XLA, 2048 tokens at a time); then per (batch row, head)
  the bucket tables of all l tables are built in one walk over the keys and read in one walk
  over the queries. Causal walks the tokens in order, key i added before query i reads: exact, no sort, no
  prefix sums. The VJP in v is the same kernel with keys and queries swapped (causal: walked backwards).
  Code spaces far larger than n (many hashes per table) are hashed into 2n-4n exact rows per table, so z
  well above log2 n costs no more.
- 'cpu_xla': the accelerator plan's scan, the one CPU path without a C++ compiler ('auto' picks it there).
Sums accumulate in float32 whatever the input dtype. A query with no colliding key outputs zeros; padded
queries output zeros, padded keys are never counted.

Gradients: the output is linear in v, so v gets exact gradients; the bucket assignment is piecewise constant in
q and k, so q and k get none (zero). A model trained with `anna` cannot learn its queries and keys: the paper
trains the `unit_softmax` surrogate and swaps Algorithm 1 in for evaluation. Ours besides: `straight_through`
keeps this forward and gives q and k a collision kernel's gradient, densely or from the colliding pairs
(`anna_jax.collision_gradient`).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from anna_jax import checks, cpu_kernel, lsh, plans, v_linear


@dataclasses.dataclass(frozen=True)
class ANNAConfig:
  num_tables: int = 4  # l: independent hash tables
  num_hashes: int = 3  # z: hashes concatenated per table
  family: str = 'hyperplane'  # 'hyperplane' (2**z buckets per table) or 'crosspolytope' ((2 d')**z)
  crosspolytope_dim: int = 0  # d' of each cross-polytope hash; 0 = head_dim
  resample_hashes: bool = False  # False: hash functions fixed per layer; True: redrawn every call
  loop_plan: str = 'auto'  # 'auto', 'accelerator', 'cpu_xla' or 'cpu_kernel': see anna_jax.plans
  # A training aid (ours, not the paper's; read by `anna` in a model, not by anna_attention): the forward stays
  # Algorithm 1, and q and k get the gradient of the collision kernel p^z / sum p^z (p = 1 - angle / pi, z =
  # num_hashes), the weights Algorithm 1 tends to as its tables grow, so a model can learn its queries and keys
  # through the attention it runs. v keeps Algorithm 1's exact gradient.
  straight_through: bool = False
  # Which pairs that gradient reads (anna_jax.collision_gradient): 'all', the dense kernel (O(n^2) per call; a
  # sequence split over devices is gathered for it), or 'colliding', the pairs Algorithm 1's tables collide,
  # weighted by their counts (O(n * tables * window): no n x n tensor; one device only so far: under a mesh that
  # splits sequences the dense kernel serves).
  straight_through_pairs: str = 'all'
  straight_through_tables: int = 0  # 'colliding': the first this many tables feed the gradient (0: all)
  straight_through_window: int = 16  # 'colliding': keys of its bucket each query is scored against, per table
  # The CPU paths' block sizes and budgets (anna_jax.plans.Tuning): speed and memory only, never a number. The
  # functions take it from here unless given one (their `tuning` argument).
  tuning: plans.Tuning = plans.DEFAULT_TUNING

  def __post_init__(self):  # a config that exists is valid
    self.validate()

  def validate(self):
    if self.num_tables < 1 or self.num_hashes < 0:
      raise ValueError(f'ANNA needs num_tables >= 1 and num_hashes >= 0, got {self.num_tables}, {self.num_hashes}')
    if self.straight_through and (self.family != 'hyperplane' or self.num_hashes < 1):
      raise ValueError('straight_through needs the hyperplane family (its collision kernel) and num_hashes >= 1, '
                       f'got {self.family!r} and {self.num_hashes}')
    if self.straight_through_pairs not in ('all', 'colliding'):
      raise ValueError(f"straight_through_pairs must be 'all' or 'colliding', got {self.straight_through_pairs!r}")
    if not 0 <= self.straight_through_tables <= self.num_tables or self.straight_through_window < 1:
      raise ValueError(f'need 0 <= straight_through_tables <= num_tables and straight_through_window >= 1, got '
                       f'{self.straight_through_tables}, {self.straight_through_window}')
    lsh.validate_family(self.family)
    if self.crosspolytope_dim < 0:
      raise ValueError(f'crosspolytope_dim must be >= 0, got {self.crosspolytope_dim}')
    plans.check(self.loop_plan)


class ANNAStats(NamedTuple):
  no_collision_fraction: jax.Array  # share of real queries whose buckets hold no key in any table
  mean_collisions: jax.Array  # (key, table) collisions per real query: sum_j c_ij, averaged
  counts: jax.Array = None  # (batch, n, heads) int32: each query's collisions sum_j c_ij (0 for padding)


def draw_projections(key, num_heads, head_dim, config):
  """The hash functions of one layer (see `anna_jax.lsh.draw` for their shapes)."""
  return lsh.draw(key, num_heads, head_dim, config.num_tables, config.num_hashes, config.family,
                  config.crosspolytope_dim)


def _scatter_table(q_ids, k_ids, v, k_valid, num_ids):
  """(bucket sums, bucket counts) read by each query, by a scatter-add into the buckets and a gather."""
  batch, _, heads, dim = v.shape
  b = jnp.arange(batch)[:, None, None]
  h = jnp.arange(heads)[None, None, :]
  k_ids = jnp.where(k_valid[:, :, None], k_ids, num_ids)  # padded keys land in a bucket no query reads
  sums = jnp.zeros((batch, num_ids + 1, heads, dim), jnp.float32).at[b, k_ids, h].add(v.astype(jnp.float32))
  counts = jnp.zeros((batch, num_ids + 1, heads), jnp.int32).at[b, k_ids, h].add(1)
  return sums[b, q_ids, h], counts[b, q_ids, h]


def _blocked_cumsum(x, block=16):
  """Inclusive cumsum along axis 1: a small lower-triangular matmul inside blocks, then the block totals.

  Measured on this project's 2-core CPU, (1, 16K, 8, 64) float32, two runs (2026-12-02): 72-73 ms against
  100-101 ms for jnp.cumsum (XLA's lowering makes several passes). A matmul on accelerators; block-local partial sums round less
  than one long running sum.
  """
  batch, n = x.shape[:2]
  pad = -n % block
  blocks = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)).reshape(batch, -1, block, *x.shape[2:])
  inner = jnp.einsum('ij,bcj...->bci...', jnp.tril(jnp.ones((block, block), x.dtype)), blocks)
  carry = jnp.cumsum(inner[:, :, -1], axis=1) - inner[:, :, -1]  # totals of the blocks before
  return (inner + carry[:, :, None]).reshape(batch, n + pad, *x.shape[2:])[:, :n]


def _sorted_table(q_ids, k_ids, v, k_valid, num_ids, causal):
  """(bucket sums, bucket counts) read by each query from prefix sums over keys sorted by (bucket, position).

  Keys and queries are sorted together. Causal: the order within a bucket is 2 * position (+1 for a query), so
  key j precedes query i iff j <= i. Otherwise every query follows every key of its bucket. For a query, the
  keys sorted before it minus the keys before its bucket's first element are exactly the keys it counts.
  """
  batch, n, heads = q_ids.shape
  b = jnp.arange(batch)[:, None, None]
  h = jnp.arange(heads)[None, None, :]
  position = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None, :, None], q_ids.shape)
  k_ids = jnp.where(k_valid[:, :, None], k_ids, num_ids)  # padded keys sort after every query
  if causal:
    order = jnp.concatenate([2 * position, 2 * position + 1], axis=1)
  else:
    order = jnp.concatenate([position, n + position], axis=1)
  ids = jnp.concatenate([k_ids, q_ids], axis=1)  # (batch, 2n, heads)
  span = 2 * n
  if (num_ids + 1) * span <= 2**31:  # one packed int32 key: a single-operand sort (see anna_softmax._sort_slots)
    packed = jnp.sort(ids * span + order, axis=1)
    ids, order = packed // span, packed % span
  else:
    ids, order = jax.lax.sort((ids, order), dimension=1, num_keys=2)
  is_query = (order & 1 if causal else order // n) == 1
  slot = order // 2 if causal else order % n  # the element's position in the sequence
  keys_before = jnp.cumsum(~is_query, axis=1, dtype=jnp.int32) - (~is_query)  # keys strictly before, sorted
  index = jnp.arange(span, dtype=jnp.int32)[None, :, None]
  first = jnp.concatenate([jnp.ones_like(ids[:, :1]), ids[:, 1:] != ids[:, :-1]], axis=1)
  bucket_start = jax.lax.cummax(jnp.where(first, index, 0), axis=1)
  lo = jnp.take_along_axis(keys_before, bucket_start, axis=1)
  # The k-th key in sorted order, by position; then prefix sums of the values in that order.
  key_rank = jnp.where(is_query, n, keys_before)  # queries are routed past the end and dropped
  key_order = jnp.zeros_like(q_ids).at[b, key_rank, h].set(slot, mode='drop')
  prefix = _blocked_cumsum(v[b, key_order, h].astype(jnp.float32))  # (batch, n, heads, dim)
  # lo and hi (= keys_before) of every query, back in sequence order.
  query_slot = jnp.where(is_query, slot, n)
  q_lo = jnp.zeros_like(q_ids).at[b, query_slot, h].set(lo, mode='drop')
  q_hi = jnp.zeros_like(q_ids).at[b, query_slot, h].set(keys_before, mode='drop')

  def prefix_at(count):  # sum of the first `count` sorted values
    return jnp.where((count > 0)[..., None], prefix[b, jnp.maximum(count - 1, 0), h], 0.0)

  return prefix_at(q_hi) - prefix_at(q_lo), q_hi - q_lo


def _scan_plan(q_ids, k_ids, v, valid, num_ids, causal):
  """(sums, counts) of every query: one scan over tables, each step a few large kernels."""
  n = v.shape[1]

  def table_step(carry, ids):
    sums, counts = carry
    q_ids, k_ids = ids
    if causal or num_ids > n:  # buckets outnumbering keys: the sorted path keeps memory O(n)
      table_sums, table_counts = _sorted_table(q_ids, k_ids, v, valid, num_ids, causal)
    else:
      table_sums, table_counts = _scatter_table(q_ids, k_ids, v, valid, num_ids)
    return (sums + table_sums, counts + table_counts), None

  # zeros_like keeps v's varying mesh axes, so the scan also runs inside shard_map (sequence_parallel).
  init = (jnp.zeros_like(v, jnp.float32), jnp.zeros_like(q_ids[..., 0]))
  return jax.lax.scan(table_step, init, (jnp.moveaxis(q_ids, 3, 0), jnp.moveaxis(k_ids, 3, 0)))[0]


def bucket_sums(read_ids, write_ids, values, read_valid, write_valid, num_ids, direction, plan):
  """Per reader, the float32 sums of the writers' values and the counts of writers it collides with over all
  tables (a writer colliding in t tables counts t times): (sums, counts). Shapes as `cpu_kernel.bucket_attend`:
  ids (batch, n, heads, tables), values (batch, n, heads, dim), valids (batch, n). direction 0: every writer;
  1: writer j for reader i iff j <= i; 2: iff j >= i. Readers that are padding get zeros.
  """
  if plan.kernel:
    return cpu_kernel.bucket_attend(read_ids, write_ids, values, read_valid, write_valid, num_ids=num_ids,
                                    direction=direction, normalize=False, tuning=plan.tuning)
  if direction == 2:  # j >= i is j <= i read backwards
    flip = lambda x: jnp.flip(x, axis=1)
    sums, counts = bucket_sums(flip(read_ids), flip(write_ids), flip(values), flip(read_valid), flip(write_valid),
                               num_ids, 1, plan)
    return flip(sums), flip(counts)
  sums, counts = _scan_plan(read_ids, write_ids, values, write_valid, num_ids, direction == 1)
  read_valid = read_valid[:, :, None]
  return jnp.where(read_valid[..., None], sums, 0.0), jnp.where(read_valid, counts, 0)


def bucket_ids(q, k, projections, family, plan):
  """(q_ids, k_ids, num_ids) as the plan hashes them: the CPU kernels' codes, or `lsh.bucket_ids`."""
  if plan.kernel:
    return cpu_kernel.bucket_ids(q, k, projections, family)
  return lsh.bucket_ids(q, k, projections, family)


def collision_stats(counts, valid, total=lambda x: x):
  """ANNAStats from the per-query collision counts (batch, n, heads) and the (batch, n) padding mask; `total`
  sums a count over the devices holding the rest of the sequence (sequence_parallel), identity otherwise."""
  q_valid = valid[:, :, None]
  real = jnp.maximum(total(jnp.sum(q_valid)) * counts.shape[2], 1)
  return ANNAStats(no_collision_fraction=total(jnp.sum((counts == 0) & q_valid)) / real,
                   mean_collisions=total(jnp.sum(counts, dtype=jnp.float32)) / real)


@checks.guarded('anna', hashes='config', any_value_width=True)
def anna_attention(q, k, v, projections, config, *, mask=None, causal=False, tuning=None):
  """Algorithm 1 over q, k, v of shape (batch, n, heads, head_dim).

  Args:
    projections: the layer's hash functions, see `draw_projections`.
    config: ANNAConfig (its family is read here; tables and hashes come from the projections' shape).
    mask: optional (batch, n) bool, True for real tokens.
    causal: query i only counts keys j <= i.
    tuning: the CPU kernel's `plans.Tuning` (None: config.tuning); it changes speed and memory, never a number.
  Returns:
    (output of v's shape and dtype, ANNAStats). Gradients flow to v only (see the module docstring).
  """
  batch, n = q.shape[:2]
  valid = jnp.ones((batch, n), bool) if mask is None else mask.astype(bool)
  q_valid = valid[:, :, None]
  plan = plans.resolve(config.loop_plan, 'anna', tuning or config.tuning)
  # The ids are int32 (batch, n, heads, tables): every table hashed up front (one projection per input).
  q_ids, k_ids, num_ids = bucket_ids(q, k, projections, config.family, plan)
  if plan.kernel:
    out, counts, _ = v_linear.attend(cpu_kernel.BucketWalk(num_ids, plan.tuning), v, q_ids, k_ids, valid, causal,
                                     v.dtype)
  else:
    sums, counts = _scan_plan(q_ids, k_ids, v, valid, num_ids, causal)
    out = jnp.where(q_valid[..., None], sums / jnp.maximum(counts, 1)[..., None], 0.0)  # no collision: zeros
    counts = jnp.where(q_valid, counts, 0)
  stats = collision_stats(counts, valid)._replace(counts=counts)
  return out.astype(v.dtype), jax.tree.map(jax.lax.stop_gradient, stats)
