"""Sequence parallelism: one long sequence sharded over a mesh axis, tokens meeting by bucket (the paper's MPC view).

Each of the P devices on mesh axis `axis` (SEQUENCE_AXIS) holds n / P consecutive tokens; the batch may be split
over the mesh's other axes (data parallel, `token_layout`). Two attentions, one routing layer (`destination_ranks`,
`place`, `exchange`: fixed-size send buffers per (source, destination), moved by one `all_to_all`):

`sequence_parallel_anna`: the paper's Algorithm 1, exact (see its docstring). Bucket sums and counts are
additive over devices: small code spaces sum per-device bucket tables (psum; causal: an exclusive scan over the
devices before), large ones send one record per distinct bucket to its owner and read it back, in further rounds
when a buffer overflows, so nothing is ever dropped. `traffic()` records what each collective moves.

`sequence_parallel_anna_softmax`: per hash table,
  1. every device hashes its queries and keys and sends each one, with its global position and its bucket
     ids in all tables, to the device that owns its bucket (bucket ranges split evenly): one all_to_all;
  2. each device runs single-device anna_softmax's bucket-masked window attention on what it received;
  3. each query's partial (max, numerator, denominator) goes back to its home device (a second all_to_all)
     and is merged over tables by logsumexp.
Send buffers hold `capacity` tokens per (source, destination) pair; tokens beyond it are dropped and counted
in `overflow_tokens`. A pair that collided in an earlier table is not counted again (union semantics), so
when nothing overflows the output equals single-device anna_softmax and the dense oracle. "Collided" here means shared
a bucket: when windows drop collisions, a pair dropped by an earlier table's window is skipped here, whereas
single-device anna_softmax skips only pairs an earlier table actually attended, so the two can then differ.

Loop plans as everywhere (`anna_jax.plans`): no loop over devices or chunks on accelerators. anna_softmax runs
its tables in one `lax.scan` and the (batch, head) rows as one batched kernel (a cache-sized loop on CPU);
anna exchanges every table at once (its only loops: the exchange rounds and the local causal walk's scan over
tables), and its local work is `anna`'s own plan (the C++ kernels on CPU).
"""

import contextlib
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from anna_jax import checks, lsh, plans, v_linear
from anna_jax.anna import bucket_ids, bucket_sums, collision_stats
from anna_jax.anna_softmax import NEG, check_sort_key, empty_merge_state, merge, normalise, route, table_attention

SEQUENCE_AXIS = 'seq'  # the mesh axis that splits sequences (experiments' train.sequence_devices)


def destination_ranks(dest, num_devices, plan):
  """Each token's rank among the tokens bound for the same destination (in token order), and how many are bound
  for each destination. dest: (n,) int, num_devices for "send nowhere"."""
  n = dest.shape[0]
  order = jnp.argsort(dest, stable=True)
  sorted_dest = dest[order]
  group_start = plans.searchsorted(plan)(sorted_dest, jnp.arange(num_devices + 1))
  rank_sorted = jnp.arange(n) - group_start[jnp.minimum(sorted_dest, num_devices)]
  rank = jnp.zeros(n, jnp.int32).at[order].set(rank_sorted.astype(jnp.int32))
  return rank, jnp.diff(group_start)[:num_devices]


def place(dest, rank, first, num_devices, capacity, payloads):
  """Places the tokens of rank first .. first + capacity - 1 per destination into (num_devices * capacity) send
  slots, block j bound for device j. Returns the packed payloads, a filled flag per slot and each token's slot
  (num_devices * capacity for a token not sent now)."""
  trash = num_devices * capacity
  sent = (dest < num_devices) & (rank >= first) & (rank < first + capacity)
  slot = jnp.where(sent, dest * capacity + rank - first, trash)
  packed = [jnp.zeros((trash + 1,) + x.shape[1:], x.dtype).at[slot].set(x)[:trash] for x in payloads]
  filled = jnp.zeros(trash + 1, bool).at[slot].set(True)[:trash]
  return packed, filled, slot


def _pack(dest, num_devices, capacity, payloads, plan):
  """`place` for the first `capacity` tokens per destination; also the count of tokens left behind."""
  rank, _ = destination_ranks(dest, num_devices, plan)
  packed, filled, slot = place(dest, rank, 0, num_devices, capacity, payloads)
  overflow = jnp.sum((dest < num_devices) & (slot == num_devices * capacity))
  return packed, filled, slot, overflow


def exchange(x, axis, per_round=False):
  """all_to_all along axis 1: slot block j goes to device j; block j received came from device j."""
  _record('all_to_all', x, per_round)
  return jax.lax.all_to_all(x, axis, 1, 1, tiled=True)


class Collective(NamedTuple):
  """One collective of a traced program, as `traffic` records it."""
  name: str  # 'all_to_all', 'psum', 'ppermute' or 'pmax'
  bytes: int  # the array each device puts in (per device; the whole buffer, filled or not)
  per_round: bool  # inside the exchange-rounds loop of the routed path: runs once per round


_ledgers = []


@contextlib.contextmanager
def traffic():
  """Records the collectives of `sequence_parallel_anna` traced while open (jit a fresh function inside):
  yields the list of `Collective`s it fills. Small bookkeeping reductions (the statistics) are not recorded."""
  ledger = []
  _ledgers.append(ledger)
  try:
    yield ledger
  finally:
    _ledgers.remove(ledger)


def _record(name, x, per_round=False):
  for ledger in _ledgers:
    ledger.append(Collective(name, x.size * x.dtype.itemsize, per_round))


@checks.guarded('sequence_parallel_anna_softmax', hashes='config')
def sequence_parallel_anna_softmax(q, k, v, projections, config, mesh, *, axis=SEQUENCE_AXIS, mask=None,
                                   causal=False, capacity=None, tuning=None):
  """anna_softmax over q, k, v (batch, n, heads, dim) with n sharded over `mesh` axis `axis`.

  capacity: tokens per (source, destination) buffer; default 2 * n_local / P (twice the balanced share),
  at most n_local (which can never overflow). Returns (output, {'dropped_fraction', 'overflow_tokens'}).
  """
  num_devices = mesh.shape[axis]
  batch, n, heads, dim = q.shape
  if n % num_devices:
    raise ValueError(f'sequence length {n} must be divisible by the {num_devices} devices of axis {axis!r}')
  n_local = n // num_devices
  capacity = min(n_local, capacity or 2 * -(-n_local // num_devices))
  num_buckets = lsh.code_space(projections, config.family)
  check_sort_key(num_buckets, n)
  valid = jnp.ones((batch, n), bool) if mask is None else mask.astype(bool)
  seq, every_axis = token_layout(mesh, axis, batch)
  q, k, v, valid, projections = lay_out(mesh, seq, q, k, v, valid, projections)
  local = functools.partial(_local, num_devices=num_devices, capacity=capacity, num_buckets=num_buckets,
                            span=n, config=config, causal=causal, axis=axis, every_axis=every_axis,
                            plan=plans.resolve(config.loop_plan, 'sequence_parallel_anna_softmax',
                                               tuning or config.tuning, has_kernel=False))
  out, dropped, collisions, overflow = jax.shard_map(
      local, mesh=mesh, in_specs=(seq, seq, seq, P(), seq), out_specs=(seq, P(), P(), P()))(
          q, k, v, projections, valid)
  return out, {'dropped_fraction': dropped / jnp.maximum(collisions, 1.0), 'overflow_tokens': overflow}


def token_layout(mesh, axis, batch):
  """(PartitionSpec of (batch, n, ...) arrays, the mesh axes they vary over): tokens split over `axis`, the
  batch over the mesh's other axes (the data-parallel ones) when it splits evenly, else repeated on them."""
  others = tuple(a for a in mesh.axis_names if a != axis and mesh.shape[a] > 1)
  if others and batch % math.prod(mesh.shape[a] for a in others) == 0:
    return P(others, axis), (axis,) + others
  return P(None, axis), (axis,)


def lay_out(mesh, spec, *arrays):
  """The token arrays laid out as shard_map expects, and the last (the hash functions) replicated: a no-op when
  they already are; inside jit under an abstract mesh (a model under `jax.set_mesh`) jit lays them out."""
  if not isinstance(mesh, jax.sharding.Mesh):
    return arrays
  *tokens, projections = arrays
  return (*(jax.device_put(x, NamedSharding(mesh, spec)) for x in tokens),
          jax.device_put(projections, NamedSharding(mesh, P())))


def _local(q, k, v, projections, valid, *, num_devices, capacity, num_buckets, span, config, causal, axis,
           every_axis, plan):
  batch, n_local, heads, dim = q.shape
  rows = batch * heads
  me = jax.lax.axis_index(axis)
  position = me * n_local + jnp.arange(n_local, dtype=jnp.int32)

  def per_head(x):  # (batch, n_local, heads, ...) -> (batch * heads, n_local, ...)
    return jnp.swapaxes(x, 1, 2).reshape((rows, n_local) + x.shape[3:])

  q_h, k_h, v_h = per_head(q), per_head(k), per_head(v)
  # Bucket ids in every table, token-major: (batch * heads, n_local, tables).
  q_buckets, k_buckets = (jnp.moveaxis(lsh.hash_codes(x, projections, config.family), 2, 3).reshape(rows, n_local, -1)
                          for x in (q, k))
  valid_h = jnp.repeat(valid, heads, axis=0)
  positions = jnp.broadcast_to(position, (rows, n_local))

  exchange_ = functools.partial(exchange, axis=axis)
  received = num_devices * capacity
  padded = -(-received // config.chunk_size) * config.chunk_size
  window = min(config.window, padded)
  attend_row = functools.partial(_attend_received, num_buckets=num_buckets, span=span, chunk=config.chunk_size,
                                 window=window, causal=causal, weighting=config.weighting, scale=1.0 / math.sqrt(dim),
                                 pad=padded - received, plan=plan)
  pack = jax.vmap(functools.partial(_pack, num_devices=num_devices, capacity=capacity, plan=plan))

  def table_step(state, t):
    def owner(buckets):
      return jnp.where(valid_h, buckets[..., t] * num_devices // num_buckets, num_devices)

    (qx, qp, qb), q_filled, q_slot, q_over = pack(owner(q_buckets), payloads=(q_h, positions, q_buckets))
    (kx, vx, kp, kb), k_filled, _, k_over = pack(owner(k_buckets), payloads=(k_h, v_h, positions, k_buckets))
    received = tuple(map(exchange_, (qx, kx, vx, qb, kb, q_filled, k_filled, qp, kp)))
    part, table_collisions, in_window = plans.map_rows(lambda xs: attend_row(*xs, t), received, plan,
                                                       batch_size=plan.tuning.rows_per_step(padded))
    # Partial results travel back to the queries' home devices; a query that was not sent reads "empty".
    m, num, den = map(exchange_, part)
    part = (take_or(m, q_slot, NEG), take_or(num, q_slot, 0.0), take_or(den, q_slot, 0.0))
    counts = jnp.stack([jnp.sum(table_collisions), jnp.sum(table_collisions) - jnp.sum(in_window),
                        (jnp.sum(q_over) + jnp.sum(k_over)).astype(jnp.float32)])
    return jax.vmap(merge)(state, part), counts

  state = jax.vmap(lambda _: empty_merge_state(n_local, dim, q.dtype))(jnp.arange(rows))
  state = jax.lax.pcast(state, (axis,), to='varying')  # the carry differs per device from the first table on
  state, counts = jax.lax.scan(table_step, state, jnp.arange(q_buckets.shape[-1]))
  collisions, dropped, overflow = (jax.lax.psum(x, every_axis) for x in jnp.sum(counts, axis=0))
  out = jax.vmap(normalise)(state).reshape(batch, heads, n_local, dim).swapaxes(1, 2)
  return out, dropped, collisions, overflow


@functools.partial(jax.vmap, in_axes=(0, 0, None))
def take_or(x, index, fill):
  """x[index] per (batch, head), where index == len(x) reads `fill`."""
  return jnp.concatenate([x, jnp.full((1,) + x.shape[1:], fill, x.dtype)])[index]


def _attend_received(q, k, v, q_buckets, k_buckets, q_valid, k_valid, q_position, k_position, t, *, num_buckets,
                     span, chunk, window, causal, weighting, scale, pad, plan):
  """Table t's window attention over the tokens one device received, for one (batch, head)."""
  def pad_tokens(x, value=0):
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=value)

  q, k, v, q_valid, k_valid = (pad_tokens(x) for x in (q, k, v, q_valid, k_valid))
  q_position, k_position = pad_tokens(q_position), pad_tokens(k_position)
  q_buckets, k_buckets = pad_tokens(q_buckets), pad_tokens(k_buckets)
  r = route(q_buckets[:, t], k_buckets[:, t], q_valid, k_valid, q_position, k_position, span=span,
            num_buckets=num_buckets, chunk=chunk, window=window, causal=causal, plan=plan)

  def collided_earlier(q_slot, k_slot):
    earlier = jnp.arange(q_buckets.shape[1]) < t
    same = q_buckets[q_slot][:, None, :] == k_buckets[k_slot][None, :, :]
    return jnp.any(same & earlier, axis=-1)

  part, in_window = table_attention(q, k, v, r, q_valid, k_valid, q_position, k_position, collided_earlier,
                                    chunk=chunk, window=window, causal=causal, weighting=weighting, scale=scale,
                                    plan=plan)
  n = q.shape[0] - pad
  return tuple(x[:n] for x in part), jnp.sum(r.collisions, dtype=jnp.float32), in_window


# ---------------------------------------------------------------------------------------------------------------
# Algorithm 1 (`anna`) sequence-parallel.


@checks.guarded('sequence_parallel_anna', hashes='config', any_value_width=True)
def sequence_parallel_anna(q, k, v, projections, config, mesh, *, axis=SEQUENCE_AXIS, mask=None, causal=False,
                           capacity=None, tables_per_exchange=0, tuning=None):
  """Algorithm 1 (`anna_attention`) over q, k, v (batch, n, heads, dim) with n sharded over `mesh` axis `axis`.

  Device s holds tokens s * n / P .. (s + 1) * n / P - 1. A query's output needs, per table, the sum of the
  values and the count of the keys in its bucket (causal: at or before it). Both are additive over devices:
  - dense (code space <= n / P buckets): every device builds its per-table bucket tables, and the tables are
    summed across the axis (`psum`), or, causal, prefix-summed over the devices before (an exclusive scan by
    log2 P + 1 `ppermute`s) and the device adds its own causal walk.
  - routed (larger code spaces): every device folds its keys into one record (bucket, sum, count) per distinct
    bucket and sends it to the bucket's owner (a hash of the bucket id), with one request per distinct query
    bucket; the owner answers each request with the records of its bucket (causal: from the devices before
    the requester's, which then adds its own causal walk) and the answers travel back: per round, records and
    requests out (three `all_to_all`s at once), answers back (a fourth), every table at once. Buffers hold
    `capacity` records (requests) per (source, destination); what does not fit goes in further rounds, every
    slice of records meeting every slice of requests (rounds = record rounds x request rounds, agreed by all
    devices by one `pmax`, 1 when the buffers hold everything): nothing is dropped, the output is exact at any
    skew, and no device ever holds more than P x capacity received records.
  capacity defaults to twice the balanced share, 2 * ceil(n / P / P). tables_per_exchange > 0 exchanges that many
  tables at a time, one group after another (memory of one group, the rounds of all; must divide the tables);
  0 exchanges every table at once.
  Equal to `anna_attention` up to float summation order (outputs and v-gradients; q and k get none). Codes
  must fit int32 (hyperplane z <= 31; cross-polytope (2 d')^z < 2^31): past that the single-device path
  numbers codes by a sort over the whole sequence, which no device holds.
  Returns (output, stats): `ANNAStats` fields plus 'rounds' (exchange rounds of the routed path; 0 when dense).
  """
  num_devices = mesh.shape[axis]
  batch, n, heads, dim = q.shape
  if n % num_devices:
    raise ValueError(f'sequence length {n} must be divisible by the {num_devices} devices of axis {axis!r}')
  num_ids = lsh.code_space(projections, config.family)
  if num_ids > 2**31:
    raise ValueError(f'sequence-parallel anna needs codes that fit int32; {config.family} hashes span {num_ids} '
                     'values: use fewer hashes per table')
  n_local = n // num_devices
  capacity = capacity or 2 * -(-n_local // num_devices)
  tables = projections.shape[1]
  if tables_per_exchange < 0 or (tables_per_exchange and tables % tables_per_exchange):
    raise ValueError(f'tables_per_exchange must be 0 (all) or divide the {tables} tables, got {tables_per_exchange}')
  valid = jnp.ones((batch, n), bool) if mask is None else mask.astype(bool)
  seq, every_axis = token_layout(mesh, axis, batch)
  q, k, v, valid, projections = lay_out(mesh, seq, q, k, v, valid, projections)
  spec = _SequenceSpec(axis=axis, every_axis=every_axis, num_devices=num_devices, num_ids=num_ids,
                       capacity=capacity,
                       plan=plans.resolve(config.loop_plan, 'sequence_parallel_anna', tuning or config.tuning),
                       dense=num_ids <= n_local,
                       tables_per_exchange=tables_per_exchange)
  local = functools.partial(_anna_local, spec=spec, family=config.family, causal=causal)
  out, stats = jax.shard_map(local, mesh=mesh, in_specs=(seq, seq, seq, P(), seq), out_specs=(seq, P()))(
      q, k, v, projections, valid)
  return out, jax.tree.map(jax.lax.stop_gradient, stats)


class _SequenceSpec(NamedTuple):
  axis: str
  every_axis: tuple  # the mesh axes the token arrays vary over: statistics are summed over all of them
  num_devices: int
  num_ids: int
  capacity: int
  plan: plans.Plan
  dense: bool  # bucket tables summed across devices; else records routed to owners
  tables_per_exchange: int  # tables exchanged at once; 0: all


def _anna_local(q, k, v, projections, valid, *, spec, family, causal):
  q_ids, k_ids, _ = bucket_ids(q, k, projections, family, spec.plan)  # the single-device path's codes
  out, counts, rounds = v_linear.attend(_ExchangeWalk(spec), v, q_ids, k_ids, valid, causal, v.dtype)
  stats = collision_stats(counts, valid, functools.partial(jax.lax.psum, axis_name=spec.every_axis))
  return out.astype(v.dtype), {**stats._asdict(), 'rounds': jax.lax.pmax(rounds, spec.every_axis)}


class _ExchangeWalk(NamedTuple):
  """Algorithm 1 over the whole sharded sequence, for `v_linear.attend` (its VJP in v: the same exchange, keys
  reading what the queries wrote)."""
  spec: _SequenceSpec

  def attend(self, v, q_ids, k_ids, valid, causal):
    """(output, counts, rounds) on one device."""
    sums, counts, rounds = _gathered_sums(q_ids, k_ids, v, valid, valid, self.spec, int(causal))
    out = jnp.where((counts > 0)[..., None], sums / jnp.maximum(counts, 1)[..., None], 0.0)
    return out, counts, rounds

  def sums(self, read_ids, write_ids, values, valid, direction):
    return _gathered_sums(read_ids, write_ids, values, valid, valid, self.spec, direction)[0]


def _gathered_sums(read_ids, write_ids, values, read_valid, write_valid, spec, direction):
  """`anna.bucket_sums` over the whole sharded sequence, for this device's readers: (sums, counts, rounds).

  direction 0: every writer on every device; 1: writers at or before the reader (the devices before this one,
  then this device's own causal walk); 2: at or after.
  """
  batch, n_local, heads, tables = read_ids.shape
  group = spec.tables_per_exchange or tables
  payload = jnp.concatenate([values.astype(jnp.float32), jnp.ones(values.shape[:-1] + (1,), jnp.float32)], -1)
  w_valid = jnp.broadcast_to(write_valid[:, :, None, None], (batch, n_local, heads, group))
  r_valid = jnp.broadcast_to(read_valid[:, :, None, None], (batch, n_local, heads, group))

  def rows(x):  # (batch, n, heads, group, ...) -> (batch * heads * group, n, ...): one row per (batch, head, table)
    x = jnp.moveaxis(x, 1, 3)
    return x.reshape((batch * heads * group, n_local) + x.shape[4:])

  def exchange_group(ids):  # the remote (sums, counts, rounds) of `group` tables, exchanged at once
    read_ids, write_ids = ids
    ids_r, ids_w = rows(jnp.where(r_valid, read_ids, 0)), rows(jnp.where(w_valid, write_ids, 0))
    row_payload = rows(jnp.broadcast_to(payload[:, :, :, None], (batch, n_local, heads, group, payload.shape[-1])))
    if spec.dense:
      remote, rounds = _dense_remote(ids_r, ids_w, row_payload, rows(w_valid), spec, direction)
    else:
      remote, rounds = _routed_remote(ids_r, rows(r_valid), ids_w, row_payload, rows(w_valid), spec, direction)
    # Summed over the tables; counts are whole numbers in float32 per table (exact up to 2**24 keys), summed as
    # int32. -> (batch, n_local, heads, dim), (batch, n_local, heads)
    remote = remote.reshape(batch, heads, group, n_local, payload.shape[-1])
    sums = remote[..., :-1].sum(axis=2).swapaxes(1, 2)
    counts = jnp.round(remote[..., -1]).astype(jnp.int32).sum(axis=2).swapaxes(1, 2)
    return sums, counts, rounds

  if group == tables:
    sums, counts, rounds = exchange_group((read_ids, write_ids))
  else:  # groups of tables one after another (Algorithm 2's trade: memory of one group, rounds of all)
    def split(x):
      return jnp.moveaxis(x.reshape(batch, n_local, heads, tables // group, group), 3, 0)

    sums, counts, rounds = (jnp.sum(x, axis=0) for x in jax.lax.map(exchange_group, (split(read_ids),
                                                                                      split(write_ids))))
  sums = jnp.where(read_valid[:, :, None, None], sums, 0.0)
  counts = jnp.where(read_valid[:, :, None], counts, 0)
  if direction:  # this device's own tokens: the single-device causal walk
    own_sums, own_counts = bucket_sums(read_ids, write_ids, values, read_valid, write_valid, spec.num_ids,
                                       direction, spec.plan)
    sums, counts = sums + own_sums, counts + own_counts
  return sums, counts, rounds


def _dense_remote(ids_r, ids_w, payload, w_valid, spec, direction):
  """Per reader, (sum, count) of its bucket over the other devices' writers (all devices when direction 0)."""
  def table(ids, x, ok):
    return jax.ops.segment_sum(jnp.where(ok[:, None], x, 0.0), ids, num_segments=spec.num_ids)

  tables = jax.vmap(table)(ids_w, payload, w_valid)  # (rows, num_ids, dim + 1)
  if direction == 0:
    _record('psum', tables)
    tables = jax.lax.psum(tables, spec.axis)
  else:
    tables = _exclusive_scan(tables, spec.axis, spec.num_devices, reverse=direction == 2)
  return jnp.take_along_axis(tables, ids_r[:, :, None], axis=1), jnp.int32(0)


def _exclusive_scan(x, axis, num_devices, reverse):
  """Sum of x over the devices before this one (after it, reversed): a shift, then log2 P doublings."""
  def shift(y, by):  # device i receives y of device i - by (i + by reversed); the first ones receive zeros
    pairs = [(i, i + by) for i in range(num_devices - by)]
    _record('ppermute', y)
    return jax.lax.ppermute(y, axis, [(b, a) for a, b in pairs] if reverse else pairs)

  total, by = shift(x, 1), 1
  while by < num_devices - 1:
    total, by = total + shift(total, by), 2 * by
  return total


def owner(ids, num_devices):
  """The device that holds bucket `ids`: a multiplicative hash, so that neighbouring codes spread evenly."""
  mixed = (ids.astype(jnp.uint32) * jnp.uint32(0x9E3779B1)) >> 16
  return ((mixed * num_devices) >> 16).astype(jnp.int32)


def _distinct(ids, valid, payload=None):
  """The distinct ids of the valid entries, first in sorted order: (ids, is_distinct, index of each entry's id,
  payload summed per id or None). An invalid entry's index is meaningless."""
  n = ids.shape[0]
  invalid = (~valid).astype(jnp.int32)
  key_invalid, sorted_ids, order = jax.lax.sort((invalid, ids, jnp.arange(n)), num_keys=2)
  changed = (sorted_ids[1:] != sorted_ids[:-1]) | (key_invalid[1:] != key_invalid[:-1])
  first = jnp.concatenate([jnp.ones(1, bool), changed])
  group = jnp.cumsum(first) - 1
  distinct_ids = jnp.zeros(n, ids.dtype).at[group].set(sorted_ids)
  is_distinct = jnp.arange(n) < jnp.sum(first & (key_invalid == 0))
  index = jnp.zeros(n, jnp.int32).at[order].set(group.astype(jnp.int32))
  sums = None if payload is None else jax.ops.segment_sum(payload[order], group, num_segments=n)
  return distinct_ids, is_distinct, index, sums


def _routed_remote(ids_r, r_valid, ids_w, payload, w_valid, spec, direction):
  """Per reader, (sum, count) of its bucket over the writers of the devices it may read from: records to the
  buckets' owners, requests after them, answers back; more rounds while any buffer overflowed."""
  num_devices, capacity, axis = spec.num_devices, spec.capacity, spec.axis
  map_rows = functools.partial(plans.map_rows, plan=spec.plan,
                               batch_size=spec.plan.tuning.rows_per_step(ids_r.shape[1]))

  def prepare(xs):
    ids_r, r_valid, ids_w, payload, w_valid = xs
    rec_ids, rec_ok, _, rec_sums = _distinct(ids_w, w_valid, payload)
    req_ids, req_ok, req_index, _ = _distinct(ids_r, r_valid)
    rec_dest = jnp.where(rec_ok, owner(rec_ids, num_devices), num_devices)
    req_dest = jnp.where(req_ok, owner(req_ids, num_devices), num_devices)
    (rec_rank, rec_counts), (req_rank, req_counts) = (destination_ranks(d, num_devices, spec.plan)
                                                      for d in (rec_dest, req_dest))
    return (rec_ids, rec_sums, rec_dest, rec_rank, req_ids, req_dest, req_rank, req_index,
            jnp.max(rec_counts), jnp.max(req_counts))

  prepared = map_rows(prepare, (ids_r, r_valid, ids_w, payload, w_valid))
  *prepared, rec_most, req_most = prepared
  rec_ids, rec_sums, rec_dest, rec_rank, req_ids, req_dest, req_rank, req_index = prepared
  # Rounds: every device runs the same number, enough for its fullest (source, destination) buffer.
  most = jnp.stack([jnp.max(rec_most), jnp.max(req_most)])
  _record('pmax', most)
  rec_rounds, req_rounds = jnp.maximum(1, -(-jax.lax.pmax(most, axis) // capacity))

  def one_round(r, answers):
    rec_first, req_first = (r % rec_rounds) * capacity, (r // rec_rounds) * capacity
    place_ = functools.partial(place, num_devices=num_devices, capacity=capacity)
    (rec_sent_ids, rec_sent), _, _ = jax.vmap(lambda d, rk, i, x: place_(d, rk, rec_first, payloads=(i, x)))(
        rec_dest, rec_rank, rec_ids, rec_sums)
    (req_sent_ids,), _, req_slot = jax.vmap(lambda d, rk, i: place_(d, rk, req_first, payloads=(i,)))(
        req_dest, req_rank, req_ids)
    got_rec_ids, got_rec, got_req_ids = (exchange(x, axis, per_round=True)
                                         for x in (rec_sent_ids, rec_sent, req_sent_ids))
    replies = map_rows(lambda xs: _answer(*xs, spec=spec, direction=direction),
                       (got_rec_ids, got_rec, got_req_ids))
    back = exchange(replies, axis, per_round=True)  # the answer to request slot j sits in slot j
    back = jnp.concatenate([back, jnp.zeros_like(back[:, :1])], axis=1)  # slot P * capacity: not sent now
    return answers + jnp.take_along_axis(back, req_slot[..., None], axis=1)

  answers = jax.lax.fori_loop(0, rec_rounds * req_rounds, one_round, jnp.zeros_like(rec_sums))
  return jnp.take_along_axis(answers, req_index[..., None], axis=1), rec_rounds * req_rounds


def _answer(rec_ids, rec_payload, req_ids, *, spec, direction):
  """At a bucket owner, for one row: each request's sum of the records of its bucket that it may read.

  Records and requests are sorted together by (bucket, order); a request reads the records of its bucket
  sorted before it: order 2 s + 1 for a record from device s, 2 s for a request from s (causal: records from
  devices before s; direction 2 the same with devices numbered backwards), 2 P for every request when all
  devices count. Empty slots carry zero records, and their answers are never read.
  """
  num_devices, capacity = spec.num_devices, spec.capacity
  source = jnp.arange(num_devices * capacity) // capacity
  if direction == 2:
    source = num_devices - 1 - source
  rec_order = 2 * source + 1
  req_order = jnp.full_like(source, 2 * num_devices) if direction == 0 else 2 * source
  slots = rec_ids.shape[0]
  ids = jnp.concatenate([rec_ids, req_ids])
  order = jnp.concatenate([rec_order, req_order])
  sorted_ids, _, perm = jax.lax.sort((ids, order, jnp.arange(2 * slots)), num_keys=2)
  values = jnp.concatenate([rec_payload, jnp.zeros_like(rec_payload)])[perm]
  starts = jnp.concatenate([jnp.ones(1, bool), sorted_ids[1:] != sorted_ids[:-1]])

  def segmented(a, b):  # running sums that restart at each bucket's first element
    (start_a, sum_a), (start_b, sum_b) = a, b
    return start_a | start_b, jnp.where(start_b[..., None], sum_b, sum_a + sum_b)

  _, prefix = jax.lax.associative_scan(segmented, (starts, values))
  return jnp.zeros_like(prefix).at[perm].set(prefix)[slots:]
