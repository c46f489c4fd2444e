"""anna_softmax: softmax attention over ANNA's collision set, by LSH bucketing and sort-based grouping.

A differentiable sibling of the paper's ANNA (`anna_jax.anna`, Algorithm 1), which the paper leaves to future
work. Query i may attend to key j iff they share a bucket in at least one of `num_tables` hash tables (the same
angular LSH as ANNA, `anna_jax.lsh`); the weights are a softmax of q.k / sqrt(d) over those keys, each counted
ONCE (union, where Algorithm 1 counts a key once per colliding table). Per table and per (batch, head):

  1. sort queries and keys by the int32 key `bucket * n + position`,
  2. cut the sorted queries into chunks of `chunk_size`; each chunk reads a window of `window` sorted keys
     that starts at the first key of the chunk's lowest bucket,
  3. inside the window keep only pairs whose buckets match (and the padding / causal masks),
  4. unsort, and merge the tables with a running logsumexp.

Loop plans (`loop_plan`): on CPU ('cpu') the (batch, head) rows and the chunks run in loops sized to stay in
cache; on GPU/TPU ('accelerator') rows and chunks are batched into a few large kernels (vmap) and the only
loop is the scan over tables. 'auto' picks by jax.default_backend(). Both plans compute the same outputs.

A pair seen in an earlier table is masked out of later ones (union semantics). Nothing of size n x n is built:
the work is O(n * window) per table and head. Collisions that fall outside a window are DROPPED, counted and
reported as `dropped_fraction`; when it is zero the output equals the dense oracle (`anna_jax.oracle`).
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from anna_jax import lsh
from anna_jax.anna import ANNAConfig, resolve_loop_plan

_NEG = -1e30  # finite "minus infinity": exp(_NEG - _NEG) stays 1, never NaN
_TOKEN_BUDGET = 1 << 13  # tokens per step of the (batch * head) loop: one head's working set stays in cache
_PAIR_BUDGET = 1 << 16  # (query, key) pairs per step of the chunk loop: keeps score tiles in cache


@dataclasses.dataclass(frozen=True)
class ANNASoftmaxConfig(ANNAConfig):
  """ANNA's hashing (tables, hashes, family) plus the sorted-window layout and the weights."""
  chunk_size: int = 64  # sorted queries per chunk
  window: int = 128  # sorted keys each chunk reads (clipped to the padded length)
  weighting: str = 'softmax'  # 'softmax' or 'uniform' over the colliding keys

  def validate(self):
    super().validate()  # checks loop_plan too
    if self.chunk_size < 1 or self.window < 1:
      raise ValueError(f'anna_softmax needs chunk_size >= 1 and window >= 1, got {self.chunk_size}, {self.window}')
    if self.weighting not in ('softmax', 'uniform'):
      raise ValueError(f"anna_softmax weighting must be 'softmax' or 'uniform', got {self.weighting!r}")


class ANNASoftmaxStats(NamedTuple):
  collisions: jax.Array  # (query, key, table) collisions allowed by the masks, summed
  dropped: jax.Array  # of those, the ones outside the query's window

  @property
  def dropped_fraction(self):
    return self.dropped / jnp.maximum(self.collisions, 1.0)


def map_rows(fn, xs, plan, batch_size=None):
  """fn over the leading axis of xs: a cache-sized loop on CPU, one batched (vmapped) kernel on accelerators."""
  if plan == 'accelerator':
    return jax.vmap(fn)(xs)
  # A batch of one would give every gather in the loop a unit batch dimension (measurably slower on CPU).
  return jax.lax.map(fn, xs, batch_size=batch_size if batch_size and batch_size > 1 else None)


def check_sort_key(num_buckets, span):
  """The sort key bucket * span + position (padding in bucket num_buckets) must fit int32."""
  if (num_buckets + 1) * span >= 2**31:
    raise ValueError(f'anna_softmax sort key overflows int32: ({num_buckets} buckets + 1) * {span} >= 2**31; '
                     'use fewer hashes or a shorter sequence')


class _Route(NamedTuple):
  """Where one table puts the query and key slots of one (batch, head); int32 arrays of length n."""
  q_order: jax.Array  # sorted position -> query slot
  q_rank: jax.Array  # query slot -> sorted position
  k_order: jax.Array
  k_rank: jax.Array
  window_start: jax.Array  # (n_chunks,) first sorted key each query chunk reads
  q_window_start: jax.Array  # query slot -> window_start of its chunk
  q_bucket: jax.Array  # bucket per query slot, padding -> sentinel
  k_bucket: jax.Array
  collisions: jax.Array  # per query slot: keys sharing its bucket (after masks)


def _sort_slots(keys, span, slots_are_positions):
  """Sorts the int32 keys bucket * span + position; returns (sorted keys, slot of each sorted key)."""
  if slots_are_positions:
    # The slot is the key's remainder, so one single-operand sort does (on CPU ~6x faster than key-value).
    keys = jnp.sort(keys)
    return keys, keys % span
  return jax.lax.sort_key_val(keys, jnp.arange(keys.shape[0], dtype=jnp.int32))


def _route(q_bucket, k_bucket, q_valid, k_valid, q_position, k_position, *, span, num_buckets, chunk, window,
           causal, slots_are_positions=False, plan='cpu'):
  """Sorts slots by the int32 key bucket * span + position (positions are < span) and places the windows.

  slots_are_positions: the positions are 0, 1, ..., n - 1 (single-device ANNA), which allows a cheaper sort.
  """
  # On accelerators searchsorted by sorting: its default binary search is a while loop.
  searchsorted = functools.partial(jnp.searchsorted, method='sort' if plan == 'accelerator' else 'scan')
  slot = jnp.arange(q_bucket.shape[0], dtype=jnp.int32)
  # Padding goes to a sentinel bucket past the real ones, so it sorts last and never matches a real bucket.
  q_bucket = jnp.where(q_valid, q_bucket, num_buckets)
  k_bucket = jnp.where(k_valid, k_bucket, num_buckets)
  q_keys, q_order = _sort_slots(q_bucket * span + q_position, span, slots_are_positions)
  k_keys, k_order = _sort_slots(k_bucket * span + k_position, span, slots_are_positions)
  q_rank = jnp.zeros_like(slot).at[q_order].set(slot)
  k_rank = jnp.zeros_like(slot).at[k_order].set(slot)
  chunk_bucket = q_keys[::chunk] // span
  window_start = searchsorted(k_keys, chunk_bucket * span, side='left').astype(jnp.int32)
  window_start = jnp.clip(window_start, 0, k_bucket.shape[0] - window)
  q_window_start = window_start[q_rank // chunk]
  # Exact number of keys colliding with each query in this table, from the sorted keys alone.
  first = searchsorted(k_keys, q_bucket * span, side='left')
  if causal:
    last = searchsorted(k_keys, q_bucket * span + q_position, side='right')
  else:
    last = searchsorted(k_keys, (q_bucket + 1) * span, side='left')
  collisions = jnp.where(q_valid, last - first, 0)
  return _Route(q_order, q_rank, k_order, k_rank, window_start, q_window_start, q_bucket, k_bucket, collisions)


def _table_attention(q, k, v, r, q_valid, k_valid, q_position, k_position, counted_before, *, chunk, window,
                     causal, weighting, scale, plan='cpu'):
  """One table's bucket-masked window attention for one (batch, head), in query-slot order.

  counted_before(q_slot (chunk,), k_slot (window,)) -> (chunk, window) bool mask of the pairs an earlier table
  already counted. Returns (max, numerator, denominator) per query slot for the logsumexp merge, and the
  number of in-window pairs.
  """
  n, d = q.shape
  q_slots = r.q_order.reshape(n // chunk, chunk)
  k_slots = r.k_order[r.window_start[:, None] + jnp.arange(window)]  # (n_chunks, window)

  def one_chunk(slots):
    q_slot, k_slot = slots
    allowed = (r.q_bucket[q_slot][:, None] == r.k_bucket[k_slot][None, :])
    allowed &= q_valid[q_slot][:, None] & k_valid[k_slot][None, :]
    if causal:
      allowed &= k_position[k_slot][None, :] <= q_position[q_slot][:, None]
    new = allowed & ~counted_before(q_slot, k_slot)
    if weighting == 'softmax':
      scores = q[q_slot] @ k[k_slot].T * scale
      m = jax.lax.stop_gradient(jnp.max(jnp.where(new, scores, _NEG), axis=-1))
      p = jnp.exp(jnp.where(new, scores - m[:, None], _NEG))  # where inside exp: finite grads
    else:
      m = jnp.zeros((chunk,), q.dtype)
      p = new.astype(q.dtype)
    return m, p @ v[k_slot], jnp.sum(p, axis=-1), jnp.sum(allowed, dtype=jnp.float32)

  # Chunks run in groups whose score tiles stay cache-sized: the cost stays linear in n.
  group = max(1, _PAIR_BUDGET // (chunk * window))
  m, num, den, in_window = map_rows(one_chunk, (q_slots, k_slots), plan, batch_size=group)
  return (m.reshape(n)[r.q_rank], num.reshape(n, d)[r.q_rank], den.reshape(n)[r.q_rank]), jnp.sum(in_window)


def _merge(acc, part):
  """Logsumexp merge of two (max, numerator, denominator) triples."""
  (m_a, num_a, den_a), (m_b, num_b, den_b) = acc, part
  m = jnp.maximum(m_a, m_b)
  a, b = jnp.exp(m_a - m), jnp.exp(m_b - m)
  return m, num_a * a[:, None] + num_b * b[:, None], den_a * a + den_b * b


def _empty_merge_state(n, d, dtype):
  return jnp.full((n,), _NEG, dtype), jnp.zeros((n, d), dtype), jnp.zeros((n,), dtype)


def _normalise(state):
  _, num, den = state
  return num / jnp.where(den > 0, den, 1.0)[:, None]  # a query with no colliding key outputs zeros


def _anna_one_head(q, k, v, q_buckets, k_buckets, q_valid, k_valid, *, num_buckets, chunk, window, causal,
                   weighting, scale, plan):
  """q, k, v: (n, d); buckets: (tables, n). Returns output (n, d), collisions, dropped (scalars)."""
  n, d = q.shape
  num_tables = q_buckets.shape[0]
  position = jnp.arange(n, dtype=jnp.int32)
  route = functools.partial(_route, q_valid=q_valid, k_valid=k_valid, q_position=position, k_position=position,
                            span=n, num_buckets=num_buckets, chunk=chunk, window=window, causal=causal,
                            slots_are_positions=True, plan=plan)
  routes = jax.vmap(route)(q_buckets, k_buckets)
  # Table s attended the pair (i, j) iff j's bucket equals i's AND j's sorted rank lies in i's window. With
  # ranks and window starts below n, both hold iff 0 <= k_code[j] - q_code[i] < window: one test per table.
  q_code = routes.q_bucket * n + routes.q_window_start  # (tables, n)
  k_code = routes.k_bucket * n + routes.k_rank

  def table_step(state, xs):
    t, r = xs
    # Tables t, t+1, ... get a query code no key code reaches (offset < 0), so only earlier tables can match.
    q_code_before = jnp.where(jnp.arange(num_tables)[:, None] < t, q_code, jnp.iinfo(jnp.int32).max)

    def seen_earlier(q_slot, k_slot):
      # Union semantics: a pair an earlier table attended is not counted again, so each key counts once.
      offset = k_code[:, k_slot][:, None, :] - q_code_before[:, q_slot][:, :, None]
      return jnp.any(jax.lax.bitcast_convert_type(offset, jnp.uint32) < window, axis=0)  # 0 <= offset < window

    part, in_window = _table_attention(q, k, v, r, q_valid, k_valid, position, position, seen_earlier,
                                       chunk=chunk, window=window, causal=causal, weighting=weighting, scale=scale,
                                       plan=plan)
    return _merge(state, part), in_window

  state, in_window = jax.lax.scan(table_step, _empty_merge_state(n, d, q.dtype), (jnp.arange(num_tables), routes))
  collisions = jnp.sum(routes.collisions, dtype=jnp.float32)
  return _normalise(state), collisions, collisions - jnp.sum(in_window)


def anna_softmax_attention(q, k, v, projections, config, *, mask=None, causal=False):
  """Softmax over ANNA's collision set, for q, k, v of shape (batch, n, heads, head_dim).

  Args:
    projections: the layer's hash functions, see `anna_jax.anna.draw_projections`.
    config: ANNASoftmaxConfig (family, chunk_size, window, weighting are read here).
    mask: optional (batch, n) bool, True for real tokens. Padded queries output zeros.
    causal: query i only sees keys j <= i.
  Returns:
    (output of shape (batch, n, heads, head_dim), ANNASoftmaxStats)
  """
  config.validate()
  batch, n, heads, dim = q.shape
  num_buckets = lsh.code_space(projections, config.family)
  chunk = config.chunk_size
  n_pad = -(-n // chunk) * chunk
  window = min(config.window, n_pad)
  check_sort_key(num_buckets, n_pad)
  valid = jnp.ones((batch, n), bool) if mask is None else mask.astype(bool)
  q_buckets = lsh.hash_codes(q, projections, config.family)  # (batch, heads, tables, n)
  k_buckets = lsh.hash_codes(k, projections, config.family)

  pad = n_pad - n
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    q_buckets, k_buckets = (jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pad))) for x in (q_buckets, k_buckets))
    valid = jnp.pad(valid, ((0, 0), (0, pad)))

  plan = resolve_loop_plan(config.loop_plan)
  attend_row = functools.partial(_anna_one_head, num_buckets=num_buckets, chunk=chunk, window=window, causal=causal,
                                 weighting=config.weighting, scale=1.0 / math.sqrt(dim), plan=plan)
  if plan == 'accelerator':  # every (batch, head) row in one batched computation
    def rows(x):
      return jnp.transpose(x, (0, 2, 1, 3)).reshape(batch * heads, n_pad, dim)

    row_valid = jnp.repeat(valid, heads, axis=0)
    out, collisions, dropped = jax.vmap(attend_row)(
        rows(q), rows(k), rows(v), q_buckets.reshape(batch * heads, -1, n_pad),
        k_buckets.reshape(batch * heads, -1, n_pad), row_valid, row_valid)
  else:
    def one_head(index):
      # Slice this (batch, head) out inside the loop rather than transposing q, k, v up front: at long
      # lengths a transposed copy of the inputs would dominate peak memory.
      b, h = index // heads, index % heads

      def pick(x, head_axis):  # x[b] with its head axis (counted after dropping batch) indexed by h
        return jax.lax.dynamic_index_in_dim(jax.lax.dynamic_index_in_dim(x, b, 0, False), h, head_axis, False)

      row_valid = jax.lax.dynamic_index_in_dim(valid, b, 0, False)
      return attend_row(pick(q, 1), pick(k, 1), pick(v, 1), pick(q_buckets, 0), pick(k_buckets, 0), row_valid,
                        row_valid)

    # Long sequences run one head at a time (cache locality, bounded memory); short ones batch many heads.
    heads_per_step = max(1, min(batch * heads, _TOKEN_BUDGET // n_pad))
    out, collisions, dropped = map_rows(one_head, jnp.arange(batch * heads), plan, batch_size=heads_per_step)
  out = out.reshape(batch, heads, n_pad, dim).transpose(0, 2, 1, 3)[:, :n]
  stats = ANNASoftmaxStats(jax.lax.stop_gradient(jnp.sum(collisions)), jax.lax.stop_gradient(jnp.sum(dropped)))
  return out, stats
