"""Measuring one (kind, mode, length) point: compile, time, memory, FLOPs, and quality outside the timed calls."""

import ctypes
import dataclasses
import functools
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from anna_jax import oracle
from anna_jax.tooling import compiled_bytes, write_atomic
from benchmarks.kinds import analytic_flops, keys_of, make_kind, registration

MODES = ('forward', 'train')  # train = forward + backward (gradients of q, k, v)


@dataclasses.dataclass
class Record:
  kind: str
  mode: str
  n: int
  status: str  # ok, over_memory, oom, over_budget, unsupported, error
  compile_seconds: float = float('nan')
  median_seconds: float = float('nan')
  min_seconds: float = float('nan')
  repeats: int = 0
  peak_bytes: int = 0
  analytic_flops: float = float('nan')  # see kinds.analytic_flops(); train = 3x forward
  xla_flops: float = float('nan')  # cost_analysis, only for kinds without loops
  gflops_per_second: float = float('nan')
  peak_fraction: float = float('nan')  # of the matmul peak measured at start
  dropped_fraction: float = float('nan')
  relative_error: float = float('nan')
  no_collision_fraction: float = float('nan')
  mean_collisions: float = float('nan')
  setting: str = ''
  note: str = ''


def make_step(fn, mode):
  if mode == 'forward':
    return jax.jit(lambda q, k, v: fn(q, k, v)[0])

  def loss(q, k, v):
    return jnp.sum(fn(q, k, v)[0].astype(jnp.float32) ** 2)

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def relative_error(kind, q, k, v, out, positions, allowed, causal=False):
  """||out - exact|| / ||exact|| on the sampled queries; exact = softmax(q.k / sqrt(d)) over the kind's allowed
  pairs (`anna_jax.oracle`; every pair, or every past pair when causal, for kinds without hashing)."""
  n = q.shape[1]
  if allowed is not None:
    mask = allowed(positions, q, k)
  else:
    mask = jnp.ones((q.shape[0], q.shape[2], positions.shape[0], n), bool)
    if causal:
      mask &= jnp.arange(n)[None, :] <= positions[:, None]
  exact = oracle.softmax_over(q, keys_of(kind, q, k), v, mask, positions)
  got = out[:, positions].astype(jnp.float32)
  return jnp.linalg.norm(got - exact) / jnp.maximum(jnp.linalg.norm(exact), 1e-30)


def matmul_peak(dtype):
  """GFLOP/s of one large jitted matmul on the default device (median of 3)."""
  size = 4096 if jax.default_backend() == 'cpu' else 16384
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  jax.block_until_ready(f(a, a))
  return 2.0 * size**3 / median_seconds(f, a, a, repeats=3) / 1e9


def median_seconds(fn, *args, repeats):
  """Median wall time of `repeats` calls of an already compiled `fn`, each waited for."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def keep_freed_memory():
  """Tells glibc's malloc to reuse freed memory rather than unmap it (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD =
  1 GiB); True if it took effect.

  XLA's CPU client allocates every output and temporary buffer with malloc, and glibc serves each one over 32 MiB
  by a fresh mmap: every 4 KiB page then faults on first touch. On this project's VM a fault costs about 3 us
  (a 32 MiB output: 8,192 faults, about 25 ms), as much as anna's own work at n = 16K. Reusing freed memory
  charges the kinds for their work, not for this VM's page faults. Every kind runs under the same setting; the
  report records it.
  """
  try:
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameters
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))
  except (OSError, AttributeError):  # not glibc
    return False


def device_name():
  """The accelerator's kind, or on CPU the processor model and core count (jax only says 'cpu')."""
  device = jax.devices()[0]
  if device.platform != 'cpu':
    return device.device_kind
  model = platform.processor() or 'cpu'
  try:
    with open('/proc/cpuinfo') as cpuinfo:
      model = next(line.split(':', 1)[1].strip() for line in cpuinfo if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return f'{model}, {os.cpu_count()} cores'


def memory_budget(budget_gb=0.0):
  """Bytes a point may use: budget_gb, or 85% of the device's memory (host RAM on CPU)."""
  if budget_gb:
    return budget_gb * 2**30
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return 0.85 * stats['bytes_limit']
  return 0.85 * os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def first_line(error):
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def measure(s, kind, mode, n, budget, peak_gflops, trace_dir=None):
  """One point under Settings `s`: a Record whose status says whether (and why not) it ran."""
  dtype = jnp.bfloat16 if kind == 'full_cudnn' else jnp.dtype(s.dtype)
  keys = jax.random.split(jax.random.key(s.seed), 5)
  shape = (s.batch, n, s.heads, s.head_dim)
  spec = make_kind(kind, n, keys[3], s)
  step = make_step(spec.fn, mode)
  record = Record(kind, mode, n, 'ok', setting=spec.setting)
  record.analytic_flops = spec.flops * (3.0 if mode == 'train' else 1.0)
  abstract = [jax.ShapeDtypeStruct(shape, dtype)] * 3
  try:
    t0 = time.perf_counter()
    compiled = step.lower(*abstract).compile()
    record.compile_seconds = time.perf_counter() - t0
  except Exception as e:  # noqa: BLE001 -- a kind the backend cannot compile is a result, not a crash
    record.status, record.note = ('oom' if 'RESOURCE_EXHAUSTED' in str(e) else 'unsupported'), first_line(e)
    return record
  planned = compiled_bytes(compiled)
  if planned is not None:
    record.peak_bytes = planned
  if registration(kind).loop_free:  # no loops: XLA's count is right
    record.xla_flops = compiled_flops(compiled)
  if record.peak_bytes > budget:
    record.status = 'over_memory'
    return record
  try:
    q, k, v = (jax.random.normal(key, shape, dtype) for key in keys[:3])
    for _ in range(s.warmup):
      jax.block_until_ready(compiled(q, k, v))
    times = []
    for _ in range(s.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(q, k, v))
      times.append(time.perf_counter() - t0)
      if times[-1] > s.max_call_seconds:
        break  # one slow call is enough to place this point
    if trace_dir:
      with jax.profiler.trace(os.path.join(trace_dir, f'{kind}-{mode}-{n}')):
        jax.block_until_ready(compiled(q, k, v))
    counts_pairs = 'attended_pairs' in jax.eval_shape(spec.fn, q, k, v)[1]
    if mode == 'forward' or counts_pairs:  # one forward with stats, outside the timed calls
      out, stats = jax.jit(spec.fn)(q, k, v)
      if mode == 'forward':
        quality(record, spec, s, q, k, v, out, stats, keys[4])
      if counts_pairs:  # FLOPs of the pairs the kernels score, counted in this run
        record.analytic_flops = (3.0 if mode == 'train' else 1.0) * analytic_flops(
            spec.config, n, s.batch, s.heads, s.head_dim, attended_pairs=float(stats['attended_pairs']))
  except Exception as e:  # noqa: BLE001 -- out of memory at run time is recorded and the sweep goes on
    record.status, record.note = ('oom' if 'RESOURCE_EXHAUSTED' in str(e) else 'error'), first_line(e)
    return record
  record.median_seconds, record.min_seconds, record.repeats = statistics.median(times), min(times), len(times)
  record.gflops_per_second = record.analytic_flops / record.median_seconds / 1e9
  record.peak_fraction = record.gflops_per_second / peak_gflops
  return record


def quality(record, spec, s, q, k, v, out, stats, key):
  """The kind's stats and, where judged, its relative error on `out` = spec.fn(q, k, v)'s output."""
  for name in ('dropped_fraction', 'no_collision_fraction', 'mean_collisions'):
    if name in stats:
      setattr(record, name, float(stats[name]))
  if registration(record.kind).judged:  # relative error against exact softmax over its allowed pairs
    n = q.shape[1]
    positions = jnp.sort(jax.random.choice(key, n, (min(s.quality_queries, n),), replace=False))
    error = jax.jit(functools.partial(relative_error, record.kind, allowed=spec.allowed, causal=s.causal))
    record.relative_error = float(error(q, k, v, out, positions))


def compiled_train_step(config, num_devices=None, microbatches=None):
  """(Trainer, its train step compiled for repeated calls on the same state, the call's args) of a run config,
  with train.num_devices / train.microbatches overridden where given. Not the Trainer's donating step: timings
  step the same state again and again."""
  from experiments import experiment, train  # noqa: PLC0415 (the attention benchmarks need no experiments)
  c = config.copy_and_resolve_references()
  if num_devices is not None:
    c.train.num_devices = num_devices
  if microbatches is not None:
    c.train.microbatches = microbatches
  trainer = train.Trainer(experiment.build(c))
  args = (trainer.initial_state, jnp.int32(0), trainer.train_set)
  with jax.set_mesh(trainer.mesh):
    return trainer, jax.jit(trainer._train_step).lower(*args).compile(), args


def plain_step_flops(config, compiled_steps=()):
  """XLA's FLOPs of a run config's plain train step (one device, one microbatch: XLA counts a scan's body once),
  read from one of `compiled_steps` ((Trainer, compiled step) pairs) that is plain, else compiled for it."""
  for trainer, compiled in compiled_steps:
    if trainer.mesh.size == 1 and trainer.microbatches == 1:
      return compiled_flops(compiled)
  return compiled_flops(compiled_train_step(config, num_devices=1, microbatches=1)[1])


def compiled_flops(compiled):
  """XLA's FLOP count of a compiled computation (a loop's body counted once); nan if it has none."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', float('nan')))


def print_report(text, path=''):
  """Prints a markdown report and, given a path, writes it there (atomically, its folder made if need be)."""
  print(text)
  if path:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    write_atomic(path, text)
