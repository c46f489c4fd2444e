"""How attention cost grows with sequence length: ANNA vs quadratic softmax vs low rank, in one run.

  python -m benchmarks.scaling --outdir=results/scaling                  # CPU default: 1K..256K
  python -m benchmarks.scaling --lengths=1024,4096 --kinds=anna,full     # a subset

For every kind, mode (forward; forward+backward) and length it records compile time, steady-state time
(median of --repeats after a warm-up, block_until_ready), peak memory (compiled memory_analysis), FLOPs
(cost_analysis) and the device. Sizes predicted to exceed memory, or following one that ran past
--max_call_seconds, are recorded as such and the run goes on. Writes scaling.csv, scaling.json, report.md,
scaling.png and TensorBoard scalars to --outdir. Ratios are only ever taken between numbers of this run.
"""

import csv
import dataclasses
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

from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.baselines import draw_random_features, full_attention, lowrank_attention
from experiments import cli
from experiments.files import write_atomic
from experiments.summaries import SummaryWriter

KINDS = ('anna', 'full', 'lowrank', 'full_cudnn')  # full_cudnn: jax.nn.dot_product_attention's cuDNN kernel
MODES = ('forward', 'train')  # train = forward + backward (gradients of q, k, v)
CPU_LENGTHS = tuple(2**p for p in range(10, 19))  # 1K .. 256K
ACCELERATOR_LENGTHS = tuple(2**p for p in range(10, 21))  # 1K .. 1M

_KINDS = flags.DEFINE_list('kinds', ['anna', 'full', 'lowrank'], f'Attention kinds, from {KINDS}.')
_MODES = flags.DEFINE_list('modes', list(MODES), f'From {MODES}.')
_LENGTHS = flags.DEFINE_list('lengths', [], 'Sequence lengths; default 1K..256K on CPU, 1K..1M on GPU/TPU.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size.')
_HEADS = flags.DEFINE_integer('heads', 8, 'Attention heads.')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'Dimension per head.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'q, k, v dtype (full_cudnn always bf16).')
_TABLES = flags.DEFINE_integer('num_tables', 8, 'ANNA hash tables.')
_HASHES = flags.DEFINE_integer('num_hashes', 0, 'ANNA bits per table; 0 picks log2(n / chunk_size) + 1 '
                               '(mean bucket half a chunk), capped so the int32 sort key fits.')
_CHUNK = flags.DEFINE_integer('chunk_size', 64, 'ANNA queries per chunk.')
_WINDOW = flags.DEFINE_integer('window', 64, 'ANNA keys per chunk window.')
_FEATURES = flags.DEFINE_integer('lowrank_features', 256, 'Random features of the low-rank baseline.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per point (median reported).')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed calls after compiling.')
_MAX_CALL = flags.DEFINE_float('max_call_seconds', 60.0, 'After a call slower than this, larger lengths of the '
                               'same kind and mode are skipped as over_budget.')
_MEMORY_BUDGET = flags.DEFINE_float('memory_budget_gb', 0.0, 'Skip points whose compiled peak memory exceeds '
                                    'this; 0 = 85% of device memory (host RAM on CPU).')
_OUTDIR = flags.DEFINE_string('outdir', 'results/scaling', 'Where the CSV, JSON, report, plot and TensorBoard go.')
_PROFILE = flags.DEFINE_bool('profile', False, 'Write a jax.profiler trace of one call per point to outdir/trace.')
_SEED = flags.DEFINE_integer('seed', 0, 'Inputs and random projections.')


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
  flops: float = float('nan')
  dropped_fraction: float = float('nan')
  num_hashes: int = 0
  note: str = ''


def anna_hashes(n, chunk, requested):
  """Mean bucket about half a chunk, but never past the int32 sort key limit."""
  if requested:
    return requested
  n_pad = -(-n // chunk) * chunk
  z = max(1, round(math.log2(max(n / chunk, 1))) + 1)
  while (2**z + 1) * n_pad >= 2**31:
    z -= 1
  return z


def attention_fn(kind, n, heads, head_dim, key):
  """(fn(q, k, v) -> (out, dropped_fraction), num_hashes)."""
  if kind == 'anna':
    z = anna_hashes(n, _CHUNK.value, _HASHES.value)
    config = ANNAConfig(num_tables=_TABLES.value, num_hashes=z, chunk_size=_CHUNK.value, window=_WINDOW.value)
    projections = draw_projections(key, heads, head_dim, config)

    def anna(q, k, v):
      out, stats = anna_attention(q, k, v, projections, config)
      return out, stats.dropped_fraction

    return anna, z
  if kind == 'lowrank':
    features = draw_random_features(key, heads, head_dim, _FEATURES.value)
    return lambda q, k, v: (lowrank_attention(q, k, v, features), jnp.float32(jnp.nan)), 0
  implementation = 'cudnn' if kind == 'full_cudnn' else None
  return lambda q, k, v: (full_attention(q, k, v, implementation=implementation), jnp.float32(jnp.nan)), 0


def make_step(fn, mode):
  if mode == 'forward':
    return jax.jit(fn)

  def loss(q, k, v):
    out, dropped = fn(q, k, v)
    return jnp.sum(out.astype(jnp.float32) ** 2), dropped

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


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


def measure(kind, mode, n, budget, trace_dir=None):
  dtype = jnp.bfloat16 if kind == 'full_cudnn' else jnp.dtype(_DTYPE.value)
  keys = jax.random.split(jax.random.key(_SEED.value), 4)
  shape = (_BATCH.value, n, _HEADS.value, _HEAD_DIM.value)
  fn, z = attention_fn(kind, n, _HEADS.value, _HEAD_DIM.value, keys[3])
  step = make_step(fn, mode)
  record = Record(kind, mode, n, 'ok', num_hashes=z)
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
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  record.flops = float((cost or {}).get('flops', float('nan')))
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
      result = jax.block_until_ready(compiled(q, k, v))
      times.append(time.perf_counter() - t0)
      if times[-1] > _MAX_CALL.value:
        break  # one slow call is enough to place this point
    if trace_dir:
      with jax.profiler.trace(os.path.join(trace_dir, f'{kind}-{mode}-{n}')):
        jax.block_until_ready(compiled(q, k, v))
  except Exception as e:  # noqa: BLE001 -- out of memory at run time is recorded and the sweep goes on
    record.status, record.note = ('oom' if 'RESOURCE_EXHAUSTED' in str(e) else 'error'), first_line(e)
    return record
  record.median_seconds, record.min_seconds, record.repeats = statistics.median(times), min(times), len(times)
  record.dropped_fraction = float(result[1])  # forward: (out, dropped); train: (grads, dropped)
  return record


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


def crossover(records, mode, fast='anna', slow='full'):
  """Smallest measured n from which `fast` beats `slow` at every larger measured n (None if never)."""
  times = {(r.kind, r.n): r.median_seconds for r in records if r.mode == mode and r.status == 'ok'}
  lengths = sorted({n for kind, n in times if kind == fast})
  result = None
  for n in reversed(lengths):
    slow_time = times.get((slow, n))
    if slow_time is None:
      if any(r.kind == slow and r.mode == mode and r.n == n and r.status != 'ok' for r in records):
        result = n  # the slow kind could not run here at all: the fast one wins by default
        continue
      break
    if times[(fast, n)] < slow_time:
      result = n
    else:
      break
  return result


def ratio(records, mode, n, numerator, denominator='anna'):
  times = {r.kind: r.median_seconds for r in records if r.mode == mode and r.n == n and r.status == 'ok'}
  if numerator in times and denominator in times:
    return times[numerator] / times[denominator]
  return float('nan')


def format_seconds(seconds):
  return '' if math.isnan(seconds) else (f'{seconds * 1e3:.1f} ms' if seconds < 1 else f'{seconds:.2f} s')


def report(records, device, settings):
  kinds = [k for k in KINDS if any(r.kind == k for r in records)]
  lengths = sorted({r.n for r in records})
  modes = [m for m in MODES if any(r.mode == m for r in records)]
  lines = ['# ANNA scaling report', '', f'Device: {device}. All ratios below come from this one run.', '',
           'Settings: ' + ', '.join(f'{k}={v}' for k, v in settings.items()), '']
  for mode in modes:
    by_point = {(r.kind, r.n): r for r in records if r.mode == mode}
    lines += [f'## {mode}: median time (peak memory)', '',
              '| n | ' + ' | '.join(kinds) + ' | full/anna | lowrank/anna | anna dropped |',
              '|---|' + '---|' * (len(kinds) + 3)]
    for n in lengths:
      cells = []
      for kind in kinds:
        r = by_point.get((kind, n))
        if r is None:
          cells.append('')
        elif r.status == 'ok':
          cells.append(f'{format_seconds(r.median_seconds)} ({r.peak_bytes / 2**20:.0f} MiB)')
        else:
          cells.append(f'{r.status} ({r.peak_bytes / 2**20:.0f} MiB)' if r.peak_bytes else r.status)
      anna = by_point.get(('anna', n))
      dropped = f'{anna.dropped_fraction:.3f}' if anna and anna.status == 'ok' else ''
      lines.append(f'| {n} | ' + ' | '.join(cells) +
                   f' | {ratio(records, mode, n, "full"):.2f} | {ratio(records, mode, n, "lowrank"):.2f} | {dropped} |')
    cross = crossover(records, mode)
    lines += ['', f'Crossover (ANNA faster than full from here on): {cross if cross else "not reached"}', '',
              '| kind | slope 4K..256K | slope, all ok points |', '|---|---|---|']
    for kind in kinds:
      lines.append(f'| {kind} | {fit_slope(records, kind, mode, 4096, 262144):.3f} | '
                   f'{fit_slope(records, kind, mode, 0, 2**40):.3f} |')
    lines.append('')
  lines += ['## Compile time and FLOPs', '', '| kind | mode | n | compile | GFLOP |', '|---|---|---|---|---|']
  for r in records:
    lines.append(f'| {r.kind} | {r.mode} | {r.n} | {format_seconds(r.compile_seconds)} | {r.flops / 1e9:.2f} |')
  notes = [f'- {r.kind} {r.mode} n={r.n}: {r.status}: {r.note}' for r in records if r.note]
  if notes:
    lines += ['', '## Notes', ''] + notes
  return '\n'.join(lines) + '\n'


def plot(records, path):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for mode, style in (('forward', '-'), ('train', '--')):
    for kind in KINDS:
      points = sorted((r.n, r.median_seconds) for r in records if r.kind == kind and r.mode == mode and r.status == 'ok')
      if points:
        ax.loglog(*zip(*points), style, marker='o', label=f'{kind} {mode}')
  ax.set_xlabel('sequence length n')
  ax.set_ylabel('median seconds per call')
  ax.set_title(f'Attention cost vs length ({device_name()})')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(records, outdir, device, settings):
  os.makedirs(outdir, exist_ok=True)
  rows = [dataclasses.asdict(r) for r in records]
  table = io.StringIO()
  csv_writer = csv.DictWriter(table, fieldnames=list(rows[0]))
  csv_writer.writeheader()
  csv_writer.writerows(rows)
  write_atomic(os.path.join(outdir, 'scaling.csv'), table.getvalue())
  summary = {'device': device, 'settings': settings, 'records': rows,
             'slopes_4k_256k': {f'{kind}/{mode}': fit_slope(records, kind, mode, 4096, 262144)
                                for kind in KINDS for mode in MODES},
             'crossover': {mode: crossover(records, mode) for mode in MODES}}
  write_atomic(os.path.join(outdir, 'scaling.json'), json.dumps(summary, indent=1))
  write_atomic(os.path.join(outdir, 'report.md'), report(records, device, settings))
  plot(records, os.path.join(outdir, 'scaling.png'))
  writer = SummaryWriter(os.path.join(outdir, 'tb'))
  for r in records:
    if r.status == 'ok':
      writer.scalars(r.n, {f'{r.mode}/{r.kind}/median_seconds': r.median_seconds,
                           f'{r.mode}/{r.kind}/peak_mib': r.peak_bytes / 2**20})
  writer.close()


def fail(message):
  cli.fail(message, 'anna-jax benchmark')


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  unknown = sorted(set(_KINDS.value) - set(KINDS)) + sorted(set(_MODES.value) - set(MODES))
  if unknown:
    fail(f'unknown kinds or modes: {unknown}; kinds are {KINDS}, modes {MODES}')
  try:
    lengths = [int(n) for n in _LENGTHS.value]
  except ValueError:
    fail(f'--lengths must be integers, got {_LENGTHS.value}')
  backend = jax.devices()[0].platform
  lengths = lengths or list(CPU_LENGTHS if backend == 'cpu' else ACCELERATOR_LENGTHS)
  if min(lengths) < 1 or min(_BATCH.value, _HEADS.value, _HEAD_DIM.value, _REPEATS.value, _CHUNK.value,
                             _WINDOW.value, _TABLES.value) < 1:
    fail('lengths, batch, heads, head_dim, repeats, chunk_size, window and num_tables must be >= 1')
  device = f'{device_name()} ({backend}, {jax.device_count()} device(s) visible, 1 used)'
  settings = dict(batch=_BATCH.value, heads=_HEADS.value, head_dim=_HEAD_DIM.value, dtype=_DTYPE.value,
                  num_tables=_TABLES.value, chunk_size=_CHUNK.value, window=_WINDOW.value,
                  num_hashes=_HASHES.value or 'auto', lowrank_features=_FEATURES.value,
                  repeats=_REPEATS.value, jax=jax.__version__)
  budget = memory_budget()
  trace_dir = os.path.join(_OUTDIR.value, 'trace') if _PROFILE.value else None
  logging.info('device %s, memory budget %.1f GiB', device, budget / 2**30)
  records = []
  for mode in _MODES.value:
    for kind in _KINDS.value:
      too_slow = False
      for n in sorted(lengths):
        if too_slow:
          records.append(Record(kind, mode, n, 'over_budget', note=f'an earlier length took > {_MAX_CALL.value}s'))
          continue
        record = measure(kind, mode, n, budget, trace_dir)
        records.append(record)
        too_slow = record.status == 'ok' and record.median_seconds > _MAX_CALL.value
        logging.info('%-10s %-7s n=%-8d %-11s median %s compile %s peak %.0f MiB', kind, mode, n, record.status,
                     format_seconds(record.median_seconds), format_seconds(record.compile_seconds),
                     record.peak_bytes / 2**20)
  write_outputs(records, _OUTDIR.value, device, settings)
  print(report(records, device, settings))
  print(f'wrote {os.path.abspath(_OUTDIR.value)}/{{scaling.csv,scaling.json,report.md,scaling.png,tb}}')


if __name__ == '__main__':
  app.run(main)
