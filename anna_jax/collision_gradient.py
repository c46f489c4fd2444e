"""Algorithm 1's straight-through gradient from the pairs that collide: O(n * tables * window), no n x n kernel.

Straight-through `anna` (ANNAConfig.straight_through) runs Algorithm 1 forward and gives q and k the gradient of the
collision kernel K_ij = p_ij^z (p = 1 - angle(q_i, k_j) / pi, z hashes per table), the weights Algorithm 1 tends
to as its tables grow. Write s_ij = log K_ij. The dense kernel's gradient (straight_through_pairs='all') is

  d out_i / d s_ij = K_ij / sum_j' K_ij' * (v_j - o^K_i)          over every key j (O(n^2) per head),

with o^K the kernel's own output. A table of Algorithm 1 puts k_j in q_i's bucket with probability exactly K_ij, so
its collisions are samples of the pairs the kernel weighs; with c_ij the tables in which they collide and
C_i = sum_j c_ij, E[c_ij] = l K_ij. The 'colliding' estimator (straight_through_pairs='colliding') is

  d out_i / d s_ij = c_ij / C_i * (v_j - o_i)                      over the colliding pairs only,

with o_i Algorithm 1's own output (= sum_j c_ij v_j / C_i). It is the gradient of the attention
sum_j c_ij e^(s_ij - sg(s_ij)) v_j / sum_j c_ij e^(s_ij - sg(s_ij)) (sg: stop-gradient), whose value is
Algorithm 1's: the exact gradient of a function equal to the forward, whose weights are the collision counts.
Against the dense kernel it is a ratio estimator (the sampled numerator over the sampled normaliser C_i / l): not
unbiased at finite l, consistent as l grows (c_ij / C_i -> K_ij / sum K); tests/test_collision_gradient.py checks
it against its dense definition and its convergence to the kernel's gradient.

Cost: the backward reads `straight_through_tables` of the forward's tables (0: all; a subset scales its counts by
l / l_g, the same estimate from fewer samples). Per table it sorts the keys by (bucket, position), and each query
gathers the `straight_through_window` keys of its bucket nearest before it in that order (causal: the latest at
or before its position; not causal: the bucket's first) and scores them: O(n * l_g * window * d) per head, a sort,
gathers and batched products, with no loop over chunks or heads on accelerators (rows up to DENSE_UP_TO tokens
test every pair of every table at once instead: the same pairs, O(l_g * n^2)). Colliding pairs past a window
are left out of the gradient (the forward still counts them): with a window no smaller than the largest bucket
it is the estimator above exactly. v gets Algorithm 1's exact gradient either way.
"""

import functools

import jax
import jax.numpy as jnp

from anna_jax import lsh, plans
from anna_jax.anna_softmax import keys_up_to
from anna_jax.baselines import collision_log_kernel

# Rows up to this length take the dense layout (`_dense_row_gradient`: the same pairs, every one tested at once),
# longer ones the sorted one, whose per-table sorts and gathers are many small ops on short rows.
DENSE_UP_TO = 512


def score_slope(cos, hashes):
  """d s / d cos of the collision kernel's log s = `baselines.collision_log_kernel` (the dense kernel's own, clip
  included), elementwise."""
  return jax.jvp(lambda c: collision_log_kernel(c, hashes), (cos,), (jnp.ones_like(cos),))[1]


def window_keys(q_bucket, k_bucket, valid, *, num_ids, window, causal, plan):
  """One table's pairs for one (batch, head) row: per query, the key slots (n, window) of the `window` keys of
  its bucket nearest before it in (bucket, position) order (causal: the latest ones at or before its position;
  not causal: the bucket's first ones), and which of them are real pairs (n, window) bool."""
  n = q_bucket.shape[0]
  position = jnp.arange(n, dtype=jnp.int32)
  k_keys = jnp.sort(jnp.where(valid, k_bucket, num_ids) * n + position)  # padding sorts after every bucket
  search = plans.searchsorted(plan)
  if causal:
    start = search(k_keys, q_bucket * n + position, side='right') - window
  else:
    start = search(k_keys, q_bucket * n, side='left')
  index = start[:, None] + jnp.arange(window)
  key = k_keys[jnp.clip(index, 0, n - 1)]
  pairs = (index >= 0) & (index < n) & (key // n == q_bucket[:, None]) & valid[:, None]
  return key % n, pairs


def _row_gradient(q, k, v, g, g_dot_out, weight, q_codes, k_codes, valid, *, num_ids, window, causal, hashes,
                  plan):
  """(dq, dk) of one (batch, head) row: q, k, v, g (n, d); g_dot_out, weight (n,); codes (tables, n)."""
  g_weighted = g * weight[:, None]
  g_dot_out = g_dot_out * weight

  def table_step(carry, codes):
    dq, dk = carry
    slots, pairs = window_keys(codes[0], codes[1], valid, num_ids=num_ids, window=window, causal=causal, plan=plan)
    # Products with a few keys per query as broadcasts and sums (XLA fuses them; as batched dots of one row
    # each they ran several times slower on CPU).
    # slots are key slots (key % n): in bounds, which spares XLA its clamping (half the scatter's time on CPU).
    keys = k.at[slots].get(mode='promise_in_bounds')  # (n, window, d)
    cos = jnp.sum(q[:, None, :] * keys, axis=-1)
    values = v.at[slots].get(mode='promise_in_bounds')
    d_score = jnp.sum(g_weighted[:, None, :] * values, axis=-1) - g_dot_out[:, None]
    d_cos = jnp.where(pairs, d_score * score_slope(cos, hashes), 0.0)
    dq = dq + jnp.sum(d_cos[..., None] * keys, axis=1)
    dk = dk.at[slots].add(d_cos[..., None] * q[:, None, :], mode='promise_in_bounds')
    return (dq, dk), None

  zeros = jnp.zeros_like(q)
  return jax.lax.scan(table_step, (zeros, zeros), (q_codes, k_codes))[0]


def _dense_row_gradient(q, k, v, g, g_dot_out, weight, q_codes, k_codes, valid, *, num_ids, window, causal, hashes,
                        plan):
  """`_row_gradient` for short rows: the same pairs (same bucket and, per table, inside the query's window), found by
  testing every (query, key) pair of every table at once and counting keys rather than sorting, then one masked
  product: no sort, loop or gather. O(tables * n^2) per row."""
  del plan
  n = q.shape[0]
  position = jnp.arange(n)
  pairs = (q_codes[:, :, None] == k_codes[:, None, :]) & (valid[:, None] & valid[None, :])  # (tables, n, n)
  if causal:
    pairs &= position[None, :] <= position[:, None]
  keys_to_query, keys_to_key = keys_up_to(q_codes, k_codes, valid, num_ids)
  if causal:  # j is among the `window` latest keys of i's bucket at or before i
    pairs &= (keys_to_query[:, :, None] - keys_to_key[:, None, :]) < window
  else:  # j is among its bucket's first `window` keys
    pairs &= keys_to_key[:, None, :] <= window
  counts = jnp.sum(pairs, axis=0, dtype=jnp.float32)  # c^G_ij
  d_score = (g * weight[:, None]) @ v.T - (g_dot_out * weight)[:, None]
  d_cos = counts * d_score * score_slope(q @ k.T, hashes)
  return d_cos @ k, d_cos.T @ q


def colliding_gradient(q, k, v, out, counts, g, projections, valid, *, causal, tables, window, plan,
                       dense_up_to=DENSE_UP_TO):
  """(dq, dk) of the 'colliding' estimator (module docstring), for unit q, k, Algorithm 1's v, out and per-query
  collision counts (batch, n, heads) over all of the forward's tables, and the output cotangent g; all
  (batch, n, heads, dim) but counts. `tables`: how many of the forward's tables the gradient reads (0: all)."""
  batch, n, heads, dim = q.shape
  total_tables = projections.shape[1]
  tables = tables or total_tables
  projections = projections[:, :tables]
  num_ids = lsh.code_space(projections, 'hyperplane')
  window = min(window, n)
  f32 = lambda x: x.astype(jnp.float32)
  q, k, v, out, g = map(f32, (q, k, v, out, g))
  weight = jnp.where(counts > 0, total_tables / tables / jnp.maximum(counts, 1), 0.0)  # (batch, n, heads)
  g_dot_out = jnp.sum(g * out, axis=-1)
  q_codes = lsh.hash_codes(q, projections, 'hyperplane')  # (batch, heads, tables, n)
  k_codes = lsh.hash_codes(k, projections, 'hyperplane')

  def rows(x):  # (batch, n, heads, ...) -> (batch * heads, n, ...)
    return jnp.moveaxis(x, 2, 1).reshape(batch * heads, n, *x.shape[3:])

  row_valid = jnp.repeat(valid, heads, axis=0)
  row = functools.partial(_dense_row_gradient if n <= dense_up_to else _row_gradient, num_ids=num_ids,
                          window=window, causal=causal,
                          hashes=lsh.num_hashes(projections, 'hyperplane'), plan=plan)
  dq, dk = plans.map_rows(lambda xs: row(*xs), (rows(q), rows(k), rows(v), rows(g), rows(g_dot_out), rows(weight),
                                                q_codes.reshape(batch * heads, tables, n),
                                                k_codes.reshape(batch * heads, tables, n), row_valid),
                          plan, batch_size=min(batch * heads, plan.tuning.rows_per_step(n)))

  def unrows(x):
    return jnp.moveaxis(x.reshape(batch, heads, n, dim), 1, 2)

  return unrows(dq), unrows(dk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def straight_through(out, q, k, v, counts, projections, valid, causal, tables, window, plan):
  """`out` (Algorithm 1's output, which keeps its own VJP in v) forward; backward, q and k also get the 'colliding'
  estimator's gradient. counts: (batch, n, heads) float collision counts over every table; valid: (batch, n)
  float, 1 for real tokens. counts, valid, v and projections get no gradient here."""
  return out


def _forward(out, q, k, v, counts, projections, valid, causal, tables, window, plan):
  return out, (q, k, v, out, counts, projections, valid)


def _backward(causal, tables, window, plan, residuals, g):
  q, k, v, out, counts, projections, valid = residuals
  dq, dk = colliding_gradient(q, k, v, out, counts, g, projections, valid > 0, causal=causal, tables=tables,
                              window=window, plan=plan)
  zero = jnp.zeros_like
  return g, dq.astype(q.dtype), dk.astype(k.dtype), zero(v), zero(counts), zero(projections), zero(valid)


straight_through.defvjp(_forward, _backward)
