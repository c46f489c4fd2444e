"""Reformer's LSH attention (Kitaev et al. 2020), the hashing peer our users know (trax has it in JAX).

Per round (n_hashes in Reformer), with shared query/key (the keys are the unit-normalised queries; the `k`
argument of the attention interface is ignored):
  1. hash every token with an angular LSH of `num_buckets` values: argmax over [x R; -x R] with a Gaussian
     R of shape (head_dim, num_buckets / 2), i.e. one cross-polytope hash of `anna_jax.lsh`;
  2. sort tokens by (bucket, position) and cut the sorted list into chunks of `chunk_size`;
  3. each chunk attends to itself and the chunk before it (the first chunk to the last, as trax's roll does),
     with softmax(q.k / sqrt(d)); causal and padding masks apply; a token attends to itself only when it has
     nothing else to attend to (its score is set to -1e5, as in the reference implementation);
  4. unsort.
Rounds are merged by their log-sum-exp: out = sum_r exp(lse_r - lse) out_r with lse = logsumexp_r lse_r.
A pair in two rounds' windows is counted in both (no de-duplication, as in trax's default).

Like Reformer, keys from other buckets that share a chunk are attended too, and same-bucket keys beyond the
chunk window are dropped; `dropped_fraction` counts the latter (same bucket, allowed by the masks, not in the
window). Loop plans as in `anna_jax.anna_softmax`: a cache-sized loop over (batch, head) rows on CPU, every row
batched on accelerators; in both, the rounds run in one scan.
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from anna_jax import checks, lsh, plans
from anna_jax.baselines import unit_norm

_MASKED = -1e9  # causal / padding
_SELF = -1e5  # a token's score with itself: used only when nothing else is allowed


@dataclasses.dataclass(frozen=True)
class ReformerConfig:
  num_rounds: int = 8  # n_hashes: independent hashing rounds, merged by log-sum-exp
  num_buckets: int = 64  # buckets per round (even): argmax over [xR; -xR], R of num_buckets / 2 columns
  chunk_size: int = 64  # sorted tokens per chunk; each chunk attends to itself and the previous one
  loop_plan: str = 'auto'  # 'auto', 'accelerator', 'cpu_xla' or 'cpu_kernel' (no kernel: its cpu_xla loops)
  resample_hashes: bool = False  # False: rotations fixed per layer; True: redrawn every call
  tuning: plans.Tuning = plans.DEFAULT_TUNING  # its CPU loops' budgets (speed and memory, never a number)

  def __post_init__(self):  # a config that exists is valid
    self.validate()

  def validate(self):
    if self.num_rounds < 1 or self.chunk_size < 1 or self.num_buckets < 2 or self.num_buckets % 2:
      raise ValueError(f'reformer needs num_rounds >= 1, chunk_size >= 1 and an even num_buckets >= 2, got '
                       f'{self.num_rounds}, {self.chunk_size}, {self.num_buckets}')
    plans.check(self.loop_plan)


class ReformerStats(NamedTuple):
  collisions: jax.Array  # (query, key, round) same-bucket pairs allowed by the masks, self excluded
  dropped: jax.Array  # of those, the ones outside the query's chunk window

  @property
  def dropped_fraction(self):
    return self.dropped / jnp.maximum(self.collisions, 1.0)


def draw_rotations(key, num_heads, head_dim, config):
  """(heads, rounds, 1, head_dim, num_buckets / 2): one cross-polytope hash per round."""
  return lsh.draw(key, num_heads, head_dim, config.num_rounds, 1, 'crosspolytope', config.num_buckets // 2)


def bucket_codes(q, rotations):
  """Reformer's buckets (batch, heads, rounds, n): the hash of the shared query/key."""
  return lsh.hash_codes(q, rotations, 'crosspolytope')


def _round(q, keys, v, buckets, valid, *, num_buckets, chunk, causal, plan):
  """One round for one (batch, head) row: returns (lse, out) per token and (collisions, in-window) counts."""
  n, dim = q.shape
  position = jnp.arange(n, dtype=jnp.int32)
  buckets = jnp.where(valid, buckets, num_buckets)  # padding sorts last and matches no real bucket
  order = jnp.argsort(buckets * n + position)
  rank = jnp.zeros_like(order).at[order].set(position)
  sq, sk, sv = q[order], keys[order], v[order]
  s_pos, s_bucket, s_valid = position[order], buckets[order], valid[order]

  def chunks(x):
    return x.reshape(n // chunk, chunk, *x.shape[1:])

  def look_one_back(x):  # each chunk's keys: the previous chunk (rolled: the first sees the last), then itself
    x = chunks(x)
    return jnp.concatenate([jnp.roll(x, 1, axis=0), x], axis=1)

  kk, kv = look_one_back(sk), look_one_back(sv)
  k_pos, k_bucket, k_valid = look_one_back(s_pos), look_one_back(s_bucket), look_one_back(s_valid)
  q_pos, q_bucket = chunks(s_pos), chunks(s_bucket)
  scores = jnp.einsum('cqd,ckd->cqk', chunks(sq), kk, preferred_element_type=jnp.float32) / math.sqrt(dim)
  allowed = k_valid[:, None, :]
  if causal:
    allowed = allowed & (k_pos[:, None, :] <= q_pos[:, :, None])
  is_self = k_pos[:, None, :] == q_pos[:, :, None]
  scores = jnp.where(allowed, jnp.where(is_self, _SELF, scores), _MASKED)
  # Normalise by the sum itself, not by exp(-lse): at the -1e5 self score, float32 rounds lse by ~0.004.
  top = jnp.max(scores, axis=-1)
  weights = jnp.exp(scores - top[..., None])
  total = jnp.sum(weights, axis=-1)
  out = jnp.einsum('cqk,ckd->cqd', weights.astype(v.dtype), kv, preferred_element_type=jnp.float32) / total[..., None]
  lse = top + jnp.log(total)
  # Quality counts: same-bucket keys the window reached, against all same-bucket keys (searchsorted).
  same = allowed & ~is_self & (k_bucket[:, None, :] == q_bucket[:, :, None])
  # The roll can bring a chunk's own tokens back only when there is a single chunk; count each key once.
  if n // chunk == 1:
    same = same & (jnp.arange(2 * chunk) >= chunk)[None, None, :]
  in_window = jnp.sum(same, dtype=jnp.float32)
  sorted_keys = buckets[order] * n + s_pos
  search = plans.searchsorted(plan)
  first = search(sorted_keys, buckets * n)
  last = search(sorted_keys, buckets * n + position, side='right') if causal else search(
      sorted_keys, (buckets + 1) * n)
  collisions = jnp.sum(jnp.where(valid, last - first - 1, 0), dtype=jnp.float32)  # minus the token itself
  lse = jnp.where(s_valid, lse.reshape(n), -jnp.inf)[rank]
  return lse, out.reshape(n, dim)[rank], collisions, in_window


def _row(q, keys, v, buckets, valid, **kwargs):
  """All rounds of one (batch, head) row, merged by log-sum-exp. buckets: (rounds, n)."""
  n, dim = q.shape

  def round_step(carry, round_buckets):
    lse_acc, out_acc = carry
    lse, out, collisions, in_window = _round(q, keys, v, round_buckets, valid, **kwargs)
    # The new round's share, sigmoid(lse - lse_acc): the two shares sum to exactly 1 even where the lse are
    # near -1e5 (a token alone with itself), which exp(lse - logaddexp(...)) would not give in float32.
    new = jnp.where(jnp.isfinite(lse_acc), jax.nn.sigmoid(lse - jnp.where(jnp.isfinite(lse_acc), lse_acc, 0.0)),
                    1.0)
    new = jnp.where(jnp.isfinite(lse), new, 0.0)
    out_acc = out_acc * (1.0 - new)[:, None] + out * new[:, None]
    return (jnp.logaddexp(lse_acc, lse), out_acc), (collisions, in_window)

  init = (jnp.full((n,), -jnp.inf), jnp.zeros((n, dim), jnp.float32))
  (_, out), (collisions, in_window) = jax.lax.scan(round_step, init, buckets)
  return out, jnp.sum(collisions), jnp.sum(collisions) - jnp.sum(in_window)


@checks.guarded('reformer', hashes='crosspolytope', shared_qk=True)
def reformer_attention(q, k, v, rotations, config, *, mask=None, causal=False, tuning=None):
  """Reformer LSH attention over q, v of shape (batch, n, heads, head_dim); `k` is ignored (shared QK).

  Returns (output of v's shape and dtype, ReformerStats). Padded queries output zeros.
  """
  del k  # shared QK: the keys are the normalised queries
  batch, n, heads, dim = q.shape
  chunk = min(config.chunk_size, n)
  n_pad = -(-n // chunk) * chunk
  valid = jnp.ones((batch, n), bool) if mask is None else mask.astype(bool)
  keys = unit_norm(q)
  buckets = bucket_codes(q, rotations)  # (batch, heads, rounds, n)
  pad = n_pad - n
  q, keys, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, keys, v))
  buckets = jnp.pad(buckets, ((0, 0), (0, 0), (0, 0), (0, pad)))
  valid = jnp.pad(valid, ((0, 0), (0, pad)))
  plan = plans.resolve(config.loop_plan, 'reformer', tuning or config.tuning, has_kernel=False)
  row = functools.partial(_row, num_buckets=config.num_buckets, chunk=chunk, causal=causal, plan=plan)

  def rows(x):
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(batch * heads, n_pad, dim)

  def one_row(args):
    return row(*args)

  xs = (rows(q), rows(keys), rows(v), buckets.reshape(batch * heads, -1, n_pad), jnp.repeat(valid, heads, axis=0))
  out, collisions, dropped = plans.map_rows(one_row, xs, plan, batch_size=plan.tuning.rows_per_step(n_pad))
  out = out.reshape(batch, heads, n_pad, dim).transpose(0, 2, 1, 3)[:, :n]
  out = out * valid[:, :n, None, None]
  stats = ReformerStats(jax.lax.stop_gradient(jnp.sum(collisions)), jax.lax.stop_gradient(jnp.sum(dropped)))
  return out.astype(v.dtype), stats
