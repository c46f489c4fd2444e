"""anna_softmax: softmax attention over ANNA's collision set, by LSH bucketing and sort-based grouping.

A differentiable sibling of the paper's ANNA (`anna_jax.anna`, Algorithm 1), which the paper leaves to future
work. Query i may attend to key j iff they share a bucket in at least one of `num_tables` hash tables (the same
angular LSH as ANNA, `anna_jax.lsh`); the weights are a softmax of q.k / sqrt(d) over those keys, each counted
ONCE (union, where Algorithm 1 counts a key once per colliding table). Per table and per (batch, head):

  1. sort queries and keys by the int32 key `bucket * n + position`,
  2. not causal: cut the sorted queries into chunks of `chunk_size`; each chunk reads a window of `window`
     sorted keys that starts at the first key of the chunk's lowest bucket. Causal: each query reads the
     `window` sorted keys that END at its own position in its bucket, i.e. the latest `window` keys of its
     bucket at or before it, so what a query attends (and drops) depends on past tokens only, never on where
     later tokens hash (a chunk-wide window would let a future token move a past query's window). Chunks then
     cut the merged sorted order of keys and queries, so one load of window + chunk_size keys serves a chunk,
  3. inside the window keep only pairs whose buckets match (and the padding / causal masks),
  4. unsort, and merge the tables with a running logsumexp.

Loop plans (`loop_plan`, `anna_jax.plans`), all attending the same pairs (tested against each other, drops
included):
  - CPU ('cpu_kernel'): C++ kernels (kernels/anna_softmax_cpu.cc through `cpu_kernel.softmax_attend`, any length), a
    forward and a backward that recomputes instead of storing: per (batch, head) the routing above, then each
    query's softmax merged over the tables (see the kernel file). At 16K tokens, B 1, H 8, d 64, l 8, one process:
    forward 0.36 s and train step 0.87 s, against 1.40 s and 5.31 s by the XLA loops below (2-core CPU,
    2026-12-03, benchmarks/scripts/kernel_vs_xla_loops.py, its log in benchmarks/results/cpu-2core-epyc-extra/).
    'cpu_xla' (what 'auto' runs where no compiler is found): XLA loops over (batch, head) rows and chunks sized
    to stay in cache.
  - GPU/TPU ('accelerator'): rows and chunks batched into a few large kernels (vmap); the only loop is the scan
    over tables. Short sequences (length <= `dense_up_to`) take the dense layout: the same windows tested for
    every pair at once.

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

from anna_jax import checks, cpu_kernel, lsh, plans
from anna_jax.anna import ANNAConfig

NEG = -1e30  # finite "minus infinity": exp(NEG - NEG) stays 1, never NaN


@dataclasses.dataclass(frozen=True)
class ANNASoftmaxConfig(ANNAConfig):
  """ANNA's hashing (tables, hashes, family) plus the sorted-window layout and the weights."""
  chunk_size: int = 64  # sorted queries per chunk
  window: int = 128  # sorted keys each chunk (causal: each query) reads, clipped to the padded length
  weighting: str = 'softmax'  # 'softmax' or 'uniform' over the colliding keys
  # Lengths up to this take the dense layout (the XLA plans; the CPU kernel serves every length): per table,
  # every (query, key) pair is tested against the
  # same windows, in one masked product (same pairs, so the same outputs); short sequences spend less on
  # sorting, gathers and loops. 0: never. Causal train steps (b 32, 4 heads of 16, l 4, z 3, window 64) at 257
  # and 513 tokens took 96 and 400 ms dense against 709 ms and 1.22 s sorted (2-core CPU, 2026-12-02); the
  # dense layout's memory grows as n^2, so longer sequences stay sorted.
  dense_up_to: int = 512

  def validate(self):
    super().validate()  # checks loop_plan too
    if self.chunk_size < 1 or self.window < 1 or self.dense_up_to < 0:
      raise ValueError(f'anna_softmax needs chunk_size >= 1, window >= 1 and dense_up_to >= 0, got '
                       f'{self.chunk_size}, {self.window}, {self.dense_up_to}')
    if self.weighting not in ('softmax', 'uniform'):
      raise ValueError(f"anna_softmax weighting must be 'softmax' or 'uniform', got {self.weighting!r}")


class ANNASoftmaxStats(NamedTuple):
  collisions: jax.Array  # (query, key, table) collisions allowed by the masks, summed
  dropped: jax.Array  # of those, the ones outside the query's window

  @property
  def dropped_fraction(self):
    return self.dropped / jnp.maximum(self.collisions, 1.0)


def check_sort_key(num_buckets, span):
  """The sort key bucket * span + position (padding in bucket num_buckets) must fit int32."""
  if (num_buckets + 1) * span >= 2**31:
    raise ValueError(f'anna_softmax sort key overflows int32: ({num_buckets} buckets + 1) * {span} >= 2**31; '
                     'use fewer hashes or a shorter sequence')


class Route(NamedTuple):
  """Where one table puts the query and key slots of one (batch, head): the chunks of query slots and the block
  of sorted keys each chunk loads (int32 unless said)."""
  k_order: jax.Array  # (n,) sorted position -> key slot
  k_rank: jax.Array  # (n,) key slot -> sorted position
  q_window_start: jax.Array  # (n,) query slot -> first sorted key of its window (its chunk's; causal: its own)
  q_bucket: jax.Array  # (n,) bucket per query slot, padding -> sentinel
  k_bucket: jax.Array
  collisions: jax.Array  # (n,) per query slot: keys sharing its bucket (after masks)
  chunk_queries: jax.Array  # (chunks, chunk) query slots, in sorted order
  chunk_live: jax.Array  # (chunks, chunk) bool: a query is there (causal chunks also hold key places)
  chunk_key_start: jax.Array  # (chunks,) first sorted key the chunk loads
  q_place: jax.Array  # (n,) query slot -> its place among the chunks (flattened)


def load_width(chunk, window, n_keys, causal):
  """Sorted keys one chunk loads: its window; causal, the windows of up to `chunk` queries whose ends lie at
  most `chunk` keys apart (see `route`)."""
  return min(window + chunk, n_keys) if causal else window


def _sort_slots(keys, span, slots_are_positions):
  """Sorts the int32 keys bucket * span + position; returns (sorted keys, slot of each sorted key)."""
  if slots_are_positions:
    # The slot is the key's remainder, so one single-operand sort does: on this project's 2-core CPU, 64 rows
    # of 16K int32 keys took 43 ms against 345 ms for a key-value sort (2026-12-02).
    keys = jnp.sort(keys)
    return keys, keys % span
  return jax.lax.sort_key_val(keys, jnp.arange(keys.shape[0], dtype=jnp.int32))


def route(q_bucket, k_bucket, q_valid, k_valid, q_position, k_position, *, span, num_buckets, chunk, window,
          causal, slots_are_positions=False, plan=plans.Plan('cpu_xla')):
  """Sorts slots by the int32 key bucket * span + position (positions are < span) and places the windows.

  slots_are_positions: the positions are 0, 1, ..., n - 1 (single-device ANNA), which allows a cheaper sort.
  """
  searchsorted = plans.searchsorted(plan)
  slot = jnp.arange(q_bucket.shape[0], dtype=jnp.int32)
  n_keys = k_bucket.shape[0]
  # Padding goes to a sentinel bucket past the real ones, so it sorts last and never matches a real bucket.
  q_bucket = jnp.where(q_valid, q_bucket, num_buckets)
  k_bucket = jnp.where(k_valid, k_bucket, num_buckets)
  q_keys, q_order = _sort_slots(q_bucket * span + q_position, span, slots_are_positions)
  k_keys, k_order = _sort_slots(k_bucket * span + k_position, span, slots_are_positions)
  q_rank = jnp.zeros_like(slot).at[q_order].set(slot)
  k_rank = jnp.zeros_like(slot).at[k_order].set(slot)
  # Exact number of keys colliding with each query in this table, from the sorted keys alone.
  first = searchsorted(k_keys, q_bucket * span, side='left')
  n_q = q_bucket.shape[0]
  if causal:
    last = searchsorted(k_keys, q_bucket * span + q_position, side='right')  # just past the query's own place
    # A query's window is the `window` sorted keys ending at its own place in its bucket: its past only (the
    # ones after `last` are masked out), never moved by where later tokens hash.
    q_window_start = jnp.clip(last - window, 0, n_keys - window).astype(jnp.int32)
    # Chunks cut the MERGED sorted order of keys and queries (a key before the query at its own position): a
    # chunk of `chunk` places holds at most `chunk` keys, so its queries' windows end at most `chunk` keys apart
    # and one load of window + chunk sorted keys holds all of them.
    q_place = (q_rank + last).astype(jnp.int32)  # place in the merged order
    places = n_q + n_keys
    chunk_live = jnp.zeros(places, bool).at[q_place].set(True)
    chunk_queries = jnp.zeros(places, jnp.int32).at[q_place].set(slot)
    keys_before = jnp.arange(0, places, chunk) - (jnp.cumsum(chunk_live) - chunk_live)[::chunk]
    load = load_width(chunk, window, n_keys, causal)
    chunk_key_start = jnp.clip(keys_before - window, 0, n_keys - load).astype(jnp.int32)
  else:
    last = searchsorted(k_keys, (q_bucket + 1) * span, side='left')
    # Chunks of sorted queries; each reads the window that starts at the first key of its lowest bucket.
    chunk_bucket = q_keys[::chunk] // span
    chunk_key_start = jnp.clip(searchsorted(k_keys, chunk_bucket * span, side='left'), 0,
                               n_keys - window).astype(jnp.int32)
    q_place, chunk_queries = q_rank, q_order
    chunk_live = jnp.ones(n_q, bool)
    q_window_start = chunk_key_start[q_rank // chunk]
  collisions = jnp.where(q_valid, last - first, 0)
  return Route(k_order, k_rank, q_window_start, q_bucket, k_bucket, collisions, chunk_queries.reshape(-1, chunk),
               chunk_live.reshape(-1, chunk), chunk_key_start, q_place)


def table_attention(q, k, v, r, q_valid, k_valid, q_position, k_position, counted_before, *, chunk, window,
                    causal, weighting, scale, plan=plans.Plan('cpu_xla')):
  """One table's bucket-masked window attention for one (batch, head), in query-slot order.

  counted_before(q_slot (chunk,), k_slot (load,)) -> (chunk, load) bool mask of the pairs an earlier table already
  counted. Returns (max, numerator, denominator) per query slot for the logsumexp merge, and the number of
  in-window pairs.
  """
  n, d = q.shape
  load = load_width(chunk, window, k.shape[0], causal)
  k_slots = r.k_order[r.chunk_key_start[:, None] + jnp.arange(load)]  # (chunks, load)

  def one_chunk(xs):
    q_slot, live, key_start, k_slot = xs
    allowed = (r.q_bucket[q_slot][:, None] == r.k_bucket[k_slot][None, :]) & live[:, None]
    allowed &= q_valid[q_slot][:, None] & k_valid[k_slot][None, :]
    if causal:  # each query only its own window of the chunk's load, and its past
      rank = key_start + jnp.arange(load) - r.q_window_start[q_slot][:, None]
      allowed &= (rank >= 0) & (rank < window) & (k_position[k_slot][None, :] <= q_position[q_slot][:, None])
    new = allowed & ~counted_before(q_slot, k_slot)
    if weighting == 'softmax':
      scores = q[q_slot] @ k[k_slot].T * scale
      m = jax.lax.stop_gradient(jnp.max(jnp.where(new, scores, NEG), axis=-1))
      p = jnp.exp(jnp.where(new, scores - m[:, None], NEG))  # where inside exp: finite grads
    else:
      m = jnp.zeros((chunk,), q.dtype)
      p = new.astype(q.dtype)
    return m, p @ v[k_slot], jnp.sum(p, axis=-1), jnp.sum(allowed, dtype=jnp.float32)

  # Chunks run in groups whose score tiles stay cache-sized: the cost stays linear in n.
  m, num, den, in_window = plans.map_rows(one_chunk, (r.chunk_queries, r.chunk_live, r.chunk_key_start, k_slots),
                                          plan, batch_size=plan.tuning.chunks_per_step(chunk, load))
  place = r.q_place
  return (m.reshape(-1)[place], num.reshape(-1, d)[place], den.reshape(-1)[place]), jnp.sum(in_window)


def merge(acc, part):
  """Logsumexp merge of two (max, numerator, denominator) triples."""
  (m_a, num_a, den_a), (m_b, num_b, den_b) = acc, part
  m = jnp.maximum(m_a, m_b)
  a, b = jnp.exp(m_a - m), jnp.exp(m_b - m)
  return m, num_a * a[:, None] + num_b * b[:, None], den_a * a + den_b * b


def empty_merge_state(n, d, dtype):
  return jnp.full((n,), NEG, dtype), jnp.zeros((n, d), dtype), jnp.zeros((n,), dtype)


def normalise(state):
  _, num, den = state
  return num / jnp.where(den > 0, den, 1.0)[:, None]  # a query with no colliding key outputs zeros


def window_codes(routes, span):
  """Per table, query and key codes such that the table attends the pair (i, j) iff 0 <= k_code[j] - q_code[i] <
  window: j's bucket equals i's AND j's sorted rank lies in i's window (ranks and window starts are below span)."""
  return routes.q_bucket * span + routes.q_window_start, routes.k_bucket * span + routes.k_rank


def in_windows(q_code, k_code, window):
  """(..., queries, keys) bool: 0 <= k_code - q_code < window, as one unsigned comparison."""
  offset = k_code[..., None, :] - q_code[..., :, None]
  return jax.lax.bitcast_convert_type(offset, jnp.uint32) < window


def prefix_counts(buckets, num_ids, valid=None):
  """(tables, n, num_ids): per table, the (valid) slots of each bucket at positions <= x, by one product of the
  one-hot buckets with a triangular matrix (exact below 2**24 slots). An (n, n) comparison and reduction per
  table does the same and is slower (causal forward, b 32, 4 heads of 16, l 4, z 3, n 128, window 64: 51 ms by
  comparison, 9.8 ms by the product; 2-core CPU, 2026-12-02), so it serves only code spaces larger than n."""
  n = buckets.shape[-1]
  up_to = (jnp.arange(n)[None, :] <= jnp.arange(n)[:, None]).astype(jnp.float32)  # [x, p]: p <= x
  one_hot = buckets[..., None] == jnp.arange(num_ids)
  if valid is not None:
    one_hot &= valid[None, :, None]
  return jnp.einsum('xp,tpb->txb', up_to, one_hot.astype(jnp.float32)).astype(jnp.int32)


def own(counts, buckets):
  """counts[t, x, buckets[t, x]]: each slot's entry for its own bucket."""
  return jnp.take_along_axis(counts, buckets[..., None], axis=-1)[..., 0]


def keys_up_to(q_buckets, k_buckets, k_valid, num_buckets):
  """Per table, the valid keys of a slot's bucket at positions <= the slot: (for each query, for each key)."""
  n = k_buckets.shape[-1]
  if num_buckets > n:
    up_to = jnp.arange(n)[None, :] <= jnp.arange(n)[:, None]  # [x, p]: p <= x

    def count(buckets):
      same = (buckets[:, :, None] == k_buckets[:, None, :]) & k_valid[None, None, :]
      return jnp.sum(same & up_to, axis=-1)
    return count(q_buckets), count(k_buckets)
  prefix = prefix_counts(k_buckets, num_buckets, k_valid)
  return own(prefix, q_buckets), own(prefix, k_buckets)


def sorted_ranks(buckets, num_ids):
  """(tables, n): each slot's place in (bucket, position) order, buckets in [0, num_ids)."""
  n = buckets.shape[-1]
  if num_ids > n:
    key = buckets * n + jnp.arange(n)
    return jnp.sum(key[:, None, :] < key[:, :, None], axis=-1)
  prefix = prefix_counts(buckets, num_ids)
  totals = prefix[:, -1, :]
  lower = jnp.cumsum(totals, axis=-1) - totals  # slots in lower buckets
  return jnp.take_along_axis(lower, buckets, axis=-1) + own(prefix, buckets) - 1


def dense_attention(q, k, v, q_buckets, k_buckets, q_valid, k_valid, *, num_buckets, chunk, window, causal,
                    weighting, scale):
  """The dense layout of `_anna_one_head` for short sequences: the same windows and union, but every (query,
  key) pair of every table tested at once (window membership counted, not sorted) and one masked product: no
  sort, loop or gather. O(tables * n^2) work and memory per (batch, head), so only for short sequences."""
  n = q.shape[0]
  position = jnp.arange(n, dtype=jnp.int32)
  same_bucket = (q_buckets[:, :, None] == k_buckets[:, None, :]) & (q_valid[:, None] & k_valid[None, :])
  if causal:
    same_bucket &= position[None, :] <= position[:, None]
  pairs = same_bucket  # (tables, n, n): the pairs each table attends
  if window < n and causal:
    # A query's window holds the latest `window` keys of its bucket at or before it: j is in it iff fewer than
    # `window` keys of the bucket lie at positions j+1..i, i.e. keys_to_i - keys_to_j < window, where keys_to_x
    # counts the keys of the bucket at positions <= x.
    keys_to_i, keys_to_j = keys_up_to(q_buckets, k_buckets, k_valid, num_buckets)
    pairs &= (keys_to_i[:, :, None] - keys_to_j[:, None, :]) < window
  elif window < n:
    # Chunks of `chunk` queries in (bucket, position) order share a window of `window` keys in that order,
    # from the first key of the chunk's lowest bucket; orders and starts are counted, not sorted.
    q_bucket = jnp.where(q_valid, q_buckets, num_buckets)  # padding sorts last, as in `route`
    k_bucket = jnp.where(k_valid, k_buckets, num_buckets)

    q_chunk = sorted_ranks(q_bucket, num_buckets + 1) // chunk
    lowest = jax.vmap(lambda b, c: jax.ops.segment_min(b, c, num_segments=n // chunk))(q_bucket, q_chunk)
    start = jnp.sum(k_bucket[:, None, :] < lowest[:, :, None], axis=-1)  # first key of the lowest bucket
    start = jnp.take_along_axis(jnp.minimum(start, n - window), q_chunk, axis=-1)  # (tables, n) per query
    offset = sorted_ranks(k_bucket, num_buckets + 1)[:, None, :] - start[:, :, None]
    pairs &= (offset >= 0) & (offset < window)
  allowed = jnp.any(pairs, axis=0)  # union: each key once
  if weighting == 'softmax':
    scores = q @ k.T * scale
    m = jax.lax.stop_gradient(jnp.max(jnp.where(allowed, scores, NEG), axis=-1))
    p = jnp.exp(jnp.where(allowed, scores - m[:, None], NEG))
  else:
    p = allowed.astype(q.dtype)
  collisions = jnp.sum(same_bucket, dtype=jnp.float32)
  out = normalise((None, p @ v, jnp.sum(p, axis=-1)))
  return out, collisions, collisions - jnp.sum(pairs, dtype=jnp.float32)


def _anna_one_head(q, k, v, q_buckets, k_buckets, q_valid, k_valid, *, num_buckets, chunk, window, causal,
                   weighting, scale, plan):
  """q, k, v: (n, d); buckets: (tables, n). Returns output (n, d), collisions, dropped (scalars)."""
  n, d = q.shape
  num_tables = q_buckets.shape[0]
  position = jnp.arange(n, dtype=jnp.int32)
  route_table = functools.partial(route, q_valid=q_valid, k_valid=k_valid, q_position=position,
                                  k_position=position, span=n, num_buckets=num_buckets, chunk=chunk, window=window,
                                  causal=causal, slots_are_positions=True, plan=plan)
  routes = jax.vmap(route_table)(q_buckets, k_buckets)
  q_code, k_code = window_codes(routes, n)  # (tables, n)

  def table_step(state, xs):
    t, r = xs
    # Tables t, t+1, ... get a query code no key code reaches (offset < 0), so only earlier tables can match.
    q_code_before = jnp.where(jnp.arange(num_tables)[:, None] < t, q_code, jnp.iinfo(jnp.int32).max)

    def seen_earlier(q_slot, k_slot):
      # Union semantics: a pair an earlier table attended is not counted again, so each key counts once.
      return jnp.any(in_windows(q_code_before[:, q_slot], k_code[:, k_slot], window), axis=0)

    part, in_window = table_attention(q, k, v, r, q_valid, k_valid, position, position, seen_earlier,
                                      chunk=chunk, window=window, causal=causal, weighting=weighting, scale=scale,
                                      plan=plan)
    return merge(state, part), in_window

  state, in_window = jax.lax.scan(table_step, empty_merge_state(n, d, q.dtype), (jnp.arange(num_tables), routes))
  collisions = jnp.sum(routes.collisions, dtype=jnp.float32)
  return normalise(state), collisions, collisions - jnp.sum(in_window)


@checks.guarded('anna_softmax', hashes='config')
def anna_softmax_attention(q, k, v, projections, config, *, mask=None, causal=False, tuning=None):
  """Softmax over ANNA's collision set, for q, k, v of shape (batch, n, heads, head_dim).

  Args:
    projections: the layer's hash functions, see `anna_jax.anna.draw_projections`.
    config: ANNASoftmaxConfig (family, chunk_size, window, weighting are read here).
    mask: optional (batch, n) bool, True for real tokens. Padded queries output zeros.
    causal: query i only sees keys j <= i.
    tuning: the CPU paths' `plans.Tuning` (None: config.tuning); it changes speed and memory, never a number.
  Returns:
    (output of shape (batch, n, heads, head_dim), ANNASoftmaxStats)
  """
  batch, n, heads, dim = q.shape
  num_buckets = lsh.code_space(projections, config.family)
  chunk = config.chunk_size
  n_pad = -(-n // chunk) * chunk
  dense = n <= config.dense_up_to
  if dense and (causal or config.window >= n):  # per-query windows, or all keys: no chunks to pad to
    n_pad = n
  window = min(config.window, n_pad)
  check_sort_key(num_buckets, n_pad)
  valid = jnp.ones((batch, n), bool) if mask is None else mask.astype(bool)
  plan = plans.resolve(config.loop_plan, 'anna_softmax', tuning or config.tuning)
  if plan.kernel:
    return _kernel_attention(q, k, v, projections, config, valid, key_slots=n_pad, window=window, causal=causal,
                             tuning=plan.tuning)
  q_buckets = lsh.hash_codes(q, projections, config.family)  # (batch, heads, tables, n)
  k_buckets = lsh.hash_codes(k, projections, config.family)

  pad = n_pad - n
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    q_buckets, k_buckets = (jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pad))) for x in (q_buckets, k_buckets))
    valid = jnp.pad(valid, ((0, 0), (0, pad)))

  layout = dict(num_buckets=num_buckets, chunk=chunk, window=window, causal=causal, weighting=config.weighting,
                scale=1.0 / math.sqrt(dim))
  attend_row = (functools.partial(dense_attention, **layout) if dense else
                functools.partial(_anna_one_head, plan=plan, **layout))
  if dense or plan.accelerator:  # every (batch, head) row in one batched computation
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
    heads_per_step = min(batch * heads, plan.tuning.rows_per_step(n_pad))
    out, collisions, dropped = plans.map_rows(one_head, jnp.arange(batch * heads), plan, batch_size=heads_per_step)
  out = out.reshape(batch, heads, n_pad, dim).transpose(0, 2, 1, 3)[:, :n]
  stats = ANNASoftmaxStats(jax.lax.stop_gradient(jnp.sum(collisions)), jax.lax.stop_gradient(jnp.sum(dropped)))
  return out, stats


def _kernel_attention(q, k, v, projections, config, valid, *, key_slots, window, causal, tuning):
  """The 'cpu_kernel' plan: the C++ kernels (`cpu_kernel.softmax_attend`), any length. The same pairs as the sorted
  and dense layouts: key_slots is the padded length they clip the non-causal windows to."""
  q_ids, k_ids, num_ids = cpu_kernel.bucket_ids(q, k, projections, config.family)
  layout = cpu_kernel.SoftmaxLayout(num_ids=num_ids, key_slots=key_slots, window=window, chunk=config.chunk_size,
                                    causal=causal, uniform=config.weighting == 'uniform',
                                    scale=1.0 / math.sqrt(q.shape[-1]), tuning=tuning)
  f32 = lambda x: x.astype(jnp.float32)
  out, stats = cpu_kernel.softmax_attend(f32(q), f32(k), f32(v), q_ids, k_ids, valid, layout)
  collisions, read = jnp.sum(stats[..., 0]), jnp.sum(stats[..., 1])
  return out.astype(q.dtype), ANNASoftmaxStats(jax.lax.stop_gradient(collisions),
                                               jax.lax.stop_gradient(collisions - read))
