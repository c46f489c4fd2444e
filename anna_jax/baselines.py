"""The attentions ANNA is measured against: quadratic softmax and Performer-style low rank."""

import jax
import jax.numpy as jnp


def full_attention(q, k, v, *, mask=None, causal=False, implementation=None):
  """Quadratic softmax attention over (batch, n, heads, head_dim); padded queries output zeros.

  `implementation` is passed to jax.nn.dot_product_attention: None (XLA), 'xla' or 'cudnn'.
  """
  key_mask = None if mask is None else mask.astype(bool)[:, None, None, :]
  out = jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=causal, implementation=implementation)
  if mask is not None:
    out = out * mask[:, :, None, None].astype(out.dtype)
  return out


def draw_random_features(key, num_heads, head_dim, num_features):
  """Gaussian feature directions for FAVOR+, shape (heads, features, head_dim)."""
  return jax.random.normal(key, (num_heads, num_features, head_dim), jnp.float32)


def lowrank_attention(q, k, v, features, *, mask=None, causal=False):
  """Performer (FAVOR+) attention with positive random features: O(n * features * head_dim).

  softmax(q.k / sqrt(d)) is approximated by phi(q).phi(k) with phi(x) = exp(w.x - |x|^2 / 2) / sqrt(m).
  """
  dim = q.shape[-1]
  num_features = features.shape[1]
  features = features.astype(q.dtype)
  valid = jnp.ones(q.shape[:2], bool) if mask is None else mask.astype(bool)

  def log_phi(x):
    x = x * dim**-0.25
    return jnp.einsum('bnhd,hmd->bnhm', x, features) - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)

  log_q, log_k = log_phi(q), log_phi(k)
  # Stabilisers cancel in the ratio: per query for phi(q), one constant per (batch, head) for phi(k).
  log_q -= jax.lax.stop_gradient(jnp.max(log_q, axis=-1, keepdims=True))
  k_max = jnp.max(jnp.where(valid[:, :, None, None], log_k, -jnp.inf), axis=(1, 3), keepdims=True)
  log_k -= jax.lax.stop_gradient(k_max)
  phi_q = jnp.exp(log_q) / num_features**0.5 + 1e-6
  # No epsilon on phi(k): it would not cancel with the key stabiliser and would leak the future when causal.
  phi_k = jnp.exp(log_k) / num_features**0.5 * valid[:, :, None, None]
  if causal:
    kv = jnp.cumsum(jnp.einsum('bnhm,bnhd->bnhmd', phi_k, v), axis=1)
    out = jnp.einsum('bnhm,bnhmd->bnhd', phi_q, kv)
    norm = jnp.einsum('bnhm,bnhm->bnh', phi_q, jnp.cumsum(phi_k, axis=1))
  else:
    out = jnp.einsum('bnhm,bhmd->bnhd', phi_q, jnp.einsum('bnhm,bnhd->bhmd', phi_k, v))
    norm = jnp.einsum('bnhm,bhm->bnh', phi_q, jnp.sum(phi_k, axis=1))
  return out / jnp.maximum(norm, 1e-30)[..., None] * valid[:, :, None, None]
