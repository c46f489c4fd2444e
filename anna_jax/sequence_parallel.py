"""Sequence-parallel anna_softmax: one long sequence sharded over devices, tokens meeting by bucket (the MPC view).

Each of the P devices on mesh axis `axis` holds n / P consecutive tokens. Per hash table:
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

Loop plans as everywhere (`anna_jax.plans`): tables run in one `lax.scan` (both plans); the (batch, head) rows
are one batched kernel on accelerators and a cache-sized loop on CPU, and so are the chunks inside a row.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from anna_jax import lsh, plans
from anna_jax.anna_softmax import NEG, check_sort_key, empty_merge_state, merge, normalise, route, table_attention


def _pack(dest, num_devices, capacity, payloads, plan):
  """Places tokens into (num_devices * capacity) send slots grouped by destination.

  dest: (n,) destination per token, num_devices for "send nowhere". Returns the packed payloads, a filled
  flag per slot, each token's slot (num_devices * capacity where it was not sent) and the overflow count.
  """
  n = dest.shape[0]
  trash = num_devices * capacity
  order = jnp.argsort(dest, stable=True)
  sorted_dest = dest[order]
  group_start = plans.searchsorted(plan)(sorted_dest, jnp.arange(num_devices + 1))
  rank = jnp.arange(n) - group_start[jnp.minimum(sorted_dest, num_devices)]
  sent = (sorted_dest < num_devices) & (rank < capacity)
  slot = jnp.zeros(n, jnp.int32).at[order].set(jnp.where(sent, sorted_dest * capacity + rank, trash))
  packed = [jnp.zeros((trash + 1,) + x.shape[1:], x.dtype).at[slot].set(x)[:trash] for x in payloads]
  filled = jnp.zeros(trash + 1, bool).at[slot].set(True)[:trash]
  overflow = jnp.sum((dest < num_devices) & (slot == trash))
  return packed, filled, slot, overflow


def sequence_parallel_anna_softmax(q, k, v, projections, config, mesh, *, axis='seq', mask=None, causal=False,
                           capacity=None):
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
  seq = P(None, axis)
  # Lay the inputs out as shard_map expects (a no-op when they already are), for Auto and Explicit meshes alike.
  q, k, v, valid = (jax.device_put(x, NamedSharding(mesh, seq)) for x in (q, k, v, valid))
  projections = jax.device_put(projections, NamedSharding(mesh, P()))
  local = functools.partial(_local, num_devices=num_devices, capacity=capacity, num_buckets=num_buckets,
                            span=n, config=config, causal=causal, axis=axis, plan=plans.resolve(config.loop_plan))
  out, dropped, collisions, overflow = jax.shard_map(
      local, mesh=mesh, in_specs=(seq, seq, seq, P(), seq), out_specs=(seq, P(), P(), P()))(
          q, k, v, projections, valid)
  return out, {'dropped_fraction': dropped / jnp.maximum(collisions, 1.0), 'overflow_tokens': overflow}


def _local(q, k, v, projections, valid, *, num_devices, capacity, num_buckets, span, config, causal, axis, plan):
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

  def exchange(x):  # slot block j goes to device j; block j received came from device j
    return jax.lax.all_to_all(x, axis, 1, 1, tiled=True)

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
    received = tuple(map(exchange, (qx, kx, vx, qb, kb, q_filled, k_filled, qp, kp)))
    part, table_collisions, in_window = plans.map_rows(lambda xs: attend_row(*xs, t), received, plan,
                                                       batch_size=plans.rows_per_step(padded))
    # Partial results travel back to the queries' home devices; a query that was not sent reads "empty".
    m, num, den = map(exchange, part)
    part = (take_or(m, q_slot, NEG), take_or(num, q_slot, 0.0), take_or(den, q_slot, 0.0))
    counts = jnp.stack([jnp.sum(table_collisions), jnp.sum(table_collisions) - jnp.sum(in_window),
                        (jnp.sum(q_over) + jnp.sum(k_over)).astype(jnp.float32)])
    return jax.vmap(merge)(state, part), counts

  state = jax.vmap(lambda _: empty_merge_state(n_local, dim, q.dtype))(jnp.arange(rows))
  state = jax.lax.pcast(state, (axis,), to='varying')  # the carry differs per device from the first table on
  state, counts = jax.lax.scan(table_step, state, jnp.arange(q_buckets.shape[-1]))
  collisions, dropped, overflow = (jax.lax.psum(x, axis) for x in jnp.sum(counts, axis=0))
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
