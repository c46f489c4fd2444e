"""Theorem 5.2 executed: the constructed 1-layer, 1-head Match2 model (`anna_jax.constructions`) from N = 2^10 to
2^20 tokens, with `anna` over tables x hashes x draws and, where it fits, the same weights with exact softmax.

  python -m experiments.match2_construction --out=experiments/results/match2_construction

Per N (batch 1, one label-balanced sequence, modulus `match2_modulus(N)`): for every (l, z) the error over the
N tokens for each hash draw, the no-collision fraction, (key, table) collisions per query, and the median forward
time over the draws (hashing, Algorithm 1 and the read-out; jitted, compiled ahead of the timed calls); exact
softmax attention with the same weights (flash-style, O(N^2) time; one timed call) up to --softmax_up_to tokens.
Times are of this machine, measured one after another in one run: quote their ratios. Rows go to results.jsonl
as they are measured (a rerun skips the rows it has); then construction.md (the table) and construction.png (the
plots) are rebuilt from all of them.
"""

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from anna_jax import constructions
from anna_jax.anna import ANNAConfig
from anna_jax.tasks import balanced_match2_tokens, match2_labels, match2_modulus
from anna_jax.tooling import fail, flags_parser, quiet_console, writable_dir, write_atomic
from experiments import plots, records


def define_flags():
  """This program's flags (defined when it runs, so importing the module for its functions defines none)."""
  return {
      'out': flags.DEFINE_string('out', 'runs/match2_construction',
                                 'Where results.jsonl, construction.md and .png go.'),
      'log2_n': flags.DEFINE_list('log2_n', [str(e) for e in range(10, 21)], 'Sequence lengths N = 2^e.'),
      'tables': flags.DEFINE_list('tables', ['1', '2', '4'], 'Hash tables l.'),
      'hashes': flags.DEFINE_list('hashes_offset', [str(o) for o in (-8, -4, -2, -1, 0, 1, 2, 3, 4, 5, 6, 8, 10)],
                                  'Hashes per table z = log2 N + offset (z >= 1).'),
      'draws': flags.DEFINE_integer('draws', 3, 'Hash draws per cell.'),
      'width': flags.DEFINE_integer('width', 128, 'Embedding width m (even): 2 x the number of frequencies.'),
      'seed': flags.DEFINE_integer('seed', 0, 'Seed of the frequencies, the sequence and the hash draws.'),
      'softmax_up_to': flags.DEFINE_integer('softmax_up_to', 2**15,
                                            'Exact softmax attention up to this N (O(N^2) time).'),
      'tolerance': flags.DEFINE_float('tolerance', 0.01, 'The error a cell must reach to count as solving Match2.'),
  }



def timed(compiled, *args):
  """(result, seconds) of one call of a compiled function."""
  t0 = time.perf_counter()
  result = jax.block_until_ready(compiled(*args))
  return result, time.perf_counter() - t0


def row_key(row):
  return json.dumps([row['kind'], row['n'], row.get('tables'), row.get('hashes'), row['draws'], row['seed'],
                     row['width']])


def evaluate_n(n, tables, hashes, draws, seed, width, softmax_up_to, done=()):
  """Rows for one N (skipping keys in `done`), yielded as they are measured."""
  modulus = match2_modulus(n)
  construction = constructions.build(modulus, width, seed)
  tokens = jnp.asarray(balanced_match2_tokens(seed, 1, n, modulus))
  labels = match2_labels(tokens, modulus)
  common = {'n': n, 'modulus': modulus, 'draws': draws, 'seed': seed, 'width': width,
            'max_false_cosine': construction.max_false_cosine, 'threshold': construction.threshold}
  table = jnp.asarray(construction.table)  # an argument of the jitted forwards: a constant would be compiled in

  def with_table(fn):
    return lambda table, *args: fn(dataclasses.replace(construction, table=table), *args)

  if n <= softmax_up_to and row_key({'kind': 'softmax', **common}) not in done:
    softmax = jax.jit(with_table(constructions.softmax_forward)).lower(table, tokens).compile()
    predictions, seconds = timed(softmax, table, tokens)
    yield {'kind': 'softmax', **common, 'error': float(jnp.mean(predictions != labels)), 'seconds': seconds,
           'beta': construction.softmax_beta(n)}
  for l in tables:
    for z in hashes:
      row = {'kind': 'anna', **common, 'tables': l, 'hashes': z}
      if row_key(row) in done:
        continue
      config = ANNAConfig(num_tables=l, num_hashes=z)
      forward = jax.jit(with_table(functools.partial(constructions.anna_forward, config=config)))
      errors, lonely, collisions, seconds = [], [], [], []
      for d in range(draws):
        projections = constructions.draw(construction, jax.random.key(seed * 1_000_003 + d), config)
        if d == 0:  # one compile per cell, outside the timing
          forward = forward.lower(table, tokens, projections).compile()
        (predictions, stats), s = timed(forward, table, tokens, projections)
        errors.append(float(jnp.mean(predictions != labels)))
        lonely.append(float(stats.no_collision_fraction))
        collisions.append(float(stats.mean_collisions))
        seconds.append(s)
      yield {**row, 'errors': errors, 'mean': float(np.mean(errors)), 'std': float(np.std(errors)),
             'no_collision_fraction': float(np.mean(lonely)), 'mean_collisions': float(np.mean(collisions)),
             'seconds': float(np.median(seconds))}


def cost(row):
  return row['tables'] * (row['hashes'] + 1)


def summary(rows, tolerance):
  """Per N: exact softmax's error and time; the cheapest anna cell with error <= tolerance and its time."""
  table = []
  for n in sorted({r['n'] for r in rows}):
    anna = [r for r in rows if r['n'] == n and r['kind'] == 'anna']
    softmax = next((r for r in rows if r['n'] == n and r['kind'] == 'softmax'), None)
    solving = [r for r in anna if r['mean'] <= tolerance]
    pick = min(solving, key=lambda r: (cost(r), r['mean'])) if solving else None
    best = min(anna, key=lambda r: (r['mean'], cost(r))) if anna else None
    one_table = [r for r in solving if r['tables'] == 1]
    table.append({'n': n, 'modulus': (anna or [softmax])[0]['modulus'], 'softmax': softmax, 'cheapest': pick,
                  'best': best, 'z_needed_l1': min((r['hashes'] for r in one_table), default=None),
                  'max_false_cosine': (anna or [softmax])[0]['max_false_cosine']})
  return table


def markdown(table, tolerance):
  lines = ['# The constructed Match2 model (Theorem 5.2), N = 2^10 .. 2^20', '',
           f'Cheapest cell: the least l (z + 1) with mean error <= {tolerance} over the draws; times are medians of '
           'the jitted forward (hashing, attention, read-out) on this machine, batch 1, one run.', '',
           '| N | M | max false cosine | exact softmax: error, time | cheapest anna cell (l, z): error, time | '
           'speed-up | best anna cell (l, z): error | z needed at l = 1 |', '|---|---|---|---|---|---|---|---|']
  for t in table:
    s, c, b = t['softmax'], t['cheapest'], t['best']
    soft = f"{s['error']:.4f}, {s['seconds']:.3g} s" if s else 'not run (O(N^2))'
    cheap = f"({c['tables']}, {c['hashes']}): {c['mean']:.4f}, {c['seconds']:.3g} s" if c else 'none in the grid'
    speed = f"{s['seconds'] / c['seconds']:.1f}x" if s and c else ''
    best = f"({b['tables']}, {b['hashes']}): {b['mean']:.4f}" if b else ''
    lines.append(f"| 2^{int(np.log2(t['n']))} | {t['modulus']} | {t['max_false_cosine']:.3f} | {soft} | {cheap} | "
                 f"{speed} | {best} | {t['z_needed_l1'] if t['z_needed_l1'] is not None else '-'} |")
  needed = [(t['n'], t['z_needed_l1']) for t in table if t['z_needed_l1'] is not None]
  if len(needed) >= 2:
    slope = plots.fitted_slope(np.log2([n for n, _ in needed]), [z for _, z in needed])
    lines += ['', f'z needed at l = 1 grows as {slope:.2f} log2 N (fitted). {plots.THEOREM_34}.']
  return '\n'.join(lines) + '\n'


def figure(rows, table):
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
  anna = [r for r in rows if r['kind'] == 'anna' and r['tables'] == 1]
  ax = axes[0]
  for offset in sorted({r['hashes'] - int(np.log2(r['n'])) for r in anna}):
    points = sorted((r['n'], r['mean']) for r in anna if r['hashes'] - int(np.log2(r['n'])) == offset)
    ax.plot(*zip(*points), 'o-', label=f'z = log2 N {offset:+d}')
  ax.set(xscale='log', xlabel='N', ylabel='error', title='anna, l = 1: error against N')
  ax.legend(fontsize=7)
  ax = axes[1]
  needed = [(t['n'], t['z_needed_l1']) for t in table if t['z_needed_l1'] is not None]
  if needed:
    slope = plots.fitted_slope(np.log2([n for n, _ in needed]), [z for _, z in needed])
    ax.plot(np.log2([n for n, _ in needed]), [z for _, z in needed], 'o-', label=f'fitted slope {slope:.2f}'
            if slope is not None else None)
    ax.plot(np.log2([n for n, _ in needed]), np.log2([n for n, _ in needed]), 'k:', label='z = log2 N')
  ax.set(xlabel='log2 N', ylabel='z', title=f'hashes needed (l = 1): Theorem 3.4 says Theta(log N)')
  ax.legend(fontsize=8)
  ax = axes[2]
  at_needed = sorted((t['n'], r) for t in table for r in anna if r['n'] == t['n'] and r['hashes'] == t['z_needed_l1'])
  if at_needed:
    ax.plot([n for n, _ in at_needed], [r['no_collision_fraction'] for _, r in at_needed], 'o-',
            label='no-collision fraction')
    ax.plot([n for n, _ in at_needed], [r['mean_collisions'] for _, r in at_needed], 's-', label='collisions / query')
  ax.set(xscale='log', xlabel='N', title='at the z needed, l = 1')
  ax.legend(fontsize=8)
  plot_times(axes[3], rows, table)
  axes[3].legend(fontsize=8)
  return plots.png(fig)[0]


def plot_times(ax, rows, table, label=''):
  """Forward time against N: exact softmax with the construction's weights, and the cheapest solving anna cell."""
  soft = sorted((r['n'], r['seconds']) for r in rows if r['kind'] == 'softmax')
  cheap = sorted((t['n'], t['cheapest']['seconds']) for t in table if t['cheapest'])
  if soft:
    ax.plot(*zip(*soft), 'o-', label=f'exact softmax (flash-style){label}')
  if cheap:
    ax.plot(*zip(*cheap), 's-', label=f'anna, cheapest solving cell{label}')
  ax.set(xscale='log', yscale='log', xlabel='N', ylabel='seconds (this CPU)', title='forward time, batch 1')


def write_reports(out, rows, tolerance):
  table = summary(rows, tolerance)
  write_atomic(os.path.join(out, 'construction.md'), markdown(table, tolerance))
  write_atomic(os.path.join(out, 'construction.png'), figure(rows, table))
  return table


def main(argv):
  del argv
  quiet_console()
  try:
    exponents = [int(e) for e in FLAGS['log2_n'].value]
    tables = [int(t) for t in FLAGS['tables'].value]
    offsets = [int(o) for o in FLAGS['hashes'].value]
  except ValueError as e:
    fail(f'--log2_n, --tables and --hashes_offset take integers: {e}', 'match2_construction')
  draws, width = FLAGS['draws'].value, FLAGS['width'].value
  if not exponents or min(exponents) < 2 or max(exponents) > 24 or min(tables, default=0) < 1 or draws < 1:
    fail('need 2 <= log2_n <= 24, tables >= 1 and draws >= 1', 'match2_construction')
  if width < 2 or width % 2:
    fail(f'--width must be even and >= 2, got {width}', 'match2_construction')
  out = FLAGS['out'].value
  writable_dir(out, 'match2_construction')
  path = os.path.join(out, 'results.jsonl')
  rows = records.read_jsonl(path)
  done = {row_key(r) for r in rows}
  for e in exponents:
    hashes = sorted({max(1, e + o) for o in offsets})
    for row in evaluate_n(2**e, tables, hashes, draws, FLAGS['seed'].value, width, FLAGS['softmax_up_to'].value, done):
      rows.append(row)
      records.write_jsonl(path, rows)
      what = (f"l={row['tables']} z={row['hashes']} error {row['mean']:.4f}" if row['kind'] == 'anna'
              else f"exact softmax error {row['error']:.4f}")
      print(f"N=2^{e}: {what}, {row['seconds']:.3g} s", flush=True)
  print(markdown(write_reports(out, rows, FLAGS['tolerance'].value), FLAGS['tolerance'].value))


FLAGS = {}  # set by define_flags() when run as a program

if __name__ == '__main__':
  FLAGS.update(define_flags())
  app.run(main, flags_parser=flags_parser('match2_construction'))
