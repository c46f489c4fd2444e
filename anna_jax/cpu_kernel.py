"""The ops of the C++ kernels of loop plan 'cpu_kernel', for `anna` (kernels/anna_cpu.cc) and `anna_softmax`
(kernels/anna_softmax_cpu.cc), and anna_softmax's custom VJP over them (building and registering them:
`anna_jax.kernel_build`; anna's v-linear VJP: `anna_jax.v_linear`).

Algorithm 1 is hashing, then scatter-adds and gathers of value rows. XLA's CPU scatter and gather cost tens of
nanoseconds per row, several times the memory they touch, and its hashing makes several passes over the
(n, heads, tables * hashes) projections; two plain loops do better (n = 16K, H = 8, l = 8, z = 9 on this
project's 2-core VM: the whole forward 118-139 ms with XLA's loops, 28-57 ms with these, across runs):
- `hyperplane_codes`: lsh's hyperplane codes, a register-tiled product with the bits packed on the spot;
- `bucket_attend`: per (batch row, head), the bucket tables of all l hash tables built in one walk over the
  keys and read in one walk over the queries (causal: one walk, each key added before its query reads).
  Code spaces up to max(n, Tuning.kernel_min_ids) index a table's rows directly; larger ones (many hashes per table,
  as exact matches at large n need) address 2n-4n rows by an open-addressed hash of the code, exact on that
  hash's collisions (each row remembers its code), so any z costs what z = log2 n costs.
And `anna_softmax`'s CPU plan (kernels/anna_softmax_cpu.cc): `softmax_attend`, its forward and backward kernels
under a custom VJP (same pairs as its XLA plans; the backward keeps only the output and each query's log-sum-exp).
All are XLA FFI custom calls: they run inside the jitted program, on XLA's CPU thread pool. Block sizes and byte
budgets come from the caller's `plans.Tuning`.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from anna_jax import kernel_build, lsh, plans
from anna_jax.kernel_build import KernelBuildError, available  # noqa: F401 -- where tests and users look

def _float32_or_bfloat16(x):
  """The kernels read both (summing in float32): bfloat16 inputs need no float32 copy."""
  return x if x.dtype in (jnp.float32, jnp.bfloat16) else x.astype(jnp.float32)


def _ids_layout(rank):
  """Bucket ids (..., n, heads, tables) are stored heads before tokens (major to minor: ..., heads, n, tables):
  one head's ids lie together, as the tables kernel reads them."""
  return (*range(rank - 3), rank - 2, rank - 3, rank - 1)


def hyperplane_codes(x, projections):
  """`lsh`'s hyperplane codes of x (..., n, heads, dim): (..., n, heads, tables) int32 (bit z = hash z).

  projections: (heads, tables, dim, hashes), hashes <= 31. Sums in another order than XLA's matmul, so a vector
  within float rounding of a hyperplane may fall on its other side (measured: 1 code in 10**6 differs).
  """
  kernel_build.require()
  shape = jax.ShapeDtypeStruct((*x.shape[:-1], projections.shape[1]), jnp.int32)
  # Under vmap one call per element: the projections may not gain x's leading axes.
  call = jax.ffi.ffi_call('anna_hyperplane_codes', shape, vmap_method='sequential',
                          output_layouts=_ids_layout(x.ndim))
  # Integer codes: no gradient, and none asked of the FFI call.
  x, projections = _float32_or_bfloat16(x), projections.astype(jnp.float32)
  return call(jax.lax.stop_gradient(x), jax.lax.stop_gradient(projections))


def hashed_rows(n, num_ids, tuning=plans.DEFAULT_TUNING):
  """Rows per table of the kernel's hashed tables for this code space: 0 (rows indexed by id) up to
  max(n, tuning.kernel_min_ids) ids, else the power of two in [2n, 4n)."""
  if num_ids <= max(n, tuning.kernel_min_ids):
    return 0
  return 1 << max(1, (2 * n - 1).bit_length())


def bucket_attend(read_ids, write_ids, values, read_valid, write_valid, *, num_ids, direction, normalize,
                  tuning=plans.DEFAULT_TUNING):
  """One call of the kernel (see kernels/anna_cpu.cc): (out at the readers float32, counts int32).

  read_ids, write_ids: (..., n, heads, tables) int32 in [0, num_ids); values: (..., n, heads, dim) at the
  writers (float32 or bfloat16; other dtypes are cast to float32); read_valid, write_valid: (..., n) bool.
  direction 0: every writer counts for every reader; 1: writer j for reader i iff j <= i; 2: iff j >= i.
  normalize: out = sums / counts (0 where none), else raw sums. Tables are indexed or hashed by `hashed_rows`.
  """
  kernel_build.require()
  ids_layout = _ids_layout(read_ids.ndim)
  call = jax.ffi.ffi_call(
      'anna_bucket_attend',
      (jax.ShapeDtypeStruct(values.shape, jnp.float32), jax.ShapeDtypeStruct(values.shape[:-1], jnp.int32)),
      vmap_method='broadcast_all', input_layouts=(ids_layout, ids_layout, None, None, None))
  return call(read_ids.astype(jnp.int32), write_ids.astype(jnp.int32), _float32_or_bfloat16(values),
              read_valid.astype(bool), write_valid.astype(bool), num_ids=int(num_ids),
              slots=hashed_rows(read_ids.shape[-3], num_ids, tuning), direction=int(direction),
              normalize=bool(normalize), group_bytes=int(tuning.group_bytes))


def bucket_ids(q, k, projections, family, block_size=2048):
  """`lsh.bucket_ids` for the CPU plan: hyperplane codes by the kernel, cross-polytope codes by XLA
  block_size tokens at a time."""
  if family == 'hyperplane' and lsh.code_space(projections, family) <= 2**31:  # the kernel packs <= 31 bits
    return hyperplane_codes(q, projections), hyperplane_codes(k, projections), lsh.code_space(projections, family)
  return lsh.bucket_ids(q, k, projections, family, block_size=block_size)


@dataclasses.dataclass(frozen=True)
class BucketWalk:
  """Algorithm 1 by the tables kernel, for `v_linear.attend`: a walk of the writers' buckets by the readers."""
  num_ids: int
  tuning: plans.Tuning = plans.DEFAULT_TUNING

  def attend(self, v, q_ids, k_ids, valid, causal):
    """(float32 output, counts, no extra): zeros (count 0) for padded queries and queries with no collision."""
    out, counts = bucket_attend(q_ids, k_ids, v, valid, valid, num_ids=self.num_ids, direction=int(causal),
                                normalize=True, tuning=self.tuning)
    return out, counts, jnp.zeros((), jnp.int32)

  def sums(self, read_ids, write_ids, values, valid, direction):
    return bucket_attend(read_ids, write_ids, values, valid, valid, num_ids=self.num_ids, direction=direction,
                         normalize=False, tuning=self.tuning)[0]


class SoftmaxLayout(NamedTuple):
  """What `softmax_attend` reads besides arrays (anna_softmax's `route`, see kernels/anna_softmax_cpu.cc)."""
  num_ids: int  # code space of the ids
  key_slots: int  # the padded length the non-causal window starts are clipped to (key_slots - window)
  window: int
  chunk: int
  causal: bool
  uniform: bool  # uniform weights over the collisions, else softmax(q.k * scale)
  scale: float
  tuning: plans.Tuning = plans.DEFAULT_TUNING

  def attributes(self):
    return dict(num_ids=int(self.num_ids), key_slots=int(self.key_slots), window=int(self.window),
                chunk=int(self.chunk), causal=bool(self.causal), uniform=bool(self.uniform),
                scale=np.float32(self.scale), query_major_bytes=int(self.tuning.query_major_bytes),
                key_block_bytes=int(self.tuning.key_block_bytes))


def _softmax_call(name, results, ids_rank, argument_count):
  ids_layout = _ids_layout(ids_rank)
  layouts = [None] * argument_count
  layouts[3] = layouts[4] = ids_layout
  return jax.ffi.ffi_call(name, results, vmap_method='broadcast_all', input_layouts=tuple(layouts))


def _softmax_forward(q, k, v, q_ids, k_ids, valid, layout):
  kernel_build.require()
  results = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct(q.shape[:-1], jnp.float32),
             jax.ShapeDtypeStruct((*q.shape[:-3], q.shape[-2], 2), jnp.float32))
  return _softmax_call('anna_softmax_forward', results, q_ids.ndim, 6)(q, k, v, q_ids, k_ids, valid,
                                                                       **layout.attributes())


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def softmax_attend(q, k, v, q_ids, k_ids, valid, layout):
  """anna_softmax on the CPU: (output (..., n, heads, dim), stats (..., heads, 2): collisions and read pairs).

  q, k, v: (..., n, heads, dim) float32; q_ids, k_ids: (..., n, heads, tables) int32 (`bucket_ids`); valid
  (..., n) bool; layout: SoftmaxLayout. The VJP is the backward kernel: from the output and each query's
  log-sum-exp it recomputes the weights (nothing n x n stored) and returns dq, dk, dv."""
  out, _, stats = _softmax_forward(q, k, v, q_ids, k_ids, valid, layout)
  return out, stats


def _softmax_attend_fwd(q, k, v, q_ids, k_ids, valid, layout):
  out, lse, stats = _softmax_forward(q, k, v, q_ids, k_ids, valid, layout)
  return (out, stats), (q, k, v, q_ids, k_ids, valid, out, lse)


def _softmax_attend_bwd(layout, residuals, cotangents):
  q, k, v, q_ids, k_ids, valid, out, lse = residuals
  results = tuple(jax.ShapeDtypeStruct(q.shape, jnp.float32) for _ in range(3))
  dq, dk, dv = _softmax_call('anna_softmax_backward', results, q_ids.ndim, 9)(
      q, k, v, q_ids, k_ids, valid, out, lse, cotangents[0].astype(jnp.float32), **layout.attributes())
  return dq, dk, dv, None, None, None


softmax_attend.defvjp(_softmax_attend_fwd, _softmax_attend_bwd)
