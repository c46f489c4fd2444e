"""Theorem 5.2 executed: a 1-layer, 1-head ANNA-transformer for Match2 whose weights are SET, not trained.

Match2(X)_i = 1 iff some j has x_i + x_j = 0 (mod M). The paper proves (Theorem 5.2) that one layer and one head
of ANNA compute it for any N and M = N^O(1): a query must find, among N keys, one equal to its own complement, an
exact (r = 0) near-neighbour search, which is what ANNA's buckets do. Its construction (Appendix F, not seen by
us) uses embedding dimension 1 and ANNA as a set of constraints; ours realises it with Algorithm 1 and angular LSH,
which see only directions, so residues need directions far apart:

- Residue embedding: e(x) = [cos(2 pi f_t x / M), sin(2 pi f_t x / M)]_{t < T} / sqrt(T), T frequencies f_t drawn
  once from [1, M) (seeded); width m = 2 T. |e(x)| = 1 and <e(a), e(b)> = mean_t cos(2 pi f_t (a - b) / M): 1 iff
  a = b (M prime), else at most `max_false_cosine`, computed exactly over all M - 1 differences.
- Key j: e(x_j). Query i: e(-x_i), the key its partner would have, read from the SAME table, so a matching key
  and the query are the same float vector: they share every hash bucket in every table, whatever the draw.
- Value j: e(x_j). The attention output o_i is the weighted mean of the colliding keys' embeddings.
- Read-out: Match2_i = 1 iff <o_i, e(-x_i)> > threshold = (1 + max_false_cosine) / 2. If only partners collide,
  o_i = e(-x_i) and the score is 1; with no collision ANNA outputs 0 and the score is 0; a non-partner adds at
  most max_false_cosine. So a token without a partner is never called 1 (its score is a mean of cosines
  <= max_false_cosine < threshold), and the only errors are tokens whose partners are outweighed by colliding
  non-partners: hashing too coarse (z too small) for N keys.
  The paper's read-out is an MLP on the residual stream; ours is a fixed bilinear test of the same two vectors.
- The same weights under exact softmax attention: softmax(beta q.k) with beta = (ln N + 3) / (1 - threshold)
  (documented choice: a partner outweighs N non-partners by e^3 at the threshold's margin), computed block by
  block (`full_blockwise_attention`), so it needs no N x N memory but O(N^2) time.

With `anna`, exactly one table suffices (partners collide in all of them); more tables only add false
collisions. The number of hashes z must grow like log2 N so that N keys at angle ~90 degrees (collision
probability 2^-z per key) leave few false colliders: Theorem 3.4's z = Theta(log N).
"""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.baselines import full_blockwise_attention
from anna_jax.tasks import is_prime


def max_false_cosine(frequencies, modulus, chunk=2**16):
  """max over d in 1..M-1 of mean_t cos(2 pi f_t d / M): the closest two distinct residues' embeddings get."""
  f = np.asarray(frequencies, np.float64)[:, None]
  best = -1.0
  for start in range(1, modulus, chunk):
    d = np.arange(start, min(modulus, start + chunk), dtype=np.float64)[None, :]
    best = max(best, float(np.cos(2 * np.pi * ((f * d) % modulus) / modulus).mean(axis=0).max()))
  return best


@dataclasses.dataclass(frozen=True)
class Match2Construction:
  """The set weights: the residue table (M, width) and what follows from it."""
  modulus: int
  table: np.ndarray  # (modulus, width) float32, row x = e(x)
  max_false_cosine: float

  @property
  def threshold(self):
    return (1.0 + self.max_false_cosine) / 2

  def softmax_beta(self, n):
    return (math.log(n) + 3.0) / (1.0 - self.threshold)


def build(modulus, width=128, seed=0):
  """The construction for residues mod `modulus` (a prime) with embeddings of even `width`."""
  if modulus < 3 or not is_prime(modulus):
    raise ValueError(f'the construction needs a prime modulus >= 3, got {modulus}')
  if width < 2 or width % 2:
    raise ValueError(f'width must be even and >= 2, got {width}')
  frequencies = np.random.default_rng(seed).integers(1, modulus, width // 2)
  angle = 2 * np.pi * ((frequencies[None, :] * np.arange(modulus)[:, None]) % modulus) / modulus
  table = np.concatenate([np.cos(angle), np.sin(angle)], axis=1) / np.sqrt(width // 2)
  return Match2Construction(modulus, table.astype(np.float32), max_false_cosine(frequencies, modulus))


def queries_keys_values(construction, tokens):
  """q, k, v of shape (batch, n, 1, width) for tokens (batch, n): e(-x_i), e(x_j), e(x_j)."""
  table = jnp.asarray(construction.table)
  keys = table[tokens][:, :, None, :]
  queries = table[(construction.modulus - tokens) % construction.modulus][:, :, None, :]
  return queries, keys, keys


def read_out(construction, queries, out):
  """Match2 prediction per token: <o_i, e(-x_i)> > threshold. (batch, n) int32."""
  score = jnp.einsum('bnhd,bnhd->bn', out.astype(jnp.float32), queries.astype(jnp.float32))
  return (score > construction.threshold).astype(jnp.int32)


def anna_forward(construction, tokens, projections, config: ANNAConfig):
  """(predictions (batch, n), ANNAStats) of the construction with Algorithm 1 as its attention."""
  q, k, v = queries_keys_values(construction, tokens)
  out, stats = anna_attention(q, k, v, projections, config)
  return read_out(construction, q, out), stats


def softmax_forward(construction, tokens, block=512):
  """Predictions (batch, n) of the same weights with exact softmax(beta q.k) attention, flash-style."""
  q, k, v = queries_keys_values(construction, tokens)
  n, width = tokens.shape[1], q.shape[-1]
  scale = construction.softmax_beta(n) * math.sqrt(width)  # full_blockwise divides by sqrt(width)
  out = full_blockwise_attention(q * scale, k, v, block=block)
  return read_out(construction, q, out)


def draw(construction, key, config: ANNAConfig):
  """The hash functions of the construction's one head."""
  return draw_projections(key, 1, construction.table.shape[1], config)
