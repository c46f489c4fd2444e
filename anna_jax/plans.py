"""Loop plans: how every hashing kind (`anna`, `anna_softmax`, `reformer`, sequence-parallel) lays out its loops.

- 'accelerator' (GPU/TPU): every (batch, head) row and every chunk batched into a few large kernels (vmap); the
  only loop is the scan over hash tables (rounds).
- 'cpu': cache-sized loops over rows and chunks (`lax.map` with a batch size from the budgets below), and for
  `anna` the C++ kernels of `anna_jax.cpu_kernel`.
- 'auto': by jax.default_backend().
Both plans compute the same outputs; tests compare them and export the accelerator plan for CUDA.
"""

import functools

import jax
import jax.numpy as jnp

LOOP_PLANS = ('auto', 'cpu', 'accelerator')
# CPU budgets: sized so one step's working set stays in cache (no number measured behind the exact values).
TOKEN_BUDGET = 1 << 13  # tokens per step of a loop over (batch, head) rows
PAIR_BUDGET = 1 << 16  # (query, key) pairs per step of a loop over chunks: the score tiles


def check(plan):
  if plan not in LOOP_PLANS:
    raise ValueError(f'loop_plan must be one of {LOOP_PLANS}, got {plan!r}')


def resolve(plan):
  """'cpu' or 'accelerator'; 'auto' follows the default backend."""
  check(plan)
  if plan == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'accelerator'
  return plan


def rows_per_step(n):
  """(batch, head) rows one CPU loop step takes at length n."""
  return max(1, TOKEN_BUDGET // n)


def chunks_per_step(chunk, window):
  """Query chunks one CPU loop step takes, each reading `window` keys."""
  return max(1, PAIR_BUDGET // (chunk * window))


def map_rows(fn, xs, plan, batch_size=None):
  """fn over the leading axis of xs: a cache-sized loop on CPU, one batched (vmapped) kernel on accelerators."""
  if plan == 'accelerator':
    return jax.vmap(fn)(xs)
  # A batch of one would give every gather in the loop a unit batch dimension.
  return jax.lax.map(fn, xs, batch_size=batch_size if batch_size and batch_size > 1 else None)


def searchsorted(plan):
  """jnp.searchsorted for the plan: on accelerators by sorting (the default binary search is a while loop)."""
  return functools.partial(jnp.searchsorted, method='sort' if plan == 'accelerator' else 'scan')
