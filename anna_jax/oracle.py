"""Dense-mask oracle of ANNA: the same hashes, an explicit n x n collision mask. Tests only."""

import math

import jax.numpy as jnp

from anna_jax.anna import hash_buckets


def anna_dense_reference(q, k, v, projections, *, mask=None, causal=False, weighting='softmax'):
  """What ANNA computes when no bucket overflows its window: attention over the union of collisions."""
  batch, n = q.shape[:2]
  q_buckets = hash_buckets(q, projections)  # (batch, heads, tables, n)
  k_buckets = hash_buckets(k, projections)
  allowed = jnp.any(q_buckets[..., :, None] == k_buckets[..., None, :], axis=2)  # (batch, heads, n, n)
  valid = jnp.ones((batch, n), bool) if mask is None else mask.astype(bool)
  allowed &= valid[:, None, :, None] & valid[:, None, None, :]
  if causal:
    allowed &= jnp.tril(jnp.ones((n, n), bool))
  if weighting == 'softmax':
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(q.shape[-1])
    scores = jnp.where(allowed, scores, -jnp.inf)
    weights = jnp.exp(scores - jnp.max(jnp.where(allowed, scores, 0.0), axis=-1, keepdims=True))
    weights = jnp.where(allowed, weights, 0.0)
  else:
    weights = allowed.astype(q.dtype)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  weights = weights / jnp.where(total > 0, total, 1.0)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v)
