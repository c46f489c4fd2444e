"""Algorithm 1's gradient in v, one custom VJP for every path that computes the output from bucket ids by walking
buckets (the CPU kernel, `cpu_kernel.BucketWalk`; the sequence-parallel exchange, `sequence_parallel`).

out_i = sum_j c_ij v_j / C_i is linear in v, so dv_j = sum_i c_ij g_i / C_i: the same walk with keys and queries
swapped, keys reading the buckets the queries wrote g_i / C_i into, causal read backwards (j gets the queries
i >= j). Queries and keys get no gradient (hash ids are integers).

A walk is a hashable object with
  attend(v, q_ids, k_ids, valid, causal) -> (float32 output, counts, extra): the forward (extra: the walk's own
      integer output, e.g. exchange rounds);
  sums(read_ids, write_ids, values, valid, direction) -> float32 sums of the writers' values per reader, with
      direction 0 (every writer), 1 (writers j <= i) or 2 (writers j >= i).
"""

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6))
def attend(walk, v, q_ids, k_ids, valid, causal, v_dtype):
  """(float32 output, counts, extra) of `walk`; its VJP in v is the walk reversed. v_dtype: v.dtype."""
  del v_dtype
  return walk.attend(v, q_ids, k_ids, valid, causal)


def _attend_fwd(walk, v, q_ids, k_ids, valid, causal, v_dtype):
  out, counts, extra = attend(walk, v, q_ids, k_ids, valid, causal, v_dtype)
  return (out, counts, extra), (q_ids, k_ids, valid, counts)


def _attend_bwd(walk, causal, v_dtype, residuals, cotangents):
  q_ids, k_ids, valid, counts = residuals
  per_query = cotangents[0] / jnp.maximum(counts, 1)[..., None]  # zero-count and padded queries output 0
  dv = walk.sums(k_ids, q_ids, per_query, valid, 2 if causal else 0)
  return dv.astype(v_dtype), None, None, None


attend.defvjp(_attend_fwd, _attend_bwd)
