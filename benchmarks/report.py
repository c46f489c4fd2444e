"""The benchmark's analysis and outputs: slopes, the strongest exact baseline and speed-ups, the markdown report,
the plot, and the CSV / JSON / TensorBoard files. Pure functions of the records."""

import csv
import dataclasses
import io
import json
import math
import os

import numpy as np

from anna_jax.tooling import SummaryWriter, write_atomic
from benchmarks.kinds import exact_kinds, kinds as benchmark_kinds
from benchmarks.measure import MODES


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
           and r.kind in exact_kinds()}
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
      if any(r.kind in exact_kinds() and r.mode == mode and r.n == n for r in records):
        result = n  # the exact kinds could not run here
        continue
      break
    if ratio > 1:
      result = n
    else:
      break
  return result


def slope_cell(slope):
  """A slope, or why there is none (a report never prints nan)."""
  return '- (fewer than 2 lengths ran)' if math.isnan(slope) else f'{slope:.3f}'


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
  parts = []
  if not math.isnan(r.no_collision_fraction):  # Algorithm 1: queries with no collision, collisions per query
    parts.append(f'alone {r.no_collision_fraction:.3f}, {r.mean_collisions:.1f} coll/q')
  if not math.isnan(r.dropped_fraction):
    parts.append(f'dropped {r.dropped_fraction:.3f}')
  if not math.isnan(r.relative_error):
    parts.append(f'rel.err {r.relative_error:.2g}')
  return ', '.join(parts)


def report(records, device, settings, peak_gflops):
  kinds = [k for k in benchmark_kinds() if any(r.kind == k for r in records)]
  approximate = [k for k in kinds if k not in exact_kinds()]
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
      lines.append(f'| {kind} | {slope_cell(fit_slope(records, kind, mode, 4096, 262144))} | '
                   f'{slope_cell(fit_slope(records, kind, mode, 0, 2**40))} |')
    lines.append('')
  lines += ['## Compile time and FLOPs', '',
            'Analytic FLOPs follow `analytic_flops` (train = 3x forward). XLA cost_analysis is shown only for kinds '
            'without loops; it counts a loop body once, so it is wrong for the others.', '',
            '| kind | mode | n | setting | compile | analytic GFLOP | XLA GFLOP |', '|---|---|---|---|---|---|---|']
  for r in records:
    xla = '-' if math.isnan(r.xla_flops) else f'{r.xla_flops / 1e9:.2f}'
    flops = '-' if math.isnan(r.analytic_flops) else f'{r.analytic_flops / 1e9:.2f}'
    lines.append(f'| {r.kind} | {r.mode} | {r.n} | {r.setting} | {format_seconds(r.compile_seconds) or "-"} | '
                 f'{flops} | {xla} |')
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
    for kind in benchmark_kinds():
      points = sorted((r.n, r.median_seconds) for r in records if r.kind == kind and r.mode == mode and r.status == 'ok')
      if points:
        ax.loglog(*zip(*points), style, marker='o', markersize=3, label=f'{kind} {mode}')
  ax.set_xlabel('sequence length n')
  ax.set_ylabel('median seconds per call')
  ax.set_title(f'Attention cost vs length ({device})', fontsize=8)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=6)
  for kind in benchmark_kinds():
    points = [(r.median_seconds, r.relative_error, r.n) for r in records
              if r.kind == kind and r.mode == 'forward' and r.status == 'ok' and not math.isnan(r.relative_error)]
    if points:
      ax_q.loglog([p[0] for p in points], [max(p[1], 1e-8) for p in points], marker='o', label=kind)
      for t, e, n in points:
        ax_q.annotate(f'{n // 1024}K', (t, max(e, 1e-8)), fontsize=6)
  for kind in benchmark_kinds():
    alone = [(r.median_seconds, r.no_collision_fraction, r.n) for r in records if r.kind == kind and
             r.mode == 'forward' and r.status == 'ok' and not math.isnan(r.no_collision_fraction)]
    if alone:
      ax_q.loglog([p[0] for p in alone], [max(p[1], 1e-8) for p in alone], marker='s',
                  label=f'{kind} (fraction of queries with no collision)')
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
  slopes = {f'{kind}/{mode}': fit_slope(records, kind, mode, 4096, 262144)
            for kind in benchmark_kinds() for mode in MODES}
  summary = {'device': device, 'settings': settings, 'matmul_peak_gflops': peak_gflops, 'records': rows,
             'slopes_4k_256k': {key: None if math.isnan(x) else x for key, x in slopes.items()},
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
