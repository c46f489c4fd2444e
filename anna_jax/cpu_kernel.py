"""The C++ kernels of the CPU loop plans of `anna` (kernels/anna_cpu.cc) and `anna_softmax`
(kernels/anna_softmax_cpu.cc): built on first use into one library, registered with XLA.

Algorithm 1 is hashing, then scatter-adds and gathers of value rows. XLA's CPU scatter and gather cost tens of
nanoseconds per row, several times the memory they touch, and its hashing makes several passes over the
(n, heads, tables * hashes) projections; two plain loops do better (n = 16K, H = 8, l = 8, z = 9 on this
project's 2-core VM: the whole forward 118-139 ms with XLA's loops, 28-57 ms with these, across runs):
- `hyperplane_codes`: lsh's hyperplane codes, a register-tiled product with the bits packed on the spot;
- `bucket_attend`: per (batch row, head), the bucket tables of all l hash tables built in one walk over the
  keys and read in one walk over the queries (causal: one walk, each key added before its query reads).
  Code spaces up to max(n, KERNEL_MIN_IDS) index a table's rows directly; larger ones (many hashes per table,
  as exact matches at large n need) address 2n-4n rows by an open-addressed hash of the code, exact on that
  hash's collisions (each row remembers its code), so any z costs what z = log2 n costs.
And `anna_softmax`'s CPU plan (kernels/anna_softmax_cpu.cc): `softmax_attend`, its forward and backward kernels
under a custom VJP (same pairs as its XLA plans; the backward keeps only the output and each query's log-sum-exp).
All are XLA FFI custom calls: they run inside the jitted program, on XLA's CPU thread pool. This module is
the one place that decides whether they run (`serves`), and holds `attend` and `softmax_attend`, the kernels
under their custom VJPs.

Built once per machine with the system C++ compiler ($CXX, default c++) against jaxlib's bundled XLA FFI
headers, into $ANNA_JAX_CACHE (default ~/.cache/anna_jax), keyed by the source, the flags, the compiler, jaxlib
and the CPU, so a cluster's nodes sharing a home directory never load each other's -march=native builds. Without
a C++ compiler `available()` is False (and says why once): `anna` then runs its accelerator plan, which is
pure XLA and gives the same outputs, only slower on CPU. That fallback is for a machine without a compiler
only: a kernel source missing from the installed package, or a compiler that fails on it, raises
`KernelBuildError` (a broken install must not silently run the slow plan).
"""

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from absl import logging

from anna_jax import lsh

TARGETS = {'anna_bucket_attend': 'AnnaBucketAttend', 'anna_hyperplane_codes': 'AnnaHyperplaneCodes',
           'anna_softmax_forward': 'AnnaSoftmaxForward', 'anna_softmax_backward': 'AnnaSoftmaxBackward'}
_KERNELS = os.path.join(os.path.dirname(__file__), 'kernels')
SOURCES = tuple(os.path.join(_KERNELS, name) for name in ('anna_cpu.cc', 'anna_softmax_cpu.cc'))
HEADERS = (os.path.join(_KERNELS, 'kernel_common.h'),)
# Bucket tables one (batch row, head) task builds together: at most this many bytes of sums and counts per
# thread. At n = 1M (z = 15: 8.5 MB per table) all 8 tables fit: one pass over v and out. Fewer tables per
# pass, each small enough for the caches, measured slower there (the kernel alone, one run each: 9.9 s with 1
# table per pass, 5.7 s with 7 + 1, 4.7 s with all 8).
GROUP_BYTES = 2**28
_FLAGS = ('-O3', '-std=c++17', '-shared', '-fPIC')
_NATIVE = ('-march=native',)


def _cpu_signature():
  """What the compiled code may depend on: the CPU model and its flags (Linux), else the machine type."""
  try:
    with open('/proc/cpuinfo') as f:
      lines = [line for line in f if line.startswith(('model name', 'flags', 'Features'))]
    return ''.join(sorted(set(lines)))
  except OSError:
    return platform.processor() or platform.machine()


def _cache_dir():
  path = os.environ.get('ANNA_JAX_CACHE') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'anna_jax')
  try:
    os.makedirs(path, exist_ok=True)
    if os.access(path, os.W_OK):
      return path
  except OSError:
    pass
  return tempfile.mkdtemp(prefix='anna_jax_')


def _compile(compiler, flags, output):
  """Compiles SOURCES to `output` (atomically: a half-written library is never loaded); the error, or None."""
  partial = f'{output}.{os.getpid()}.tmp'
  command = [compiler, *flags, f'-I{jax.ffi.include_dir()}', *SOURCES, '-o', partial]
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
  except (OSError, subprocess.SubprocessError) as e:
    return f'{compiler}: {e}'
  if result.returncode != 0:
    errors = [line for line in result.stderr.splitlines() if 'error' in line] or [f'{compiler} failed']
    return errors[0].strip()
  os.replace(partial, output)
  return None


class NoCompiler(RuntimeError):
  """This machine has no C++ compiler: the kernels' callers fall back to the XLA plans."""


class KernelBuildError(RuntimeError):
  """A kernel source is missing or does not compile: an error, never a silent fallback."""


def _build():
  """Path of the built library (compiling it if this machine has none yet); raises NoCompiler or
  KernelBuildError if it cannot."""
  source = b''
  for path in SOURCES + HEADERS:
    try:
      with open(path, 'rb') as f:
        source += f.read()
    except OSError as e:
      raise KernelBuildError(f'the anna CPU kernel source {path} is missing from the installed package ({e}); '
                             f'reinstall anna-jax') from None
  compiler = os.environ.get('CXX', 'c++')
  try:
    version = subprocess.run([compiler, '--version'], capture_output=True, text=True, timeout=60).stdout
  except (OSError, subprocess.SubprocessError) as e:
    raise NoCompiler(f'no C++ compiler ({compiler}: {e})') from None
  errors, cache = [], _cache_dir()
  for flags in (_FLAGS + _NATIVE, _FLAGS):  # -march=native where the compiler knows it
    key = hashlib.sha256(repr((source, flags, version, jaxlib.__version__, _cpu_signature())).encode())
    output = os.path.join(cache, f'anna_cpu_{key.hexdigest()[:16]}.so')
    if os.path.exists(output):
      return output
    error = _compile(compiler, flags, output)
    if error is None:
      return output
    errors.append(error)
  raise KernelBuildError(f'could not compile the anna CPU kernels in {_KERNELS} with {compiler}: {errors[-1]} '
                         f"(loop_plan='accelerator' runs without them)")


@functools.cache
def available():
  """Builds and registers the kernel once per process; False (logged once) on a machine without a C++
  compiler; KernelBuildError where a source is missing or does not compile."""
  try:
    path = _build()
  except NoCompiler as e:
    logging.warning('anna: no CPU kernel (%s); using the accelerator loop plan, slower on CPU', e)
    return False
  try:
    library = ctypes.cdll.LoadLibrary(path)
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')
  except (RuntimeError, OSError) as e:
    logging.warning('anna: no CPU kernel (%s); using the accelerator loop plan, slower on CPU', e)
    return False
  return True


def _require():
  if not available():
    raise RuntimeError('the anna CPU kernel could not be built (see the warning above)')


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
  _require()
  shape = jax.ShapeDtypeStruct((*x.shape[:-1], projections.shape[1]), jnp.int32)
  # Under vmap one call per element: the projections may not gain x's leading axes.
  call = jax.ffi.ffi_call('anna_hyperplane_codes', shape, vmap_method='sequential',
                          output_layouts=_ids_layout(x.ndim))
  # Integer codes: no gradient, and none asked of the FFI call.
  x, projections = _float32_or_bfloat16(x), projections.astype(jnp.float32)
  return call(jax.lax.stop_gradient(x), jax.lax.stop_gradient(projections))


def hashed_rows(n, num_ids):
  """Rows per table of the kernel's hashed tables for this code space: 0 (rows indexed by id) up to
  max(n, KERNEL_MIN_IDS) ids, else the power of two in [2n, 4n)."""
  if num_ids <= max(n, KERNEL_MIN_IDS):
    return 0
  return 1 << max(1, (2 * n - 1).bit_length())


def bucket_attend(read_ids, write_ids, values, read_valid, write_valid, *, num_ids, direction, normalize):
  """One call of the kernel (see kernels/anna_cpu.cc): (out at the readers float32, counts int32).

  read_ids, write_ids: (..., n, heads, tables) int32 in [0, num_ids); values: (..., n, heads, dim) at the
  writers (float32 or bfloat16; other dtypes are cast to float32); read_valid, write_valid: (..., n) bool.
  direction 0: every writer counts for every reader; 1: writer j for reader i iff j <= i; 2: iff j >= i.
  normalize: out = sums / counts (0 where none), else raw sums. Tables are indexed or hashed by `hashed_rows`.
  """
  _require()
  ids_layout = _ids_layout(read_ids.ndim)
  call = jax.ffi.ffi_call(
      'anna_bucket_attend',
      (jax.ShapeDtypeStruct(values.shape, jnp.float32), jax.ShapeDtypeStruct(values.shape[:-1], jnp.int32)),
      vmap_method='broadcast_all', input_layouts=(ids_layout, ids_layout, None, None, None))
  return call(read_ids.astype(jnp.int32), write_ids.astype(jnp.int32), _float32_or_bfloat16(values),
              read_valid.astype(bool), write_valid.astype(bool), num_ids=int(num_ids),
              slots=hashed_rows(read_ids.shape[-3], num_ids), direction=int(direction),
              normalize=bool(normalize), group_bytes=int(GROUP_BYTES))


# The tables kernel indexes rows by id for code spaces up to this many buckets, or up to n (its tables are
# zeroed per (batch, head), which must not cost more than the keys it adds); larger ones it hashes.
KERNEL_MIN_IDS = 4096


def serves(plan):
  """Whether `anna` and `anna_softmax` run these kernels: the 'cpu' plan (resolved) and a built library.
  Otherwise `anna` runs its scan plan and `anna_softmax` its XLA loops (pure XLA, same outputs)."""
  return plan == 'cpu' and available()


def bucket_ids(q, k, projections, family, block_size=2048):
  """`lsh.bucket_ids` for the CPU plan: hyperplane codes by the kernel, cross-polytope codes by XLA
  block_size tokens at a time."""
  if family == 'hyperplane' and lsh.code_space(projections, family) <= 2**31:  # the kernel packs <= 31 bits
    return hyperplane_codes(q, projections), hyperplane_codes(k, projections), lsh.code_space(projections, family)
  return lsh.bucket_ids(q, k, projections, family, block_size=block_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def attend(v, q_ids, k_ids, valid, num_ids, causal, v_dtype):
  """(float32 output, counts) of Algorithm 1 from bucket ids; zeros (count 0) for padded queries and queries
  with no collision. Its VJP in v is the same kernel, keys and queries swapped: dv_j = sum_i c_ij g_i / C_i, a
  key reading the buckets the queries wrote g_i / C_i into. v_dtype is v.dtype (the VJP returns it)."""
  del v_dtype
  return bucket_attend(q_ids, k_ids, v, valid, valid, num_ids=num_ids, direction=int(causal), normalize=True)


def _attend_fwd(v, q_ids, k_ids, valid, num_ids, causal, v_dtype):
  out, counts = attend(v, q_ids, k_ids, valid, num_ids, causal, v_dtype)
  return (out, counts), (q_ids, k_ids, valid, counts)


def _attend_bwd(num_ids, causal, v_dtype, residuals, cotangents):
  q_ids, k_ids, valid, counts = residuals
  per_query = cotangents[0] / jnp.maximum(counts, 1)[..., None]  # zero-count and padded queries output 0
  dv, _ = bucket_attend(k_ids, q_ids, per_query, valid, valid, num_ids=num_ids, direction=2 if causal else 0,
                        normalize=False)
  return dv.astype(v_dtype), None, None, None


attend.defvjp(_attend_fwd, _attend_bwd)


class SoftmaxLayout(NamedTuple):
  """What `softmax_attend` reads besides arrays (anna_softmax's `route`, see kernels/anna_softmax_cpu.cc)."""
  num_ids: int  # code space of the ids
  key_slots: int  # the padded length the non-causal window starts are clipped to (key_slots - window)
  window: int
  chunk: int
  causal: bool
  uniform: bool  # uniform weights over the collisions, else softmax(q.k * scale)
  scale: float

  def attributes(self):
    return dict(num_ids=int(self.num_ids), key_slots=int(self.key_slots), window=int(self.window),
                chunk=int(self.chunk), causal=bool(self.causal), uniform=bool(self.uniform),
                scale=np.float32(self.scale), query_major_bytes=int(QUERY_MAJOR_BYTES),
                key_block_bytes=int(KEY_BLOCK_BYTES))


# The softmax kernels walk a (batch row, head) query by query while its k and v rows take at most this many bytes
# (each block of keys is then read once per query that has keys in it), else table by table over key rows
# gathered in sorted order (32K train: 2.31 s query-major, 3.29 s table-major; 64K: 8.96 / 6.99 s).
QUERY_MAJOR_BYTES = 2**24
# The query-major walks visit a head's keys in blocks whose packed rows (forward: k, v; backward: k, v, dk, dv)
# take at most this many bytes, so a block stays in cache.
KEY_BLOCK_BYTES = 2**22


def _softmax_call(name, results, ids_rank, argument_count):
  ids_layout = _ids_layout(ids_rank)
  layouts = [None] * argument_count
  layouts[3] = layouts[4] = ids_layout
  return jax.ffi.ffi_call(name, results, vmap_method='broadcast_all', input_layouts=tuple(layouts))


def _softmax_forward(q, k, v, q_ids, k_ids, valid, layout):
  _require()
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
