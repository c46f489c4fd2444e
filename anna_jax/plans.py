"""Loop plans: how every hashing kind (`anna`, `anna_softmax`, `reformer`, sequence-parallel) lays out its loops,
and the tuning of the CPU ones.

Plans (a config's `loop_plan`), each naming one path:
- 'accelerator' (GPU/TPU): every (batch, head) row and every chunk batched into a few large kernels (vmap); the
  only loop is the scan over hash tables (rounds).
- 'cpu_xla': cache-sized XLA loops over rows and chunks (`lax.map` with a batch size from the Tuning's budgets).
- 'cpu_kernel': the C++ kernels of `anna_jax.cpu_kernel` (`anna`, `anna_softmax`; it is an error where they
  cannot be built). Reformer has no kernel: its 'cpu_kernel' runs its 'cpu_xla' loops.
- 'auto': 'accelerator' off CPU; on CPU 'cpu_kernel' where the kernels build, else 'cpu_xla' (no compiler).
Every plan computes the same outputs; tests compare them and export the accelerator plan for CUDA. Each call
site logs the plan it resolved to, once per process.

Tuning: the block sizes and byte budgets of the CPU paths, one frozen object passed to the attention functions
(`tuning=`), as Pallas kernels take their block sizes; the defaults are `DEFAULT_TUNING`.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from absl import logging

from anna_jax import kernel_build

LOOP_PLANS = ('auto', 'accelerator', 'cpu_xla', 'cpu_kernel')


@dataclasses.dataclass(frozen=True)
class Tuning:
  """Block sizes and budgets of the CPU paths. None changes a number a plan computes; only speed and memory."""
  # XLA loops (cpu_xla): sized so one step's working set stays in cache (no number measured behind the values).
  token_budget: int = 1 << 13  # tokens per step of a loop over (batch, head) rows
  pair_budget: int = 1 << 16  # (query, key) pairs per step of a loop over chunks: the score tiles
  # anna's kernel: bucket tables one (batch row, head) task builds together, at most this many bytes of sums and
  # counts per thread. At n = 1M (z = 15: 8.5 MB per table) all 8 tables fit: one pass over v and out; fewer
  # tables per pass measured slower there (the kernel alone, one run each: 9.9 s with 1 table per pass, 5.7 s
  # with 7 + 1, 4.7 s with all 8).
  group_bytes: int = 2**28
  # anna's kernel indexes a table's rows by id for code spaces up to max(n, kernel_min_ids) (its tables are
  # zeroed per (batch, head), which must not cost more than the keys it adds); larger ones it hashes.
  kernel_min_ids: int = 4096
  # anna_softmax's kernels walk a (batch row, head) query by query while its k and v rows take at most this many
  # bytes, else table by table over key rows gathered in sorted order (32K train: 2.31 s query-major, 3.29 s
  # table-major; 64K: 8.96 / 6.99 s); the query-major walks visit keys in blocks of at most key_block_bytes.
  query_major_bytes: int = 2**24
  key_block_bytes: int = 2**22

  def __post_init__(self):
    negative = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) < 0}
    if negative:
      raise ValueError(f'tuning values must be >= 0, got {negative}')

  def rows_per_step(self, n):
    """(batch, head) rows one CPU loop step takes at length n."""
    return max(1, self.token_budget // n)

  def chunks_per_step(self, chunk, window):
    """Query chunks one CPU loop step takes, each reading `window` keys."""
    return max(1, self.pair_budget // (chunk * window))


DEFAULT_TUNING = Tuning()


@dataclasses.dataclass(frozen=True)
class Plan:
  """A resolved plan: its path ('accelerator', 'cpu_xla' or 'cpu_kernel') and the CPU paths' tuning."""
  path: str
  tuning: Tuning = DEFAULT_TUNING

  @property
  def kernel(self):
    return self.path == 'cpu_kernel'

  @property
  def accelerator(self):
    return self.path == 'accelerator'


def check(plan):
  if plan not in LOOP_PLANS:
    raise ValueError(f'loop_plan must be one of {LOOP_PLANS}, got {plan!r}')


@functools.cache
def _log_once(site, requested, path):
  logging.info('%s: loop plan %r runs %r', site, requested, path)


def resolve(plan, site, tuning=None, has_kernel=True):
  """The Plan that `plan` (a config's loop_plan) runs at call site `site` ('anna', ...), logged once per site.
  has_kernel: whether the kind has C++ kernels (else 'cpu_kernel' runs 'cpu_xla')."""
  check(plan)
  path = plan
  if plan == 'auto':
    if jax.default_backend() != 'cpu':
      path = 'accelerator'
    else:
      path = 'cpu_kernel' if has_kernel and kernel_build.available() else 'cpu_xla'
  elif plan == 'cpu_kernel' and not has_kernel:
    path = 'cpu_xla'
  elif plan == 'cpu_kernel':
    kernel_build.require()
  _log_once(site, plan, path)
  return Plan(path, tuning or DEFAULT_TUNING)


def map_rows(fn, xs, plan, batch_size=None):
  """fn over the leading axis of xs: a cache-sized loop on CPU, one batched (vmapped) kernel on accelerators."""
  if plan.accelerator:
    return jax.vmap(fn)(xs)
  # A batch of one would give every gather in the loop a unit batch dimension.
  return jax.lax.map(fn, xs, batch_size=batch_size if batch_size and batch_size > 1 else None)


def searchsorted(plan):
  """jnp.searchsorted for the plan: on accelerators by sorting (the default binary search is a while loop)."""
  return functools.partial(jnp.searchsorted, method='sort' if plan.accelerator else 'scan')
