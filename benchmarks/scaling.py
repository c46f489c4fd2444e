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

Layout: benchmarks/kinds.py (each kind's AttentionConfig, built by anna_jax.attention; FLOPs; the pairs its
quality is judged on, from anna_jax.oracle), measure.py (one point, under a `Settings` object), report.py (slopes,
ratios, report, plot, files); this file only reads the flags.
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from benchmarks import measure, report
from benchmarks.kinds import Settings, default_kinds, kinds as benchmark_kinds
from benchmarks.measure import MODES
from anna_jax import tooling

CPU_LENGTHS = tuple(2**p for p in range(10, 19))  # 1K .. 256K
ACCELERATOR_LENGTHS = tuple(2**p for p in range(10, 21))  # 1K .. 1M

_KINDS = flags.DEFINE_list('kinds', [], f'Attention kinds, from {benchmark_kinds()}; default: those registered '
                           'as benchmarked (and full_cudnn on a GPU).')
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
_DENSE = flags.DEFINE_integer('dense_up_to', 512, 'anna_softmax: padded lengths up to this take the dense '
                               'layout (every pair of the same windows at once); 0: never.')
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
_BUDGET = flags.DEFINE_float('budget_seconds', 0.0, 'Stop measuring after this many seconds (0: never); the points '
                             'left are recorded as skipped. Lengths run in increasing order, every kind at each.')
_OUTDIR = flags.DEFINE_string('outdir', 'results/scaling', 'Where the CSV, JSON, report, plot and TensorBoard go.')
_PROFILE = flags.DEFINE_bool('profile', False, 'Write a jax.profiler trace of one call per point to outdir/trace.')
_SEED = flags.DEFINE_integer('seed', 0, 'Inputs and random projections.')
_CAUSAL = flags.DEFINE_bool('causal', False, 'Causal attention for every kind (query i sees keys j <= i).')
_KEEP_FREED = flags.DEFINE_bool('keep_freed_memory', True, 'CPU, glibc: malloc keeps freed memory for reuse '
                                'instead of returning it to the OS (see keep_freed_memory()); every kind alike.')


def settings_from_flags():
  """The Settings the flags ask for (ValueError for a value out of range)."""
  return Settings(batch=_BATCH.value, heads=_HEADS.value, head_dim=_HEAD_DIM.value, dtype=_DTYPE.value,
                  num_tables=_TABLES.value, anna_hashes=_ANNA_HASHES.value, num_hashes=_HASHES.value,
                  chunk_size=_CHUNK.value, window=_WINDOW.value, dense_up_to=_DENSE.value,
                  reformer_rounds=_ROUNDS.value,
                  reformer_chunk=_REFORMER_CHUNK.value, block=_BLOCK.value, lowrank_features=_FEATURES.value,
                  quality_queries=_QUALITY_QUERIES.value, repeats=_REPEATS.value, warmup=_WARMUP.value,
                  max_call_seconds=_MAX_CALL.value, seed=_SEED.value, causal=_CAUSAL.value)


def fail(message):
  tooling.fail(message, 'anna-jax benchmark')


def main(argv):
  tooling.quiet_console()
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  unknown = sorted(set(_KINDS.value) - set(benchmark_kinds())) + sorted(set(_MODES.value) - set(MODES))
  if unknown:
    fail(f'unknown kinds or modes: {unknown}; kinds are {benchmark_kinds()}, modes {MODES}')
  try:
    lengths = [int(n) for n in _LENGTHS.value]
  except ValueError:
    fail(f'--lengths must be integers, got {_LENGTHS.value}')
  try:
    if lengths and min(lengths) < 1:
      raise ValueError('lengths must be >= 1')
    s = settings_from_flags()
  except ValueError as e:
    fail(tooling.first_line(e))
  tooling.writable_dir(_OUTDIR.value, 'anna-jax benchmark')
  backend = jax.devices()[0].platform
  kept = _KEEP_FREED.value and backend == 'cpu' and measure.keep_freed_memory()
  lengths = lengths or list(CPU_LENGTHS if backend == 'cpu' else ACCELERATOR_LENGTHS)
  kinds = _KINDS.value or list(default_kinds(backend))
  device = f'{measure.device_name()} ({backend}, {jax.device_count()} device(s) visible, 1 used)'
  settings = dict(dataclasses.asdict(s), anna_hashes=s.anna_hashes or 'log2(n/32)',
                  num_hashes=s.num_hashes or 'log2(n/8)', jax=jax.__version__, malloc_keeps_freed_memory=kept)
  budget = measure.memory_budget(_MEMORY_BUDGET.value)
  peak = measure.matmul_peak(jnp.dtype(s.dtype))
  trace_dir = os.path.join(_OUTDIR.value, 'trace') if _PROFILE.value else None
  logging.info('device %s, memory budget %.1f GiB, matmul peak %.1f GFLOP/s', device, budget / 2**30, peak)
  records, too_slow, start = [], set(), time.perf_counter()
  # Lengths outermost, so a run cut by --budget_seconds has measured every kind and mode up to some length.
  for n in sorted(lengths):
    for mode in _MODES.value:
      for kind in kinds:
        if (kind, mode) in too_slow:
          records.append(measure.Record(kind, mode, n, 'over_budget',
                                        note=f'an earlier length took > {s.max_call_seconds}s'))
          continue
        if _BUDGET.value and time.perf_counter() - start > _BUDGET.value:
          records.append(measure.Record(kind, mode, n, 'skipped', note=f'past --budget_seconds={_BUDGET.value:g}'))
          continue
        record = measure.measure(s, kind, mode, n, budget, peak, trace_dir)
        records.append(record)
        if record.status == 'ok' and record.median_seconds > s.max_call_seconds:
          too_slow.add((kind, mode))
        logging.info('%-14s %-7s n=%-7d %-11s %s (%s)', kind, mode, n, record.status,
                     report.format_seconds(record.median_seconds), report.quality_cell(record) or record.setting)
  report.write_outputs(records, _OUTDIR.value, device, settings, peak)
  print(report.report(records, device, settings, peak))
  print(f'wrote {os.path.abspath(_OUTDIR.value)}/{{scaling.csv,scaling.json,report.md,scaling.png,tb}}')


if __name__ == '__main__':
  app.run(main, flags_parser=tooling.flags_parser('anna-jax benchmark'))
