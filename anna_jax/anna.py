"""ANNA as the paper defines it: Algorithm 1 of arXiv 2509.09001 (attention kind `anna`).

l hash tables, each the concatenation of z angular LSH functions (`anna_jax.lsh`); queries and keys are hashed
separately with the same functions. Per table every bucket holds the SUM of the values and the COUNT of the
keys hashed into it; a query adds the (sum, count) of the bucket it hits in each table and outputs sum / count.
So w_ij = c_ij / sum_j' c_ij', with c_ij the number of tables in which q_i and k_j collide: a key colliding in
t tables weighs t times (multiplicity, not union). There is no q.k product, no softmax and no dropped pair.

Two loop plans (`loop_plan`; 'auto' picks by jax.default_backend()), equal outputs, no n x n tensor and no
dropped pair in either:
- 'accelerator' (GPU/TPU): every table hashed at once, then one `lax.scan` over tables (the paper's
  Algorithm 2: memory O(n * d) per step), each step a few large kernels batched over batch and heads.
  Non-causal: a scatter-add of (v, 1) into the buckets and a gather per query, no sort. Causal (not in the
  paper; k-hop / induction heads need it: query i counts only keys j <= i): keys and queries sorted together
  by (bucket, position), a key before the query at its own position; prefix sums over the sorted values give
  each query its bucket's sum up to its position. The sorted path also serves buckets outnumbering keys.
- 'cpu': the working set stays in cache. Tokens are hashed 2048 at a time; groups of up to 8 tables are built
  together, key block by key block, into stacked bucket tables (sums, counts), and the queries read a group
  with one fused gather-and-add. Causal walks blocks of 16 tokens in order: a block's queries read the tables
  (keys of earlier blocks) before the block's keys are added, and the pairs inside each block (j <= i) are
  counted densely, all blocks in one batched matmul. No sort. Code spaces larger than n take the sorted path.
Sums accumulate in float32 whatever the input dtype. A query with no colliding key outputs zeros; padded
queries output zeros, padded keys are never counted.

Gradients: the output is linear in v, so v gets exact gradients; the bucket assignment is piecewise constant in
q and k, so q and k get none (zero). A model trained with `anna` cannot learn its queries and keys: the paper
trains the `unit_softmax` surrogate and swaps Algorithm 1 in for evaluation.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from anna_jax import lsh


@dataclasses.dataclass(frozen=True)
class ANNAConfig:
  num_tables: int = 4  # l: independent hash tables
  num_hashes: int = 3  # z: hashes concatenated per table
  family: str = 'hyperplane'  # 'hyperplane' (2**z buckets per table) or 'crosspolytope' ((2 d')**z)
  crosspolytope_dim: int = 0  # d' of each cross-polytope hash; 0 = head_dim
  resample_hashes: bool = False  # False: hash functions fixed per layer; True: redrawn every call
  loop_plan: str = 'auto'  # 'cpu', 'accelerator' or 'auto' (by jax.default_backend())

  def validate(self):
    if self.num_tables < 1 or self.num_hashes < 0:
      raise ValueError(f'ANNA needs num_tables >= 1 and num_hashes >= 0, got {self.num_tables}, {self.num_hashes}')
    lsh.validate_family(self.family)
    if self.crosspolytope_dim < 0:
      raise ValueError(f'crosspolytope_dim must be >= 0, got {self.crosspolytope_dim}')
    check_loop_plan(self.loop_plan)


LOOP_PLANS = ('auto', 'cpu', 'accelerator')


def check_loop_plan(plan):
  if plan not in LOOP_PLANS:
    raise ValueError(f'loop_plan must be one of {LOOP_PLANS}, got {plan!r}')


def resolve_loop_plan(plan):
  """'cpu' or 'accelerator'; 'auto' follows the default backend."""
  if plan == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'accelerator'
  return plan


class ANNAStats(NamedTuple):
  no_collision_fraction: jax.Array  # share of real queries whose buckets hold no key in any table
  mean_collisions: jax.Array  # (key, table) collisions per real query: sum_j c_ij, averaged


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

  On CPU about 2x faster than jnp.cumsum (XLA's lowering makes several passes), a matmul on accelerators, and
  block-local partial sums round less than one long running sum.
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
  if (num_ids + 1) * span <= 2**31:  # one packed int32 key: a single-operand sort (much faster on CPU)
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
  batch, n, heads, dim = v.shape

  def table_step(carry, ids):
    sums, counts = carry
    q_ids, k_ids = ids
    if causal or num_ids > n:  # buckets outnumbering keys: the sorted path keeps memory O(n)
      table_sums, table_counts = _sorted_table(q_ids, k_ids, v, valid, num_ids, causal)
    else:
      table_sums, table_counts = _scatter_table(q_ids, k_ids, v, valid, num_ids)
    return (sums + table_sums, counts + table_counts), None

  init = (jnp.zeros((batch, n, heads, dim), jnp.float32), jnp.zeros((batch, n, heads), jnp.int32))
  return jax.lax.scan(table_step, init, (jnp.moveaxis(q_ids, 3, 0), jnp.moveaxis(k_ids, 3, 0)))[0]


# CPU plan sizes: a key block's values stay in cache while they are added to the group's tables; the
# causal block is small because its within-block pairs are counted densely; one hash block's float32
# projections (2048 x heads x tables * hashes) stay a few MB.
_HASH_BLOCK = 2048
_KEY_BLOCK = 1024
_CAUSAL_BLOCK = 16
_MAX_GROUP = 8  # tables built together (unrolled in the loop body)
_GROUP_BYTES = 2**28  # their stacked float32 sums at most 256 MiB: at n = 1M (64 MiB per table) 2 tables a
# step ran in 7.4-8.0 s, 8 tables in 8.6-9.1 s, 1 table in 8.5 s (measured on the 2-core CI machine)


def _group_size(num_tables, n, num_ids, batch_heads_dim):
  """Tables per CPU step: the largest divisor of num_tables within _MAX_GROUP whose stacked tables stay within
  one v's memory and _GROUP_BYTES."""
  table_bytes = 4 * (num_ids + 1) * batch_heads_dim
  limit = max(1, min(_MAX_GROUP, n // (num_ids + 1), _GROUP_BYTES // table_bytes))
  return max(g for g in range(1, limit + 1) if num_tables % g == 0)


def _table_rows(ids, num_ids):
  """Flat row of each (token, head, table) in the stacked tables (batch, tables, heads, num_ids + 1)."""
  batch, _, heads, tables = ids.shape
  b = jnp.arange(batch)[:, None, None, None]
  h = jnp.arange(heads)[None, None, :, None]
  return ((b * tables + jnp.arange(tables)) * heads + h) * (num_ids + 1) + ids


def _empty_tables(batch, group, heads, num_ids, dim):
  rows = batch * group * heads * (num_ids + 1)
  return jnp.zeros((rows, dim), jnp.float32), jnp.zeros((rows,), jnp.int32)


def _read(tables, rows):
  """(sums, counts) over the group's tables of the buckets the queries hit: one fused gather-and-add each."""
  sums, counts = tables
  tables_in_group = range(rows.shape[-1])
  return (sum(sums.at[rows[..., t]].get(mode='promise_in_bounds') for t in tables_in_group),
          sum(counts.at[rows[..., t]].get(mode='promise_in_bounds') for t in tables_in_group))


def _add(tables, rows, values, ones=1):
  sums, counts = tables
  for t in range(rows.shape[-1]):
    sums = sums.at[rows[..., t]].add(values.astype(jnp.float32), mode='promise_in_bounds')
    counts = counts.at[rows[..., t]].add(ones, mode='promise_in_bounds')
  return sums, counts


def _cpu_group(q_ids, k_ids, v, valid, num_ids):
  """Non-causal, one group of tables: build the tables key block by key block, then read them."""
  batch, n, heads, group = k_ids.shape
  k_ids = jnp.where(valid[:, :, None, None], k_ids, num_ids)  # padded keys land in a bucket no query reads

  def add_keys(tables, start, size):
    keys, values = (jax.lax.dynamic_slice_in_dim(x, start, size, axis=1) for x in (k_ids, v))
    return _add(tables, _table_rows(keys, num_ids), values)

  block = min(_KEY_BLOCK, n)
  tables = _empty_tables(batch, group, heads, num_ids, v.shape[-1])
  tables = jax.lax.fori_loop(0, n // block, lambda i, t: add_keys(t, i * block, block), tables)
  if n % block:
    tables = add_keys(tables, n - n % block, n % block)
  return _read(tables, _table_rows(q_ids, num_ids))


def _cpu_causal_group(q_ids, k_ids, v, valid, num_ids):
  """Causal, one group of tables: blocks in order; queries read the tables (earlier blocks), then the block's
  keys are added; pairs within a block (j <= i) are counted densely, for all blocks at once."""
  batch, n, heads, group = k_ids.shape
  size = _CAUSAL_BLOCK
  pad = -n % size
  k_ids = jnp.where(valid[:, :, None, None], k_ids, num_ids)  # padded keys match no query id (< num_ids)
  if pad:  # padding keys are invalid; padding queries are cut off below
    q_ids, k_ids, v = (jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=c)
                       for x, c in ((q_ids, 0), (k_ids, num_ids), (v, 0)))
  blocks = (n + pad) // size

  def step(i, carry):
    tables, (sums, counts) = carry
    queries, keys, values = (jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=1)
                             for x in (q_ids, k_ids, v))
    # The barrier materialises the read once (else XLA recomputes it in each consumer).
    block_sums, block_counts = jax.lax.optimization_barrier(_read(tables, _table_rows(queries, num_ids)))
    sums = jax.lax.dynamic_update_slice_in_dim(sums, block_sums, i * size, axis=1)
    counts = jax.lax.dynamic_update_slice_in_dim(counts, block_counts, i * size, axis=1)
    # A never-true condition on the reads makes the adds depend on them (values + 0.0, counts + 1 exactly, NaN
    # or not), so XLA orders the reads before the in-place adds; otherwise it copies the tables every step.
    never = (block_sums[..., :1] < -jnp.inf) | (block_counts[..., None] < 0)
    values = values.astype(jnp.float32) + jnp.where(never, 1.0, 0.0)
    return _add(tables, _table_rows(keys, num_ids), values, jnp.where(never[..., 0], 2, 1)), (sums, counts)

  tables = _empty_tables(batch, group, heads, num_ids, v.shape[-1])
  read = (jnp.zeros(v.shape, jnp.float32), jnp.zeros(v.shape[:-1], jnp.int32))
  _, (sums, counts) = jax.lax.fori_loop(0, blocks, step, (tables, read))
  # Within a block: pairs[b, h, c, i, j] = tables where query i and key j of block c collide, j <= i. Heads
  # lead, so the small matmuls need no transpose of the pairs.
  by_block = lambda x: jnp.swapaxes(x, 1, 2).reshape(batch, heads, blocks, size, *x.shape[3:])
  q_blocks, k_blocks = by_block(q_ids), by_block(k_ids)
  pairs = jnp.sum(q_blocks[:, :, :, :, None] == k_blocks[:, :, :, None, :], axis=-1, dtype=jnp.int32)
  pairs = jnp.where(jnp.tril(jnp.ones((size, size), bool)), pairs, 0)
  within = jnp.einsum('bhcij,bhcjd->bhcid', pairs.astype(jnp.float32), by_block(v).astype(jnp.float32))
  sums = sums + jnp.swapaxes(within.reshape(batch, heads, n + pad, -1), 1, 2)
  counts = counts + jnp.swapaxes(jnp.sum(pairs, axis=-1).reshape(batch, heads, n + pad), 1, 2)
  return sums[:, :n], counts[:, :n]


def _cpu_plan(q_ids, k_ids, v, valid, num_ids, causal):
  """(sums, counts) of every query over all tables, a group of tables at a time."""
  batch, n, heads, tables = q_ids.shape
  group = _group_size(tables, n, num_ids, batch * heads * v.shape[-1])
  attend = _cpu_causal_group if causal else _cpu_group
  if group == tables:
    return attend(q_ids, k_ids, v, valid, num_ids)
  split = lambda ids: jnp.moveaxis(ids.reshape(batch, n, heads, tables // group, group), 3, 0)

  def group_step(carry, ids):
    sums, counts = attend(*ids, v, valid, num_ids)
    return (carry[0] + sums, carry[1] + counts), None

  init = (jnp.zeros(v.shape, jnp.float32), jnp.zeros(v.shape[:-1], jnp.int32))
  return jax.lax.scan(group_step, init, (split(q_ids), split(k_ids)))[0]


def anna_attention(q, k, v, projections, config, *, mask=None, causal=False):
  """Algorithm 1 over q, k, v of shape (batch, n, heads, head_dim).

  Args:
    projections: the layer's hash functions, see `draw_projections`.
    config: ANNAConfig (its family is read here; tables and hashes come from the projections' shape).
    mask: optional (batch, n) bool, True for real tokens.
    causal: query i only counts keys j <= i.
  Returns:
    (output of v's shape and dtype, ANNAStats). Gradients flow to v only (see the module docstring).
  """
  config.validate()
  batch, n, heads, dim = q.shape
  valid = jnp.ones((batch, n), bool) if mask is None else mask.astype(bool)
  cpu = resolve_loop_plan(config.loop_plan) == 'cpu'
  # Hash every table up front ('accelerator': one projection per input; XLA would re-transpose q and k for
  # each table's small matmul) or block by block ('cpu'). The ids are int32 (batch, n, heads, tables).
  q_ids, k_ids, num_ids = lsh.bucket_ids(q, k, projections, config.family, block_size=_HASH_BLOCK if cpu else 0)
  if cpu and num_ids <= n:
    sums, counts = _cpu_plan(q_ids, k_ids, v, valid, num_ids, causal)
  else:
    sums, counts = _scan_plan(q_ids, k_ids, v, valid, num_ids, causal)
  q_valid = valid[:, :, None]
  out = jnp.where(q_valid[..., None], sums / jnp.maximum(counts, 1)[..., None], 0.0)  # no collision: zeros
  real = jnp.maximum(jnp.sum(q_valid) * heads, 1)
  counts = jnp.where(q_valid, counts, 0)
  stats = ANNAStats(
      no_collision_fraction=jnp.sum((counts == 0) & q_valid) / real,
      mean_collisions=jnp.sum(counts, dtype=jnp.float32) / real)
  return out.astype(v.dtype), jax.tree.map(jax.lax.stop_gradient, stats)
