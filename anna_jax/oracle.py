"""Dense oracles of the hashing attentions: the same hash codes, an explicit collision matrix (n x n, or sampled
queries x n). For tests and for the benchmark's quality figures; never on a timed path."""

import math

import jax
import jax.numpy as jnp

from anna_jax import lsh
from anna_jax.baselines import collision_log_kernel


def collision_counts(q, k, projections, family, mask=None, causal=False, positions=None):
  """c_ij: tables in which q_i and k_j share a bucket, masked; (batch, heads, queries, n) int32.

  positions: the query positions to compare (sampled queries); None compares every query.
  """
  batch, n = q.shape[:2]
  positions = jnp.arange(n) if positions is None else positions
  # Compare the per-hash digit tuples directly, independently of how anna packs them into one id.
  q_digits = jnp.moveaxis(lsh.hash_digits(q[:, positions], projections, family), 1, 3)  # (b, h, tables, s, z)
  k_digits = jnp.moveaxis(lsh.hash_digits(k, projections, family), 1, 3)
  same = jnp.all(q_digits[..., :, None, :] == k_digits[..., None, :, :], axis=-1)  # (batch, heads, tables, s, n)
  count = jnp.sum(same, axis=2, dtype=jnp.int32)
  valid = jnp.ones((batch, n), bool) if mask is None else mask.astype(bool)
  allowed = valid[:, None, positions, None] & valid[:, None, None, :]
  if causal:
    allowed &= jnp.arange(n)[None, :] <= positions[:, None]
  return jnp.where(allowed, count, 0)


def softmax_over(q, k, v, allowed, positions, scale=None):
  """Exact softmax(scale * q.k) attention of the sampled queries over the `allowed` keys, in float32.

  allowed: (batch, heads, len(positions), n) bool; a query with nothing allowed outputs zeros.
  Returns (batch, len(positions), heads, head_dim).
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  scores = jnp.einsum('bshd,bkhd->bhsk', q[:, positions], k, preferred_element_type=jnp.float32) * scale
  weights = jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
  weights = jnp.where(jnp.isnan(weights), 0.0, weights)
  return jnp.einsum('bhsk,bkhd->bshd', weights, v.astype(jnp.float32))


def reformer_allowed(q, rotations, positions, causal=False):
  """Reformer's pairs for the sampled queries: same bucket in some round, never the query itself unless it has
  nothing else (the shared-QK rule); (batch, heads, len(positions), n) bool."""
  n = q.shape[1]
  codes = lsh.hash_codes(q, rotations, 'crosspolytope')  # (batch, heads, rounds, n)
  same = jnp.any(codes[..., positions][..., :, None] == codes[..., None, :], axis=2)
  is_self = positions[:, None] == jnp.arange(n)[None, :]
  if causal:
    same &= jnp.arange(n)[None, :] <= positions[:, None]
  same &= ~is_self
  alone = ~jnp.any(same, axis=-1, keepdims=True)
  return same | (alone & is_self)


def anna_dense_reference(q, k, v, projections, *, family='hyperplane', mask=None, causal=False):
  """Algorithm 1 written densely: w_ij = c_ij / sum_j' c_ij'; a query with no collision outputs zeros."""
  weights = collision_counts(q, k, projections, family, mask, causal).astype(jnp.float32)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  return jnp.einsum('bhqk,bkhd->bqhd', weights / jnp.where(total > 0, total, 1.0), v)


def anna_softmax_dense_reference(q, k, v, projections, *, family='hyperplane', mask=None, causal=False,
                                 weighting='softmax'):
  """What anna_softmax computes when no bucket overflows its window: attention over the union of collisions."""
  allowed = collision_counts(q, k, projections, family, mask, causal) > 0
  if weighting == 'softmax':
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(q.shape[-1])
    scores = jnp.where(allowed, scores, -jnp.inf)
    weights = jnp.exp(scores - jnp.max(jnp.where(allowed, scores, 0.0), axis=-1, keepdims=True))
    weights = jnp.where(allowed, weights, 0.0)
  else:
    weights = allowed.astype(q.dtype)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  return jnp.einsum('bhqk,bkhd->bqhd', weights / jnp.where(total > 0, total, 1.0), v)


def colliding_gradient_reference(q, k, v, g, projections, *, tables=0, mask=None, causal=False):
  """The straight-through 'colliding' estimator (anna_jax.collision_gradient) written densely: (dq, dk) of
  sum_i g_i . (sum_j w_ij (v_j - o_i)) with w_ij = (l / l_g) c^G_ij e^(s_ij - sg(s_ij)) / C_i, where c^G counts
  collisions in the first l_g = `tables` tables (0: all), C_i = sum_j c_ij over all l, o Algorithm 1's output and
  s_ij = z log(1 - angle / pi) of unit q, k. Every colliding pair, no window."""
  total = projections.shape[1]
  tables = tables or total
  hashes = projections.shape[-1]
  counts = collision_counts(q, k, projections, 'hyperplane', mask, causal).astype(jnp.float32)  # (b, h, n, n)
  sampled = collision_counts(q, k, projections[:, :tables], 'hyperplane', mask, causal).astype(jnp.float32)
  per_query = jnp.sum(counts, axis=-1, keepdims=True)
  inverse = jnp.where(per_query > 0, 1.0 / jnp.maximum(per_query, 1.0), 0.0)
  out = anna_dense_reference(q, k, v, projections, mask=mask, causal=causal)
  g_dot = jnp.einsum('bqhd,bkhd->bhqk', g, v) - jnp.einsum('bqhd,bqhd->bhq', g, out)[..., None]

  def surrogate(q, k):
    score = collision_log_kernel(jnp.einsum('bqhd,bkhd->bhqk', q, k), hashes)
    weights = total / tables * sampled * jnp.exp(score - jax.lax.stop_gradient(score)) * inverse
    return jnp.sum(weights * g_dot)

  return jax.grad(surrogate, argnums=(0, 1))(q, k)
