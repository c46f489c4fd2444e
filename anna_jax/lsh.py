"""Angular LSH families of Andoni et al. 2015 ("Practical and optimal LSH for angular distance"), shared by
every hashing attention in anna-jax.

A table concatenates z hash functions; queries and keys are hashed separately with the same functions.
- `hyperplane` (SimHash): one random Gaussian direction per hash, the code is the sign bit of x.w:
  2 values per hash, 2**z buckets per table. Projections: (heads, tables, head_dim, hashes).
- `crosspolytope`: one Gaussian matrix R of shape (head_dim, d') per hash (d' = `crosspolytope_dim`, default
  head_dim); the code is the index and sign of the largest |(x R)_i|: 2 d' values per hash, (2 d')**z buckets.
  Projections: (heads, tables, hashes, head_dim, d'). A Gaussian matrix stands in for the random rotation
  (Andoni et al. use pseudo-random rotations for speed; the hash is the same in distribution up to the norms
  of R's columns, which concentrate for large head_dim).
Both codes are invariant to scaling x by a positive number, so hashing a unit-normalised vector gives the same
codes as hashing the vector itself.

The z per-hash codes of a table combine exactly, as mixed-radix digits, into one int32 per table. Where the
code space outgrows int32 (cross-polytope with many hashes), `bucket_ids` numbers the distinct codes that
actually occur by a lexicographic sort of the digit tuples instead: still exact, never a modulo.
"""

import jax
import jax.numpy as jnp

FAMILIES = ('hyperplane', 'crosspolytope')
_INT32_CODES = 2**31  # codes 0 .. 2**31 - 1 fit a non-negative int32


def validate_family(family):
  if family not in FAMILIES:
    raise ValueError(f'LSH family must be one of {FAMILIES}, got {family!r}')


def draw(key, num_heads, head_dim, num_tables, num_hashes, family='hyperplane', crosspolytope_dim=0):
  """Random hash functions of one layer, drawn from `key` (see the module docstring for the shapes)."""
  validate_family(family)
  if family == 'hyperplane':
    return jax.random.normal(key, (num_heads, num_tables, head_dim, num_hashes), jnp.float32)
  return jax.random.normal(key, (num_heads, num_tables, num_hashes, head_dim, crosspolytope_dim or head_dim),
                           jnp.float32)


def num_hashes(projections, family):
  return projections.shape[-1] if family == 'hyperplane' else projections.shape[2]


def values_per_hash(projections, family):
  return 2 if family == 'hyperplane' else 2 * projections.shape[-1]


def code_space(projections, family):
  """Number of distinct codes one table can give (a Python int: it may exceed any integer dtype)."""
  return values_per_hash(projections, family) ** num_hashes(projections, family)


def hash_digits(x, projections, family):
  """Per-hash codes of x (batch, n, heads, head_dim): (batch, n, heads, tables, hashes) int32.

  Cost O(n * head_dim * hashes * tables) for hyperplanes (times d' for cross-polytope); the number of
  buckets never enters a matmul.
  """
  validate_family(family)
  # Hash in float32 whatever the input dtype: a bfloat16 product would flip the codes of vectors near a
  # boundary, so the same (rounded) inputs would land in other buckets than in float32.
  x, projections = x.astype(jnp.float32), projections.astype(jnp.float32)
  if family == 'hyperplane':
    return (jnp.einsum('bnhd,hldz->bnhlz', x, projections) > 0).astype(jnp.int32)
  y = jnp.einsum('bnhd,hlzde->bnhlze', x, projections)
  index = jnp.argmax(jnp.abs(y), axis=-1)
  negative = jnp.take_along_axis(y, index[..., None], axis=-1)[..., 0] < 0
  return (index + y.shape[-1] * negative).astype(jnp.int32)


def _pack(digits, base):
  """Mixed-radix number of the last axis (digit i weighs base**i); the caller checks it fits int32."""
  weights = jnp.asarray([base**i for i in range(digits.shape[-1])], jnp.int32)
  return jnp.sum(digits * weights, axis=-1, dtype=jnp.int32)


def hash_codes(x, projections, family):
  """One integer code per table: (batch, heads, tables, n) int32 for x of shape (batch, n, heads, head_dim).

  Two vectors share a bucket of a table iff their codes in that table are equal.
  """
  space = code_space(projections, family)
  if space > _INT32_CODES:
    raise ValueError(f'{family} codes of {num_hashes(projections, family)} hashes span {space} values, more than '
                     'int32 holds; use bucket_ids, which groups them exactly by sorting')
  codes = _pack(hash_digits(x, projections, family), values_per_hash(projections, family))
  return jnp.transpose(codes, (0, 2, 3, 1))


def bucket_ids(q, k, projections, family):
  """Bucket ids of queries and keys: (q_ids, k_ids, num_ids).

  q_ids (batch, n_q, heads, tables) and k_ids (batch, n_k, heads, tables) are int32 in [0, num_ids), equal iff
  the full codes are. num_ids (a Python int) is the code space when it fits int32; otherwise the distinct codes
  are numbered by a lexicographic sort of the digit tuples of queries and keys together (num_ids = n_q + n_k).
  """
  q_digits, k_digits = hash_digits(q, projections, family), hash_digits(k, projections, family)
  space = code_space(projections, family)
  if space <= _INT32_CODES:
    base = values_per_hash(projections, family)
    return _pack(q_digits, base), _pack(k_digits, base), space
  n_q = q.shape[1]
  ids = _dense_ids(jnp.concatenate([q_digits, k_digits], axis=1))
  return ids[:, :n_q], ids[:, n_q:], ids.shape[1]


def _dense_ids(digits):
  """digits (batch, m, heads, tables, hashes) -> (batch, m, heads, tables) ids of the distinct digit tuples."""
  m = digits.shape[1]
  columns = [digits[..., i] for i in range(digits.shape[-1])]
  slot = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32)[None, :, None, None], columns[0].shape)
  *sorted_columns, sorted_slot = jax.lax.sort((*columns, slot), dimension=1, num_keys=len(columns))
  changed = jnp.zeros(sorted_slot.shape, bool)
  for column in sorted_columns:
    changed |= column != jnp.roll(column, 1, axis=1)
  changed = changed.at[:, 0].set(False)
  group = jnp.cumsum(changed, axis=1, dtype=jnp.int32)  # id of each sorted tuple
  _, ids = jax.lax.sort((sorted_slot, group), dimension=1, num_keys=1)  # back to the original order
  return ids
