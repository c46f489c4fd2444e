"""The attentions ANNA is measured against (quadratic softmax, Performer-style low rank) and the paper's
training surrogate (softmax over unit-normalised queries and keys)."""

import dataclasses

import jax
import jax.numpy as jnp

from anna_jax import checks


@dataclasses.dataclass(frozen=True)
class FullConfig:
  implementation: str = ''  # jax.nn.dot_product_attention's: '' (XLA's choice), 'xla' or 'cudnn' (GPU, bfloat16)

  def __post_init__(self):
    if self.implementation not in ('', 'xla', 'cudnn'):
      raise ValueError(f"full attention implementation must be '', 'xla' or 'cudnn', got {self.implementation!r}")


@dataclasses.dataclass(frozen=True)
class BlockwiseConfig:
  block: int = 512  # query and key block of full_blockwise

  def __post_init__(self):
    if self.block < 1:
      raise ValueError(f'full_blockwise block must be >= 1, got {self.block}')


@dataclasses.dataclass(frozen=True)
class UnitSoftmaxConfig:
  beta: float = 1.0  # softmax(beta * q.k) over unit-norm q, k
  # > 0: the collision kernel instead (beta unused): weights p_ij^z / sum_j' p_ij'^z with p_ij = 1 - angle(q_i,
  # k_j) / pi, one hyperplane hash's collision probability, and z = collision_hashes. Algorithm 1 with z
  # hyperplane hashes per table has E[c_ij] = l p_ij^z, so its weights tend to these as its tables l grow: a
  # surrogate whose swap to `anna` changes the kernel only by sampling (ours; the paper trains beta q.k).
  collision_hashes: int = 0

  def __post_init__(self):
    if not self.beta > 0 or self.collision_hashes < 0:
      raise ValueError(f'need beta > 0 and collision_hashes >= 0, got {self.beta}, {self.collision_hashes}')


@dataclasses.dataclass(frozen=True)
class LowRankConfig:
  num_features: int = 64  # random features of the Performer (FAVOR+) baseline

  def __post_init__(self):
    if self.num_features < 1:
      raise ValueError(f'lowrank num_features must be >= 1, got {self.num_features}')


@checks.guarded('full')
def full_attention(q, k, v, *, mask=None, causal=False, implementation=None):
  """Quadratic softmax attention over (batch, n, heads, head_dim); padded queries output zeros.

  `implementation` is passed to jax.nn.dot_product_attention: None or '' (XLA's choice), 'xla' or 'cudnn'.
  """
  key_mask = None if mask is None else mask.astype(bool)[:, None, None, :]
  out = jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=causal, implementation=implementation or None)
  if mask is not None:
    out = out * mask[:, :, None, None].astype(out.dtype)
  return out


def unit_norm(x):
  """x / |x| over the last axis, computed in float32 and floored so a zero vector stays finite."""
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.maximum(jnp.sum(x32 * x32, axis=-1, keepdims=True), 1e-12))).astype(x.dtype)


@checks.guarded('unit_softmax')
def unit_softmax_attention(q, k, v, *, beta, mask=None, causal=False, collision_hashes=0):
  """The paper's surrogate for ANNA: softmax(beta * q.k) over unit-normalised q and k, no 1 / sqrt(d); with
  collision_hashes = z > 0, the collision kernel p^z / sum p^z instead (see UnitSoftmaxConfig).

  Angular LSH sees only directions, so a model trained with it can be evaluated with `anna` hashing the same
  normalised queries and keys. The norms are floored so a zero vector stays finite.
  """
  key_mask = None if mask is None else mask.astype(bool)[:, None, None, :]
  if collision_hashes:
    out = collision_kernel_attention(unit_norm(q), unit_norm(k), v, collision_hashes, key_mask, causal)
  else:
    out = jax.nn.dot_product_attention(unit_norm(q), unit_norm(k), v, mask=key_mask, is_causal=causal, scale=beta)
  if mask is not None:
    out = out * mask[:, :, None, None].astype(out.dtype)
  return out


def collision_log_kernel(cos, hashes):
  """log p^z, p = 1 - angle / pi: the log-probability that a unit query and key with cosine `cos` share a bucket of
  one table of `hashes` hyperplane hashes."""
  # arccos' slope is infinite at +-1: clip so that identical directions get a finite gradient.
  angle = jnp.arccos(jnp.clip(cos, -1.0 + 1e-6, 1.0 - 1e-6))
  return hashes * jnp.log1p(-angle / jnp.pi)


def collision_kernel_weights(cos, hashes, allowed):
  """p^z / sum p^z over the allowed keys (last axis), p = 1 - angle / pi: the weights Algorithm 1 tends to as its
  tables grow. `cos`: cosines of unit queries and keys, (..., n_q, n_k); `allowed` broadcasts to it; a query with no
  allowed key gets zeros."""
  weights = jax.nn.softmax(jnp.where(allowed, collision_log_kernel(cos, hashes), -jnp.inf), axis=-1)
  return jnp.where(jnp.any(allowed, axis=-1, keepdims=True), weights, 0.0)


def collision_kernel_attention(q, k, v, hashes, key_mask, causal):
  """sum_j p_ij^z v_j / sum_j p_ij^z over unit q, k (batch, n, heads, dim); p = 1 - angle / pi. O(n^2)."""
  n = q.shape[1]
  cos = jnp.einsum('bqhd,bkhd->bhqk', q.astype(jnp.float32), k.astype(jnp.float32))
  allowed = jnp.ones((n, n), bool) if not causal else jnp.tril(jnp.ones((n, n), bool))
  if key_mask is not None:
    allowed = allowed & key_mask
  weights = collision_kernel_weights(cos, hashes, allowed)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v.astype(jnp.float32)).astype(v.dtype)


def draw_random_features(key, num_heads, head_dim, num_features):
  """Gaussian feature directions for FAVOR+, shape (heads, features, head_dim)."""
  return jax.random.normal(key, (num_heads, num_features, head_dim), jnp.float32)


@checks.guarded('lowrank')
def lowrank_attention(q, k, v, features, *, mask=None, causal=False):
  """Performer (FAVOR+) attention with positive random features: O(n * features * head_dim).

  softmax(q.k / sqrt(d)) is approximated by phi(q).phi(k) with phi(x) = exp(w.x - |x|^2 / 2) / sqrt(m).
  """
  dim = q.shape[-1]
  if features.ndim != 3 or features.shape[0] != q.shape[2] or features.shape[2] != dim:
    raise ValueError(f'lowrank: random features of shape {tuple(features.shape)} do not fit q {tuple(q.shape)}: '
                     f'need (heads={q.shape[2]}, features, head_dim={dim})')
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
    out, norm = causal_linear(phi_q, phi_k, v)
  else:
    out = jnp.einsum('bnhm,bhmd->bnhd', phi_q, jnp.einsum('bnhm,bnhd->bhmd', phi_k, v))
    norm = jnp.einsum('bnhm,bhm->bnh', phi_q, jnp.sum(phi_k, axis=1))
  return out / jnp.maximum(norm, 1e-30)[..., None] * valid[:, :, None, None]


def causal_linear(phi_q, phi_k, v, block=64):
  """Causal sum_{j <= i} phi_q(i).phi_k(j) v_j and its normaliser, blockwise: a masked product inside each block
  of `block` tokens and prefix sums of per-block (m x d) states between blocks. A running (n, m, d) cumsum does
  the same work but is far slower on CPU: the k-hop model (N = 32, depth 3, m = 64) trained at 5.0 steps/s
  with it and 23.5 steps/s blockwise (2-core CPU, 2026-12-02)."""
  batch, n, heads, features = phi_q.shape
  block = min(block, n)
  pad = -n % block
  phi_q, phi_k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (phi_q, phi_k, v))  # phi_k pads 0

  def blocks(x):
    return x.reshape(batch, -1, block, heads, x.shape[-1])

  phi_q, phi_k, v = blocks(phi_q), blocks(phi_k), blocks(v)
  inside = jnp.einsum('bcqhm,bckhm->bchqk', phi_q, phi_k) * jnp.tril(jnp.ones((block, block), phi_q.dtype))
  states = jnp.einsum('bckhm,bckhd->bchmd', phi_k, v)
  before = jnp.cumsum(states, axis=1) - states  # the blocks before each block
  key_sums = jnp.sum(phi_k, axis=2)
  key_sums_before = jnp.cumsum(key_sums, axis=1) - key_sums
  out = jnp.einsum('bchqk,bckhd->bcqhd', inside, v) + jnp.einsum('bcqhm,bchmd->bcqhd', phi_q, before)
  norm = jnp.sum(inside, axis=-1).transpose(0, 1, 3, 2) + jnp.einsum('bcqhm,bchm->bcqh', phi_q, key_sums_before)
  return out.reshape(batch, -1, heads, v.shape[-1])[:, :n], norm.reshape(batch, -1, heads)[:, :n]


@checks.guarded('full_blockwise')
def full_blockwise_attention(q, k, v, *, mask=None, causal=False, block=512):
  """Exact softmax(q.k / sqrt(d)) attention computed block by block with an online softmax (flash-style).

  Memory O(n * d + block**2) per (batch, head) instead of O(n**2): a loop over query blocks, and for each an
  inner loop over key blocks (causal: blocks past the diagonal are skipped by a cond, so about half are never
  computed) that keeps a running max, denominator and numerator. Scores and sums are float32 whatever the input
  dtype. Padded queries output zeros; a query whose keys are all masked outputs zeros. Differentiable: the
  inner step is rematerialised, so the backward pass keeps only the running state of each step.
  """
  batch, n, heads, dim = q.shape
  block = min(block, n)
  pad = -n % block
  num_blocks = (n + pad) // block
  valid = jnp.ones((batch, n), bool) if mask is None else mask.astype(bool)
  valid = jnp.pad(valid, ((0, 0), (0, pad)))

  def head_major(x):  # (batch, n, heads, dim) -> (batch * heads, blocks, block, dim)
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(batch * heads, num_blocks, block, dim)

  qb, kb, vb = head_major(q * jnp.asarray(dim**-0.5, q.dtype)), head_major(k), head_major(v)
  key_valid = jnp.repeat(valid, heads, axis=0).reshape(batch * heads, num_blocks, block)
  offsets = jnp.arange(block)

  def query_block(i):
    qi = qb[:, i]

    @jax.checkpoint
    def update(j, carry):
      m, den, num = carry
      s = jnp.einsum('xqd,xkd->xqk', qi, kb[:, j], preferred_element_type=jnp.float32)
      allowed = key_valid[:, j][:, None, :]
      if causal:
        allowed = allowed & (j * block + offsets[None, :] <= i * block + offsets[:, None])[None]
      s = jnp.where(allowed, s, -jnp.inf)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # all masked so far: keep exp() finite
      p = jnp.exp(s - m_safe[..., None])
      correction = jnp.exp(jnp.where(jnp.isfinite(m), m - m_safe, -jnp.inf))
      den = den * correction + jnp.sum(p, axis=-1)
      num = num * correction[..., None] + jnp.einsum('xqk,xkd->xqd', p.astype(v.dtype), vb[:, j],
                                                     preferred_element_type=jnp.float32)
      return m_new, den, num

    def key_block(j, carry):
      if causal:  # blocks past the diagonal hold only future keys
        return jax.lax.cond(j <= i, update, lambda j, carry: carry, j, carry)
      return update(j, carry)

    init = (jnp.full((batch * heads, block), -jnp.inf), jnp.zeros((batch * heads, block)),
            jnp.zeros((batch * heads, block, dim)))
    _, den, num = jax.lax.fori_loop(0, num_blocks, key_block, init)
    return num / jnp.where(den > 0, den, 1.0)[..., None]

  out = jax.lax.map(query_block, jnp.arange(num_blocks))  # (blocks, batch * heads, block, dim)
  out = jnp.transpose(out.reshape(num_blocks, batch, heads, block, dim), (1, 0, 3, 2, 4))
  out = out.reshape(batch, num_blocks * block, heads, dim)[:, :n]
  return (out * valid[:, :n, None, None]).astype(v.dtype)
