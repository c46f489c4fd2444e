"""Dense n x n oracles of the hashing attentions: the same hash codes, an explicit collision matrix. Tests only."""

import math

import jax.numpy as jnp

from anna_jax import lsh


def _collisions(q, k, projections, family, mask, causal):
  """c_ij: tables in which q_i and k_j share a bucket, masked; shape (batch, heads, n, n), int32."""
  batch, n = q.shape[:2]
  # Compare the per-hash digit tuples directly, independently of how anna packs them into one id.
  q_digits = jnp.moveaxis(lsh.hash_digits(q, projections, family), 1, 3)  # (batch, heads, tables, n, hashes)
  k_digits = jnp.moveaxis(lsh.hash_digits(k, projections, family), 1, 3)
  same = jnp.all(q_digits[..., :, None, :] == k_digits[..., None, :, :], axis=-1)  # (batch, heads, tables, n, n)
  count = jnp.sum(same, axis=2, dtype=jnp.int32)
  valid = jnp.ones((batch, n), bool) if mask is None else mask.astype(bool)
  allowed = valid[:, None, :, None] & valid[:, None, None, :]
  if causal:
    allowed &= jnp.tril(jnp.ones((n, n), bool))
  return jnp.where(allowed, count, 0)


def anna_dense_reference(q, k, v, projections, *, family='hyperplane', mask=None, causal=False):
  """Algorithm 1 written densely: w_ij = c_ij / sum_j' c_ij'; a query with no collision outputs zeros."""
  weights = _collisions(q, k, projections, family, mask, causal).astype(jnp.float32)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  return jnp.einsum('bhqk,bkhd->bqhd', weights / jnp.where(total > 0, total, 1.0), v)


def anna_softmax_dense_reference(q, k, v, projections, *, family='hyperplane', mask=None, causal=False,
                                 weighting='softmax'):
  """What anna_softmax computes when no bucket overflows its window: attention over the union of collisions."""
  allowed = _collisions(q, k, projections, family, mask, causal) > 0
  if weighting == 'softmax':
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(q.shape[-1])
    scores = jnp.where(allowed, scores, -jnp.inf)
    weights = jnp.exp(scores - jnp.max(jnp.where(allowed, scores, 0.0), axis=-1, keepdims=True))
    weights = jnp.where(allowed, weights, 0.0)
  else:
    weights = allowed.astype(q.dtype)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  return jnp.einsum('bhqk,bkhd->bqhd', weights / jnp.where(total > 0, total, 1.0), v)
