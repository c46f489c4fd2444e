"""Theorems 5.4 / 5.6 executed: the constructed k-hop model (`anna_jax.khop_construction`, weights set, not trained)
from N = 2^10 upwards, with `anna` over tables x hashes x draws and, where it fits, the same weights with exact
softmax attention.

  python -m experiments.khop_construction --out=experiments/results/khop_construction

Per (alphabet, B, N): one sequence of N uniform symbols (batch 1, seeded), hop counts --ks; for every (l, z) the
error against the labeler (`anna_jax.tasks.khop_targets`) per k, averaged over the hash draws, with the
no-collision fraction and collisions per query of the first layer, and the median forward time over the draws
(all layers, every k of --ks in one call, jitted, compiled ahead of the timed calls); exact softmax with the same
weights (flash-style, O(N^2) time; one timed call) up to --softmax_up_to. Times are of this machine, measured one
after another in one run: quote their ratios. Rows go to results.jsonl as they are measured (a rerun skips the
rows it has); construction.md and construction.png are rebuilt from all of them.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from anna_jax import khop_construction
from anna_jax.anna import ANNAConfig
from anna_jax.tasks import khop_targets
from anna_jax.tooling import fail, flags_parser, quiet_console, writable_dir, write_atomic
from experiments import plots, records
from experiments.match2_construction import cost, plot_times, timed


def define_flags():
  """This program's flags (defined when it runs, so importing the module for its functions defines none)."""
  return {
      'out': flags.DEFINE_string('out', 'runs/khop_construction', 'Where results.jsonl, construction.md and .png go.'),
      'log2_n': flags.DEFINE_list('log2_n', [str(e) for e in range(10, 17, 2)], 'Sequence lengths N = 2^e.'),
      'ks': flags.DEFINE_list('ks', ['0', '1', '2', '4', '8', '16'], 'Hop counts k evaluated (max_k = the largest).'),
      'alphabets': flags.DEFINE_list('alphabets', ['4', '64'], 'Alphabet sizes.'),
      'base': flags.DEFINE_integer('base', 2, 'B: prefix-maximum layers take B - 1 lookup heads each.'),
      'tables': flags.DEFINE_list('tables', ['1', '2'], 'Hash tables l.'),
      # z = log2 N + 16 solves every k <= 16 at one table (experiments/results/khop_construction): scan around it.
      'hashes': flags.DEFINE_list('hashes_offset', ['4', '8', '12', '16', '20'],
                                  'Hashes per table z = log2 N + offset (z >= 1).'),
      'draws': flags.DEFINE_integer('draws', 2, 'Hash draws per cell.'),
      'width': flags.DEFINE_integer('width', 128, 'Position-code width (even): 2 x the number of frequencies.'),
      'seed': flags.DEFINE_integer('seed', 0, 'Seed of the codes, the sequence and the hash draws.'),
      'softmax_up_to': flags.DEFINE_integer('softmax_up_to', 2**14,
                                            'Exact softmax attention up to this N (O(N^2) time).'),
      'tolerance': flags.DEFINE_float('tolerance', 0.01, 'The error every k must reach for a cell to solve.'),
  }


def row_key(row):
  return json.dumps([row['kind'], row['n'], row['alphabet'], row['base'], row.get('tables'), row.get('hashes'),
                     row['draws'], row['seed'], row['width'], row['ks']])


def every_k(one_k, ks):
  """one_k(k) -> (predictions, stats) for every k at once: the layers before the hops do not depend on k, so
  vmap computes them once and batches only the pointer lookups."""
  return jax.vmap(one_k, out_axes=(0, None))(ks)


def evaluate_n(n, alphabet, ks, base, tables, hashes, draws, seed, width, softmax_up_to, done=()):
  """Rows for one (N, alphabet) (skipping keys in `done`), yielded as they are measured."""
  construction = khop_construction.build(n, alphabet, max(ks), base, width, seed)
  x = jnp.asarray(np.random.default_rng(seed).integers(0, alphabet, n))
  targets = {k: khop_targets(x, k, alphabet, max(ks)) for k in ks}
  heads = construction.layer_heads()
  common = {'n': n, 'alphabet': alphabet, 'base': base, 'ks': ks, 'draws': draws, 'seed': seed, 'width': width,
            'layers': len(heads), 'heads': sum(heads), 'max_false_cosine': construction.max_false_cosine}

  hops = jnp.asarray(ks)

  def errors_by_k(predictions):  # (len(ks), n)
    return {str(k): float(jnp.mean(p != targets[k])) for k, p in zip(ks, predictions)}

  if n <= softmax_up_to and row_key({'kind': 'softmax', **common}) not in done:
    attend = khop_construction.softmax_attend(construction)
    softmax = jax.jit(lambda x, ks: every_k(lambda k: (khop_construction.forward(construction, x, k, attend)[0], 0),
                                            ks)[0]).lower(x, hops).compile()
    predictions, seconds = timed(softmax, x, hops)
    by_k = errors_by_k(predictions)
    yield {'kind': 'softmax', **common, 'errors_by_k': by_k, 'mean': float(np.mean(list(by_k.values()))),
           'seconds': seconds, 'beta': construction.softmax_beta}
  for l in tables:
    for z in hashes:
      row = {'kind': 'anna', **common, 'tables': l, 'hashes': z}
      if row_key(row) in done:
        continue
      config = ANNAConfig(num_tables=l, num_hashes=z)

      def predict(x, ks, projections):
        attend = khop_construction.anna_attend(projections, config)

        def one_k(k):
          predictions, stats = khop_construction.forward(construction, x, k, attend)
          return predictions, stats[0]  # the first layer's (no-collision fraction, collisions per query)
        return every_k(one_k, ks)

      forward = jax.jit(predict)
      per_draw, lonely, collisions, seconds = [], [], [], []
      for d in range(draws):
        projections = khop_construction.draw(construction, jax.random.key(seed * 1_000_003 + d), config)
        if d == 0:  # one compile per cell, outside the timing
          forward = forward.lower(x, hops, projections).compile()
        (predictions, stats), s = timed(forward, x, hops, projections)
        per_draw.append(errors_by_k(predictions))
        lonely.append(float(stats[0]))
        collisions.append(float(stats[1]))
        seconds.append(s)
      by_k = {str(k): float(np.mean([e[str(k)] for e in per_draw])) for k in ks}
      yield {**row, 'errors_by_k': by_k, 'mean': float(np.mean(list(by_k.values()))),
             'worst_k_error': max(by_k.values()), 'no_collision_fraction': float(np.mean(lonely)),
             'mean_collisions': float(np.mean(collisions)), 'seconds': float(np.median(seconds))}


def variant(row):
  """(alphabet, B): the model a row measured, besides N."""
  return row['alphabet'], row['base']


def summary(rows, tolerance):
  """Per (alphabet, B, N): exact softmax; the cheapest anna cell whose error is <= tolerance at every k; the best."""
  table = []
  for alphabet, base, n in sorted({(*variant(r), r['n']) for r in rows}):
    mine = [r for r in rows if (*variant(r), r['n']) == (alphabet, base, n)]
    anna = [r for r in mine if r['kind'] == 'anna']
    softmax = next((r for r in mine if r['kind'] == 'softmax'), None)
    solving = [r for r in anna if r['worst_k_error'] <= tolerance]
    one_table = [r for r in solving if r['tables'] == 1]
    # The least solving z at l = 1 is "z needed" only where a range of z was tried (3 or more), not a lone cell.
    scanned = len({r['hashes'] for r in anna if r['tables'] == 1}) >= 3
    table.append({'n': n, 'alphabet': alphabet, 'base': base, 'layers': mine[0]['layers'], 'heads': mine[0]['heads'],
                  'softmax': softmax, 'cheapest': min(solving, key=lambda r: (cost(r), r['mean']), default=None),
                  'best': min(anna, key=lambda r: (r['worst_k_error'], cost(r)), default=None),
                  'z_needed_l1': min((r['hashes'] for r in one_table), default=None) if scanned else None})
  return table


def markdown(table, tolerance):
  lines = ['# The constructed k-hop model (Theorems 5.4 / 5.6), weights set', '',
           f'A cell solves when its mean error over the draws is <= {tolerance} at every k; the cheapest is the least '
           'l (z + 1). Times: median jitted forward (every layer) on this machine, batch 1, one run.', '',
           '| alphabet | B | N | layers | heads | exact softmax: worst-k error, time | cheapest anna cell (l, z): time | '
           'speed-up | best anna cell (l, z): worst-k error | z needed at l = 1 |', '|---' * 10 + '|']
  for t in table:
    s, c, b = t['softmax'], t['cheapest'], t['best']
    soft = f"{max(s['errors_by_k'].values()):.4f}, {s['seconds']:.3g} s" if s else 'not run (O(N^2))'
    cheap = f"({c['tables']}, {c['hashes']}): {c['seconds']:.3g} s" if c else 'none in the grid'
    speed = f"{s['seconds'] / c['seconds']:.1f}x" if s and c else ''
    best = f"({b['tables']}, {b['hashes']}): {b['worst_k_error']:.4f}" if b else ''
    z = t['z_needed_l1'] if t['z_needed_l1'] is not None else '-'
    lines.append(f"| {t['alphabet']} | {t['base']} | 2^{int(np.log2(t['n']))} | {t['layers']} | {t['heads']} | "
                 f"{soft} | {cheap} | {speed} | {best} | {z} |")
  for alphabet, base in sorted({variant(t) for t in table}):
    needed = [(t['n'], t['z_needed_l1']) for t in table
              if variant(t) == (alphabet, base) and t['z_needed_l1'] is not None]
    slope = plots.fitted_slope(np.log2([n for n, _ in needed]), [z for _, z in needed]) if needed else None
    if slope is not None:
      lines.append(f'\nAlphabet {alphabet}, B = {base}: z needed at l = 1 grows as {slope:.2f} log2 N (fitted over '
                   f'{len(needed)} N). {plots.THEOREM_34}.')
  return '\n'.join(lines) + '\n'


def figure(rows, table):
  import matplotlib.pyplot as plt

  variants = sorted({variant(r) for r in rows})
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  ax = axes[0]
  for alphabet, base in variants:
    anna = [r for r in rows if r['kind'] == 'anna' and r['tables'] == 1 and variant(r) == (alphabet, base)]
    for offset in sorted({r['hashes'] - int(np.log2(r['n'])) for r in anna}):
      points = sorted((r['n'], r['worst_k_error']) for r in anna if r['hashes'] - int(np.log2(r['n'])) == offset)
      ax.plot(*zip(*points), 'o-', label=f'A={alphabet} B={base}, z = log2 N {offset:+d}')
  ax.set(xscale='log', xlabel='N', ylabel='worst error over k', title='anna, l = 1')
  ax.legend(fontsize=6)
  ax = axes[1]
  for alphabet, base in variants:
    needed = [(t['n'], t['z_needed_l1']) for t in table
              if variant(t) == (alphabet, base) and t['z_needed_l1'] is not None]
    if needed:
      ax.plot(np.log2([n for n, _ in needed]), [z for _, z in needed], 'o-', label=f'A={alphabet} B={base}')
  ax.set(xlabel='log2 N', ylabel='z', title='hashes needed (l = 1)')
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  for v in variants:
    plot_times(axes[2], [r for r in rows if variant(r) == v], [t for t in table if variant(t) == v],
               f', A={v[0]} B={v[1]}')
  axes[2].legend(fontsize=7)
  return plots.png(fig)[0]


def write_reports(out, rows, tolerance):
  table = summary(rows, tolerance)
  write_atomic(os.path.join(out, 'construction.md'), markdown(table, tolerance))
  write_atomic(os.path.join(out, 'construction.png'), figure(rows, table))
  return table


def main(argv):
  del argv
  quiet_console()
  try:
    exponents, ks, alphabets, tables, offsets = ([int(v) for v in FLAGS[name].value]
                                                 for name in ('log2_n', 'ks', 'alphabets', 'tables', 'hashes'))
  except ValueError as e:
    fail(f'--log2_n, --ks, --alphabets, --tables and --hashes_offset take integers: {e}', 'khop_construction')
  draws, width, base = FLAGS['draws'].value, FLAGS['width'].value, FLAGS['base'].value
  if not exponents or min(exponents) < 2 or max(exponents) > 22 or min(tables, default=0) < 1 or draws < 1:
    fail('need 2 <= log2_n <= 22, tables >= 1 and draws >= 1', 'khop_construction')
  if not ks or min(ks) < 0 or min(alphabets, default=0) < 2 or base < 2:
    fail('need --ks >= 0, --alphabets >= 2 and --base >= 2', 'khop_construction')
  if width < 2 or width % 2:
    fail(f'--width must be even and >= 2, got {width}', 'khop_construction')
  out = FLAGS['out'].value
  writable_dir(out, 'khop_construction')
  path = os.path.join(out, 'results.jsonl')
  rows = records.read_jsonl(path)
  done = {row_key(r) for r in rows}
  for alphabet in alphabets:
    for e in exponents:
      hashes = sorted({max(1, e + o) for o in offsets})
      for row in evaluate_n(2**e, alphabet, ks, base, tables, hashes, draws, FLAGS['seed'].value, width,
                            FLAGS['softmax_up_to'].value, done):
        rows.append(row)
        records.write_jsonl(path, rows)
        what = f"l={row['tables']} z={row['hashes']}" if row['kind'] == 'anna' else 'exact softmax'
        print(f"A={alphabet} N=2^{e}: {what} error by k {row['errors_by_k']}, {row['seconds']:.3g} s", flush=True)
  print(markdown(write_reports(out, rows, FLAGS['tolerance'].value), FLAGS['tolerance'].value))


FLAGS = {}  # set by define_flags() when run as a program

if __name__ == '__main__':
  FLAGS.update(define_flags())
  app.run(main, flags_parser=flags_parser('khop_construction'))
