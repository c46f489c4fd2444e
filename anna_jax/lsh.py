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

This module is pure jax. `anna`'s CPU plan hashes hyperplanes with a C++ kernel instead
(`anna_jax.cpu_kernel.bucket_ids`): the same hash functions, summed in another float order.
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


def _head_major_digits(x, projections, family):
  """Per-hash codes of x (batch, n, heads, head_dim), heads leading: (heads, batch * n, tables, hashes) int32.

  One matmul per head with the heads as the leading batch axis: XLA's fastest layout on CPU (a head axis in
  the middle of x costs a transpose of x per matmul). Cost O(n * head_dim * hashes * tables) for hyperplanes
  (times d' for cross-polytope); the number of buckets never enters a matmul.
  """
  validate_family(family)
  batch, n, heads, dim = x.shape
  # Hash in float32 whatever the input dtype: a bfloat16 product would flip the codes of vectors near a
  # boundary, so the same (rounded) inputs would land in other buckets than in float32.
  x = x.astype(jnp.float32).reshape(batch * n, heads, dim)
  projections = projections.astype(jnp.float32)
  if family == 'hyperplane':
    _, tables, _, hashes = projections.shape
    weights = jnp.transpose(projections, (0, 2, 1, 3)).reshape(heads, dim, tables * hashes)
    y = jnp.einsum('mhd,hdk->hmk', x, weights)
    return (y > 0).astype(jnp.int32).reshape(heads, batch * n, tables, hashes)
  y = jnp.einsum('mhd,hlzde->hmlze', x, projections)
  index = jnp.argmax(jnp.abs(y), axis=-1)
  negative = jnp.take_along_axis(y, index[..., None], axis=-1)[..., 0] < 0
  return (index + y.shape[-1] * negative).astype(jnp.int32)


def hash_digits(x, projections, family):
  """Per-hash codes of x (batch, n, heads, head_dim): (batch, n, heads, tables, hashes) int32."""
  batch, n, heads, _ = x.shape
  digits = _head_major_digits(x, projections, family)
  return jnp.swapaxes(digits, 0, 1).reshape(batch, n, heads, *digits.shape[2:])


def _pack(digits, base):
  """Mixed-radix number of the last axis (digit i weighs base**i); the caller checks it fits int32."""
  weights = jnp.asarray([base**i for i in range(digits.shape[-1])], jnp.int32)
  return jnp.sum(digits * weights, axis=-1, dtype=jnp.int32)


def _table_codes(x, projections, family):
  """(batch, n, heads, tables) int32 codes; the caller checks that the code space fits int32."""
  batch, n, heads, _ = x.shape
  codes = _pack(_head_major_digits(x, projections, family), values_per_hash(projections, family))
  return jnp.swapaxes(codes, 0, 1).reshape(batch, n, heads, codes.shape[-1])


def _check_int32(projections, family):
  space = code_space(projections, family)
  if space > _INT32_CODES:
    raise ValueError(f'{family} codes of {num_hashes(projections, family)} hashes span {space} values, more than '
                     'int32 holds; use bucket_ids, which groups them exactly by sorting')


def hash_codes(x, projections, family):
  """One integer code per table: (batch, heads, tables, n) int32 for x of shape (batch, n, heads, head_dim).

  Two vectors share a bucket of a table iff their codes in that table are equal.
  """
  _check_int32(projections, family)
  return jnp.transpose(_table_codes(x, projections, family), (0, 2, 3, 1))


def _blocked_codes(x, projections, family, block_size):
  """`_table_codes` block_size tokens at a time: only one block's float32 projections exist at once."""
  n = x.shape[1]
  if n <= block_size:
    return _table_codes(x, projections, family)

  def hash_block(i, codes):
    start = jnp.minimum(i * block_size, n - block_size)  # the last block overlaps the one before: recomputed
    block = _table_codes(jax.lax.dynamic_slice_in_dim(x, start, block_size, axis=1), projections, family)
    return jax.lax.dynamic_update_slice_in_dim(codes, block, start, axis=1)

  codes = jnp.zeros((*x.shape[:3], projections.shape[1]), jnp.int32)
  return jax.lax.fori_loop(0, -(-n // block_size), hash_block, codes)


def bucket_ids(q, k, projections, family, block_size=None):
  """Bucket ids of queries and keys: (q_ids, k_ids, num_ids).

  q_ids (batch, n_q, heads, tables) and k_ids (batch, n_k, heads, tables) are int32 in [0, num_ids), equal iff
  the full codes are. num_ids (a Python int) is the code space when it fits int32; otherwise the distinct codes
  are numbered by a lexicographic sort of the digit tuples of queries and keys together (num_ids = n_q + n_k).
  block_size (int32 path only): hash that many tokens at a time in a loop, so the (n, heads, tables * hashes)
  float32 projections never exist whole (the CPU plan); None hashes every token at once.
  """
  space = code_space(projections, family)
  if space <= _INT32_CODES:
    if block_size:
      return (_blocked_codes(q, projections, family, block_size),
              _blocked_codes(k, projections, family, block_size), space)
    return _table_codes(q, projections, family), _table_codes(k, projections, family), space
  q_digits, k_digits = hash_digits(q, projections, family), hash_digits(k, projections, family)
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
