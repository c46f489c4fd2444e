"""How attention cost grows with sequence length, with quality beside speed, in one run.

  python -m benchmarks.scaling --outdir=results/scaling                         # CPU default: 1K..256K
  python -m benchmarks.scaling --lengths=1024,4096 --kinds=anna,full_blockwise  # a subset

Kinds: `anna` (the paper's Algorithm 1), `anna_softmax`, `reformer`, `lowrank` (approximate); `full`
(jax.nn.dot_product_attention), `full_blockwise` (flash-style, O(n) memory), `full_cudnn` (GPU) (exact).
Ratios are taken against the STRONGEST exact baseline measured at that length (the fastest of the exact kinds),
and only between numbers of this run.

For every kind, mode (forward; train = forward + backward) and length it records compile time, steady-state
time (median of --repeats after a warm-up, block_until_ready), peak memory (compiled memory_analysis: arguments
+ outputs + temporaries), analytic FLOPs (formulas in `analytic_flops`), achieved GFLOP/s and its fraction of
the device's matmul peak (measured at start), XLA's cost_analysis FLOPs where it is right (kinds without
loops: it counts a loop body once), and quality, measured outside the timed calls:
  - anna: the fraction of queries with no collision and the mean collisions per query;
  - anna_softmax, reformer: the dropped fraction, and the relative error of the output against exact attention
    over the same allowed pairs (union of same-bucket pairs), on --quality_queries sampled queries (no n x n);
  - lowrank, full_blockwise: the relative error against exact softmax attention on the same sampled queries.
Sizes predicted to exceed memory, or following one that ran past --max_call_seconds, are recorded as such and
the run goes on. Writes scaling.csv, scaling.json, report.md, scaling.png (time vs n; quality vs time) and
TensorBoard scalars to --outdir.
"""

import csv
import ctypes
import dataclasses
import functools
import io
import json
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from anna_jax import lsh
from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.anna_softmax import ANNASoftmaxConfig, anna_softmax_attention
from anna_jax.baselines import draw_random_features, full_attention, full_blockwise_attention, lowrank_attention
from anna_jax.reformer import ReformerConfig, bucket_codes, draw_rotations, reformer_attention
from experiments import cli
from experiments.files import write_atomic
from experiments.summaries import SummaryWriter

KINDS = ('anna', 'anna_softmax', 'reformer', 'lowrank', 'full', 'full_blockwise', 'full_cudnn')
EXACT = ('full', 'full_blockwise', 'full_cudnn')
CPU_KINDS = ('anna', 'anna_softmax', 'reformer', 'lowrank', 'full', 'full_blockwise')
MODES = ('forward', 'train')  # train = forward + backward (gradients of q, k, v)
CPU_LENGTHS = tuple(2**p for p in range(10, 19))  # 1K .. 256K
ACCELERATOR_LENGTHS = tuple(2**p for p in range(10, 21))  # 1K .. 1M

_KINDS = flags.DEFINE_list('kinds', [], f'Attention kinds, from {KINDS}; default: all but full_cudnn on CPU, '
                           'all on GPU.')
_MODES = flags.DEFINE_list('modes', list(MODES), f'From {MODES}.')
_LENGTHS = flags.DEFINE_list('lengths', [], 'Sequence lengths; default 1K..256K on CPU, 1K..1M on GPU/TPU.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size.')
_HEADS = flags.DEFINE_integer('heads', 8, 'Attention heads.')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'Dimension per head.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'q, k, v dtype (full_cudnn always bf16); '
                           'accumulation is float32 either way.')
_TABLES = flags.DEFINE_integer('num_tables', 8, 'anna / anna_softmax hash tables.')
_ANNA_HASHES = flags.DEFINE_integer('anna_hashes', 0, 'anna: hashes per table; 0 = log2(n / 32) (buckets of '
                                    'about 32 keys).')
_HASHES = flags.DEFINE_integer('num_hashes', 0, 'anna_softmax: hashes per table; 0 = log2(n / 8) (buckets of '
                               'about 8 keys, so few overflow the window), capped so the int32 sort key fits.')
_CHUNK = flags.DEFINE_integer('chunk_size', 32, 'anna_softmax: queries per chunk.')
_WINDOW = flags.DEFINE_integer('window', 64, 'anna_softmax: keys per chunk window.')
_ROUNDS = flags.DEFINE_integer('reformer_rounds', 8, 'reformer: hashing rounds (n_hashes).')
_REFORMER_CHUNK = flags.DEFINE_integer('reformer_chunk', 64, 'reformer: chunk size; buckets = n / chunk '
                                       '(mean bucket one chunk, as in the Reformer paper).')
_BLOCK = flags.DEFINE_integer('block', 512, 'full_blockwise: query and key block.')
_FEATURES = flags.DEFINE_integer('lowrank_features', 256, 'Random features of the low-rank baseline.')
_QUALITY_QUERIES = flags.DEFINE_integer('quality_queries', 128, 'Sampled queries for the relative errors.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per point (median reported).')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed calls after compiling.')
_MAX_CALL = flags.DEFINE_float('max_call_seconds', 60.0, 'After a call slower than this, larger lengths of the '
                               'same kind and mode are skipped as over_budget.')
_MEMORY_BUDGET = flags.DEFINE_float('memory_budget_gb', 0.0, 'Skip points whose compiled peak memory exceeds '
                                    'this; 0 = 85% of device memory (host RAM on CPU).')
_OUTDIR = flags.DEFINE_string('outdir', 'results/scaling', 'Where the CSV, JSON, report, plot and TensorBoard go.')
_PROFILE = flags.DEFINE_bool('profile', False, 'Write a jax.profiler trace of one call per point to outdir/trace.')
_SEED = flags.DEFINE_integer('seed', 0, 'Inputs and random projections.')
_CAUSAL = flags.DEFINE_bool('causal', False, 'Causal attention for every kind (query i sees keys j <= i).')
_KEEP_FREED = flags.DEFINE_bool('keep_freed_memory', True, 'CPU, glibc: malloc keeps freed memory for reuse '
                                'instead of returning it to the OS (see keep_freed_memory()); every kind alike.')


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
  analytic_flops: float = float('nan')  # see analytic_flops(); train = 3x forward
  xla_flops: float = float('nan')  # cost_analysis, only for kinds without loops
  gflops_per_second: float = float('nan')
  peak_fraction: float = float('nan')  # of the matmul peak measured at start
  dropped_fraction: float = float('nan')
  relative_error: float = float('nan')
  no_collision_fraction: float = float('nan')
  mean_collisions: float = float('nan')
  setting: str = ''
  note: str = ''


def anna_hashes(n):
  """anna (Algorithm 1): z = log2(n / 32), buckets of about 32 keys."""
  return _ANNA_HASHES.value or max(1, round(math.log2(max(n / 32, 2))))


def anna_softmax_hashes(n, chunk):
  """anna_softmax: buckets of about 8 keys, never past the int32 sort key limit."""
  if _HASHES.value:
    return _HASHES.value
  n_pad = -(-n // chunk) * chunk
  z = max(1, round(math.log2(max(n / 8, 2))))
  while (2**z + 1) * n_pad >= 2**31:
    z -= 1
  return z


def reformer_buckets(n):
  return max(2, 2 * round(n / _REFORMER_CHUNK.value / 2))


@dataclasses.dataclass
class Kind:
  """One kind at one length: fn(q, k, v) -> (out, stats dict); the exact reference its quality is judged by."""
  fn: callable
  setting: str
  flops: float  # analytic forward FLOPs
  allowed: callable = None  # (sampled positions, q, k) -> (batch, heads, samples, n) bool: pairs it approximates


def analytic_flops(kind, n, batch, heads, d, **s):
  """Forward FLOPs (multiply-add = 2), per the algorithm, not per XLA's lowering.

  full*: 4 n^2 d (q.k and p.v); lowrank: 8 n m d (features of q and k, k^T v, q (k^T v)); anna: 4 n d z l
  (hashing q and k) + 2 n d l (scatter-add and gather); anna_softmax: 4 n d z l + 4 n W d l (q.k and p.v over
  windows of W keys); reformer: 2 n d (B / 2) r (hashing) + 8 n c d r (chunks of c against 2c keys).
  """
  rows = batch * heads
  if kind in EXACT:
    return rows * 4.0 * n * n * d
  if kind == 'lowrank':
    return rows * 8.0 * n * s['features'] * d
  if kind == 'anna':
    return rows * (4.0 * n * d * s['z'] * s['tables'] + 2.0 * n * d * s['tables'])
  if kind == 'anna_softmax':
    return rows * (4.0 * n * d * s['z'] * s['tables'] + 4.0 * n * s['window'] * d * s['tables'])
  return rows * (2.0 * n * d * s['buckets'] / 2 * s['rounds'] + 8.0 * n * s['chunk'] * d * s['rounds'])


def make_kind(kind, n, key):
  batch, heads, d = _BATCH.value, _HEADS.value, _HEAD_DIM.value
  flops = functools.partial(analytic_flops, kind, n, batch, heads, d)
  if kind == 'anna':
    config = ANNAConfig(num_tables=_TABLES.value, num_hashes=anna_hashes(n))
    projections = draw_projections(key, heads, d, config)

    def anna(q, k, v):
      out, stats = anna_attention(q, k, v, projections, config, causal=_CAUSAL.value)
      return out, stats._asdict()

    return Kind(anna, f'l={config.num_tables} z={config.num_hashes}',
                flops(z=config.num_hashes, tables=config.num_tables))
  if kind == 'anna_softmax':
    config = ANNASoftmaxConfig(num_tables=_TABLES.value, num_hashes=anna_softmax_hashes(n, _CHUNK.value),
                               chunk_size=_CHUNK.value, window=_WINDOW.value)
    projections = draw_projections(key, heads, d, config)

    def anna_softmax(q, k, v):
      out, stats = anna_softmax_attention(q, k, v, projections, config, causal=_CAUSAL.value)
      return out, {'dropped_fraction': stats.dropped_fraction}

    def allowed(positions, q, k):
      codes_q = lsh.hash_codes(q[:, positions], projections, 'hyperplane')  # (batch, heads, tables, samples)
      codes_k = lsh.hash_codes(k, projections, 'hyperplane')
      return jnp.any(codes_q[..., :, None] == codes_k[..., None, :], axis=2)

    return Kind(anna_softmax, f'l={config.num_tables} z={config.num_hashes} chunk={config.chunk_size} '
                f'window={config.window}', flops(z=config.num_hashes, tables=config.num_tables,
                                                 window=config.window), allowed)
  if kind == 'reformer':
    config = ReformerConfig(num_rounds=_ROUNDS.value, num_buckets=reformer_buckets(n), chunk_size=_REFORMER_CHUNK.value)
    rotations = draw_rotations(key, heads, d, config)

    def reformer(q, k, v):
      out, stats = reformer_attention(q, k, v, rotations, config, causal=_CAUSAL.value)
      return out, {'dropped_fraction': stats.dropped_fraction}

    def allowed(positions, q, k):
      del k  # shared QK
      codes = bucket_codes(q, rotations)  # (batch, heads, rounds, n)
      same = jnp.any(codes[..., positions][..., :, None] == codes[..., None, :], axis=2)
      not_self = positions[:, None] != jnp.arange(n)[None, :]
      return same & not_self

    return Kind(reformer, f'rounds={config.num_rounds} buckets={config.num_buckets} chunk={config.chunk_size}',
                flops(buckets=config.num_buckets, rounds=config.num_rounds, chunk=config.chunk_size), allowed)
  if kind == 'lowrank':
    features = draw_random_features(key, heads, d, _FEATURES.value)
    return Kind(lambda q, k, v: (lowrank_attention(q, k, v, features, causal=_CAUSAL.value), {}),
                f'features={_FEATURES.value}',
                flops(features=_FEATURES.value))
  if kind == 'full_blockwise':
    return Kind(lambda q, k, v: (full_blockwise_attention(q, k, v, block=_BLOCK.value, causal=_CAUSAL.value), {}),
                f'block={_BLOCK.value}', flops())
  implementation = 'cudnn' if kind == 'full_cudnn' else None
  return Kind(lambda q, k, v: (full_attention(q, k, v, implementation=implementation, causal=_CAUSAL.value), {}),
              '', flops())


def make_step(fn, mode):
  if mode == 'forward':
    return jax.jit(lambda q, k, v: fn(q, k, v)[0])

  def loss(q, k, v):
    return jnp.sum(fn(q, k, v)[0].astype(jnp.float32) ** 2)

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def relative_error(kind, q, k, v, out, positions, allowed, causal=False):
  """||out - exact|| / ||exact|| on the sampled queries; exact = softmax(q.k / sqrt(d)) over `allowed` pairs
  (all pairs when None; Reformer's shared QK: keys are the normalised queries, self only when alone)."""
  d = q.shape[-1]
  keys = q / jnp.linalg.norm(q.astype(jnp.float32), axis=-1, keepdims=True).astype(q.dtype) if kind == 'reformer' else k
  scores = jnp.einsum('bshd,bkhd->bhsk', q[:, positions], keys, preferred_element_type=jnp.float32) / math.sqrt(d)
  mask = jnp.ones(scores.shape, bool)
  if causal:
    mask = mask & (jnp.arange(q.shape[1])[None, :] <= positions[:, None])
  if allowed is not None:
    mask = mask & allowed(positions, q, k)
    if kind == 'reformer':  # a query with no other key attends to itself
      alone = ~jnp.any(mask, axis=-1, keepdims=True)
      mask = mask | (alone & (positions[:, None] == jnp.arange(q.shape[1])[None, :]))
  scores = jnp.where(mask, scores, -jnp.inf)
  weights = jax.nn.softmax(scores, axis=-1)
  weights = jnp.where(jnp.isnan(weights), 0.0, weights)  # a query with nothing allowed: zeros
  exact = jnp.einsum('bhsk,bkhd->bshd', weights, v.astype(jnp.float32))
  got = out[:, positions].astype(jnp.float32)
  return jnp.linalg.norm(got - exact) / jnp.maximum(jnp.linalg.norm(exact), 1e-30)


def matmul_peak(dtype):
  """GFLOP/s of one large jitted matmul on the default device (median of 3)."""
  size = 4096 if jax.default_backend() == 'cpu' else 16384
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  jax.block_until_ready(f(a, a))
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, a))
    times.append(time.perf_counter() - t0)
  return 2.0 * size**3 / statistics.median(times) / 1e9


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


def memory_budget():
  if _MEMORY_BUDGET.value:
    return _MEMORY_BUDGET.value * 2**30
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return 0.85 * stats['bytes_limit']
  return 0.85 * os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def measure(kind, mode, n, budget, peak_gflops, trace_dir=None):
  dtype = jnp.bfloat16 if kind == 'full_cudnn' else jnp.dtype(_DTYPE.value)
  keys = jax.random.split(jax.random.key(_SEED.value), 5)
  shape = (_BATCH.value, n, _HEADS.value, _HEAD_DIM.value)
  spec = make_kind(kind, n, keys[3])
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
  memory = compiled.memory_analysis()
  if memory is not None:
    record.peak_bytes = int(memory.temp_size_in_bytes + memory.argument_size_in_bytes +
                            memory.output_size_in_bytes - memory.alias_size_in_bytes)
  if kind in ('full', 'full_cudnn', 'lowrank'):  # no loops: XLA's count is right
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    record.xla_flops = float((cost or {}).get('flops', float('nan')))
  if record.peak_bytes > budget:
    record.status = 'over_memory'
    return record
  try:
    q, k, v = (jax.random.normal(key, shape, dtype) for key in keys[:3])
    for _ in range(_WARMUP.value):
      jax.block_until_ready(compiled(q, k, v))
    times = []
    for _ in range(_REPEATS.value):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(q, k, v))
      times.append(time.perf_counter() - t0)
      if times[-1] > _MAX_CALL.value:
        break  # one slow call is enough to place this point
    if trace_dir:
      with jax.profiler.trace(os.path.join(trace_dir, f'{kind}-{mode}-{n}')):
        jax.block_until_ready(compiled(q, k, v))
    if mode == 'forward':  # quality, outside the timed calls
      quality(record, spec, q, k, v, keys[4])
  except Exception as e:  # noqa: BLE001 -- out of memory at run time is recorded and the sweep goes on
    record.status, record.note = ('oom' if 'RESOURCE_EXHAUSTED' in str(e) else 'error'), first_line(e)
    return record
  record.median_seconds, record.min_seconds, record.repeats = statistics.median(times), min(times), len(times)
  record.gflops_per_second = record.analytic_flops / record.median_seconds / 1e9
  record.peak_fraction = record.gflops_per_second / peak_gflops
  return record


def quality(record, spec, q, k, v, key):
  out, stats = jax.jit(spec.fn)(q, k, v)
  for name in ('dropped_fraction', 'no_collision_fraction', 'mean_collisions'):
    if name in stats:
      setattr(record, name, float(stats[name]))
  if record.kind in ('anna_softmax', 'reformer', 'lowrank', 'full_blockwise'):
    n = q.shape[1]
    positions = jnp.sort(jax.random.choice(key, n, (min(_QUALITY_QUERIES.value, n),), replace=False))
    error = jax.jit(functools.partial(relative_error, record.kind, allowed=spec.allowed, causal=_CAUSAL.value))
    record.relative_error = float(error(q, k, v, out, positions))


def first_line(error):
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def fit_slope(records, kind, mode, low, high):
  """Least-squares slope of log(time) vs log(n) over ok points with low <= n <= high."""
  points = [(r.n, r.median_seconds) for r in records
            if r.kind == kind and r.mode == mode and r.status == 'ok' and low <= r.n <= high]
  if len(points) < 2:
    return float('nan')
  x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
  return float(np.polyfit(x, y, 1)[0])


def strongest_exact(records, mode, n):
  """The fastest exact kind measured at (mode, n): the baseline every ratio is taken against."""
  times = {r.kind: r.median_seconds for r in records if r.mode == mode and r.n == n and r.status == 'ok'
           and r.kind in EXACT}
  return min(times, key=times.get) if times else None


def speedup(records, mode, n, kind):
  """(strongest exact time) / (kind's time) at (mode, n), NaN where either did not run."""
  times = {r.kind: r.median_seconds for r in records if r.mode == mode and r.n == n and r.status == 'ok'}
  baseline = strongest_exact(records, mode, n)
  if baseline is None or kind not in times:
    return float('nan')
  return times[baseline] / times[kind]


def crossover(records, mode, fast='anna'):
  """Smallest measured n from which `fast` beats every exact kind at every larger measured n (None if never).

  At a length where no exact kind could run (over memory or budget), `fast` wins by default.
  """
  lengths = sorted({r.n for r in records if r.kind == fast and r.mode == mode and r.status == 'ok'})
  result = None
  for n in reversed(lengths):
    ratio = speedup(records, mode, n, fast)
    if math.isnan(ratio):
      if any(r.kind in EXACT and r.mode == mode and r.n == n for r in records):
        result = n  # the exact kinds could not run here
        continue
      break
    if ratio > 1:
      result = n
    else:
      break
  return result


def format_seconds(seconds):
  return '' if math.isnan(seconds) else (f'{seconds * 1e3:.1f} ms' if seconds < 1 else f'{seconds:.2f} s')


def format_cell(r):
  if r is None:
    return ''
  if r.status == 'ok':
    return f'{format_seconds(r.median_seconds)} ({r.peak_bytes / 2**20:.0f} MiB)'
  return f'{r.status} ({r.peak_bytes / 2**20:.0f} MiB)' if r.peak_bytes else r.status


def quality_cell(r):
  if r is None or r.status != 'ok':
    return ''
  if r.kind == 'anna':
    return f'alone {r.no_collision_fraction:.3f}, {r.mean_collisions:.1f} coll/q'
  parts = []
  if not math.isnan(r.dropped_fraction):
    parts.append(f'dropped {r.dropped_fraction:.3f}')
  if not math.isnan(r.relative_error):
    parts.append(f'rel.err {r.relative_error:.2g}')
  return ', '.join(parts)


def report(records, device, settings, peak_gflops):
  kinds = [k for k in KINDS if any(r.kind == k for r in records)]
  approximate = [k for k in kinds if k not in EXACT]
  lengths = sorted({r.n for r in records})
  modes = [m for m in MODES if any(r.mode == m for r in records)]
  lines = ['# Attention scaling report', '', f'Device: {device}. Matmul peak measured at start: '
           f'{peak_gflops:.1f} GFLOP/s. All ratios below come from this one run.', '',
           'Settings: ' + ', '.join(f'{k}={v}' for k, v in settings.items()), '',
           'Each kind\'s setting at each length (hashes, buckets, ...) is in the last table.', '']
  for mode in modes:
    by_point = {(r.kind, r.n): r for r in records if r.mode == mode}
    lines += [f'## {mode}: median time (peak memory)', '', '| n | ' + ' | '.join(kinds) + ' |',
              '|---|' + '---|' * len(kinds)]
    for n in lengths:
      lines.append(f'| {n} | ' + ' | '.join(format_cell(by_point.get((k, n))) for k in kinds) + ' |')
    lines += ['', f'### {mode}: speed-up over the strongest exact baseline at each length (quality beside it)', '',
              '| n | baseline | ' + ' | '.join(approximate) + ' |', '|---|---|' + '---|' * len(approximate)]
    for n in lengths:
      base = strongest_exact(records, mode, n) or '-'
      cells = []
      for k in approximate:
        x = speedup(records, mode, n, k)
        q = quality_cell(by_point.get((k, n)) if mode == 'forward' else by_point.get((k, n)) and None)
        cells.append(('' if math.isnan(x) else f'{x:.1f}x') + (f' ({q})' if q else ''))
      lines.append(f'| {n} | {base} | ' + ' | '.join(cells) + ' |')
    lines += ['', f'### {mode}: achieved GFLOP/s (analytic FLOPs, % of matmul peak)', '',
              '| n | ' + ' | '.join(kinds) + ' |', '|---|' + '---|' * len(kinds)]
    for n in lengths:
      cells = []
      for k in kinds:
        r = by_point.get((k, n))
        ok = r is not None and r.status == 'ok'
        cells.append(f'{r.gflops_per_second:.1f} ({100 * r.peak_fraction:.0f}%)' if ok else '')
      lines.append(f'| {n} | ' + ' | '.join(cells) + ' |')
    cross = crossover(records, mode)
    lines += ['', f'anna faster than every exact kind from n = {cross if cross else "(not reached)"} on.', '',
              '| kind | slope 4K..256K | slope, all ok points |', '|---|---|---|']
    for kind in kinds:
      lines.append(f'| {kind} | {fit_slope(records, kind, mode, 4096, 262144):.3f} | '
                   f'{fit_slope(records, kind, mode, 0, 2**40):.3f} |')
    lines.append('')
  lines += ['## Compile time and FLOPs', '',
            'Analytic FLOPs follow `analytic_flops` (train = 3x forward). XLA cost_analysis is shown only for kinds '
            'without loops; it counts a loop body once, so it is wrong for the others.', '',
            '| kind | mode | n | setting | compile | analytic GFLOP | XLA GFLOP |', '|---|---|---|---|---|---|---|']
  for r in records:
    xla = '' if math.isnan(r.xla_flops) else f'{r.xla_flops / 1e9:.2f}'
    lines.append(f'| {r.kind} | {r.mode} | {r.n} | {r.setting} | {format_seconds(r.compile_seconds)} | '
                 f'{r.analytic_flops / 1e9:.2f} | {xla} |')
  notes = [f'- {r.kind} {r.mode} n={r.n}: {r.status}: {r.note}' for r in records if r.note]
  if notes:
    lines += ['', '## Notes', ''] + notes
  return '\n'.join(lines) + '\n'


def plot(records, path, device):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (ax, ax_q) = plt.subplots(1, 2, figsize=(12, 4.8))
  for mode, style in (('forward', '-'), ('train', '--')):
    for kind in KINDS:
      points = sorted((r.n, r.median_seconds) for r in records if r.kind == kind and r.mode == mode and r.status == 'ok')
      if points:
        ax.loglog(*zip(*points), style, marker='o', markersize=3, label=f'{kind} {mode}')
  ax.set_xlabel('sequence length n')
  ax.set_ylabel('median seconds per call')
  ax.set_title(f'Attention cost vs length ({device})', fontsize=8)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=6)
  for kind in ('anna_softmax', 'reformer', 'lowrank'):
    points = [(r.median_seconds, r.relative_error, r.n) for r in records
              if r.kind == kind and r.mode == 'forward' and r.status == 'ok' and not math.isnan(r.relative_error)]
    if points:
      ax_q.loglog([p[0] for p in points], [max(p[1], 1e-8) for p in points], marker='o', label=kind)
      for t, e, n in points:
        ax_q.annotate(f'{n // 1024}K', (t, max(e, 1e-8)), fontsize=6)
  anna = [(r.median_seconds, r.no_collision_fraction, r.n) for r in records
          if r.kind == 'anna' and r.mode == 'forward' and r.status == 'ok']
  if anna:
    ax_q.loglog([p[0] for p in anna], [max(p[1], 1e-8) for p in anna], marker='s',
                label='anna (fraction of queries with no collision)')
  ax_q.set_xlabel('forward seconds')
  ax_q.set_ylabel('relative error vs exact attention over allowed pairs')
  ax_q.set_title('Quality against time (labels: n)', fontsize=8)
  ax_q.grid(True, which='both', alpha=0.3)
  ax_q.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(records, outdir, device, settings, peak_gflops):
  os.makedirs(outdir, exist_ok=True)
  rows = [dataclasses.asdict(r) for r in records]
  table = io.StringIO()
  csv_writer = csv.DictWriter(table, fieldnames=list(rows[0]))
  csv_writer.writeheader()
  csv_writer.writerows(rows)
  write_atomic(os.path.join(outdir, 'scaling.csv'), table.getvalue())
  summary = {'device': device, 'settings': settings, 'matmul_peak_gflops': peak_gflops, 'records': rows,
             'slopes_4k_256k': {f'{kind}/{mode}': fit_slope(records, kind, mode, 4096, 262144)
                                for kind in KINDS for mode in MODES},
             'crossover': {mode: crossover(records, mode) for mode in MODES}}
  write_atomic(os.path.join(outdir, 'scaling.json'), json.dumps(summary, indent=1))
  write_atomic(os.path.join(outdir, 'report.md'), report(records, device, settings, peak_gflops))
  plot(records, os.path.join(outdir, 'scaling.png'), device)
  writer = SummaryWriter(os.path.join(outdir, 'tb'))
  for r in records:
    if r.status == 'ok':
      writer.scalars(r.n, {f'{r.mode}/{r.kind}/median_seconds': r.median_seconds,
                           f'{r.mode}/{r.kind}/peak_mib': r.peak_bytes / 2**20})
  writer.close()


def fail(message):
  cli.fail(message, 'anna-jax benchmark')


def main(argv):
  cli.quiet_console()
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  unknown = sorted(set(_KINDS.value) - set(KINDS)) + sorted(set(_MODES.value) - set(MODES))
  if unknown:
    fail(f'unknown kinds or modes: {unknown}; kinds are {KINDS}, modes {MODES}')
  try:
    lengths = [int(n) for n in _LENGTHS.value]
  except ValueError:
    fail(f'--lengths must be integers, got {_LENGTHS.value}')
  if (lengths and min(lengths) < 1) or min(
      _BATCH.value, _HEADS.value, _HEAD_DIM.value, _REPEATS.value, _CHUNK.value, _WINDOW.value, _TABLES.value,
      _ROUNDS.value, _REFORMER_CHUNK.value, _BLOCK.value, _FEATURES.value, _QUALITY_QUERIES.value) < 1:
    fail('lengths, batch, heads, head_dim, repeats, chunk sizes, window, tables, rounds, block, features and '
         'quality_queries must be >= 1')
  cli.writable_dir(_OUTDIR.value, 'anna-jax benchmark')
  backend = jax.devices()[0].platform
  kept = _KEEP_FREED.value and backend == 'cpu' and keep_freed_memory()
  lengths = lengths or list(CPU_LENGTHS if backend == 'cpu' else ACCELERATOR_LENGTHS)
  kinds = _KINDS.value or list(CPU_KINDS if backend == 'cpu' else KINDS)
  device = f'{device_name()} ({backend}, {jax.device_count()} device(s) visible, 1 used)'
  settings = dict(batch=_BATCH.value, heads=_HEADS.value, head_dim=_HEAD_DIM.value, dtype=_DTYPE.value,
                  causal=_CAUSAL.value,
                  num_tables=_TABLES.value, anna_hashes=_ANNA_HASHES.value or 'log2(n/32)',
                  anna_softmax_hashes=_HASHES.value or 'log2(n/8)', chunk_size=_CHUNK.value, window=_WINDOW.value,
                  reformer_rounds=_ROUNDS.value, reformer_chunk=_REFORMER_CHUNK.value, block=_BLOCK.value,
                  lowrank_features=_FEATURES.value, repeats=_REPEATS.value, jax=jax.__version__,
                  malloc_keeps_freed_memory=kept)
  budget = memory_budget()
  peak = matmul_peak(jnp.dtype(_DTYPE.value))
  trace_dir = os.path.join(_OUTDIR.value, 'trace') if _PROFILE.value else None
  logging.info('device %s, memory budget %.1f GiB, matmul peak %.1f GFLOP/s', device, budget / 2**30, peak)
  records = []
  for mode in _MODES.value:
    for kind in kinds:
      too_slow = False
      for n in sorted(lengths):
        if too_slow:
          records.append(Record(kind, mode, n, 'over_budget', note=f'an earlier length took > {_MAX_CALL.value}s'))
          continue
        record = measure(kind, mode, n, budget, peak, trace_dir)
        records.append(record)
        too_slow = record.status == 'ok' and record.median_seconds > _MAX_CALL.value
        logging.info('%-14s %-7s n=%-7d %-11s %s (%s)', kind, mode, n, record.status,
                     format_seconds(record.median_seconds), quality_cell(record) or record.setting)
  write_outputs(records, _OUTDIR.value, device, settings, peak)
  print(report(records, device, settings, peak))
  print(f'wrote {os.path.abspath(_OUTDIR.value)}/{{scaling.csv,scaling.json,report.md,scaling.png,tb}}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('anna-jax benchmark'))
