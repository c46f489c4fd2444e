"""How ANNA's budget must grow with N, from a finished Match2 sweep over N (experiments/configs/match2_growing_n.py).

  python -m experiments.n_scaling --workdir=runs/match2_growing_n --out=experiments/results/match2_growing_n

Reads grid.jsonl (each surrogate, one per N, evaluated with `anna` over tables x hashes x draws). Per N: the
surrogate's error, the best cell, and the cheapest cell (cost l (z + 1) hash evaluations and bucket reads per
token) whose mean error is within `--tolerance` of the surrogate's, or, where none is, within `--tolerance` of the
best cell's ("best reachable"). The cheapest cell can jump between two regimes a sharp surrogate shows (many
tables with few hashes, few tables with many), so per number of tables l the report also gives the z needed: the
smallest z from which every larger z errs at most `--target` (0.05: Match2 solved), and its slope in log2 N
(Theorem 3.4: z = Theta(log N) at fixed l). Writes n_scaling.md (the tables), n_scaling.png (error against N at
fixed cells; the cheapest cell's l and cost against N with fitted slopes beside Theorem 3.4's rates; z against
log2 N; collision statistics against N) and n_scaling.jsonl (the first table's rows).
"""

import os

import numpy as np
from absl import app, flags

from anna_jax.tasks import match2_modulus
from anna_jax.tooling import fail, flags_parser, quiet_console, write_atomic
from experiments import plots, records


def define_flags():
  """This program's flags (defined when it runs, so importing the module for its functions defines none)."""
  return {
      'workdir': flags.DEFINE_string('workdir', 'runs/match2_growing_n', 'The sweep workdir (grid.jsonl).'),
      'out': flags.DEFINE_string('out', '', 'Where n_scaling.md, .png and .jsonl go (default: the workdir).'),
      'tolerance': flags.DEFINE_float('tolerance', 0.01, 'A cell counts as reaching an error within this much.'),
      'target': flags.DEFINE_float('target', SOLVED, 'z needed with l tables: the smallest z from '
                                'which every larger z in the grid has at most this error.'),
      'fixed': flags.DEFINE_list('fixed_cells', ['8:1', '16:2', '32:4', '128:6'], 'Cells (tables:hashes) whose '
                                 'error, no-collision fraction and collisions are plotted against N.'),
  }


SOLVED = 0.05  # a surrogate with a lower test error counts as solving Match2


def sequence_length(cell):
  """N of a grid cell: the task.match2.n of the run that made it."""
  return cell.field('task.match2.n')


def cost(row):
  return row.tables[0] * (row.hashes + 1)


def cheapest(rows, target):
  """The cheapest row with mean <= target (ties: lower error), or None."""
  within = [r for r in rows if r.mean <= target + 1e-12]
  return min(within, key=lambda r: (cost(r), r.mean)) if within else None


def summarise(rows, tolerance):
  """One dict per N: surrogate error, best cell, cheapest cell within tolerance (and whether of the surrogate)."""
  by_n = {}
  for r in records.latest_cells(rows):
    n = sequence_length(r)
    if n is not None and len(r.tables) == 1:
      by_n.setdefault(n, []).append(r)
  table = []
  for n in sorted(by_n):
    mine = by_n[n]
    surrogate = mine[0].surrogate_error
    best = min(mine, key=lambda r: (r.mean, cost(r)))
    of_surrogate = cheapest(mine, surrogate + tolerance)
    pick = of_surrogate or cheapest(mine, best.mean + tolerance)
    table.append({
        'n': n, 'modulus': mine[0].field('task.match2.modulus') or match2_modulus(n),
        'run': mine[0].run, 'step': mine[0].step, 'surrogate_error': surrogate,
        'best': {'tables': best.tables[0], 'hashes': best.hashes, 'error': best.mean, 'std': best.std},
        'cheapest': {'tables': pick.tables[0], 'hashes': pick.hashes, 'error': pick.mean, 'cost': cost(pick),
                     'within': 'surrogate' if of_surrogate else 'best'},
        'cells': len(mine), 'draws': mine[0].draws})
  return table, by_n


def hashes_needed(table, by_n, target):
  """{l: {N: z}}: with l tables, the smallest z from which every larger z in the grid has mean error <= target,
  over the N whose surrogate solves. "Every larger" keeps to the many-hashes regime; an isolated dip at small z
  (many tables, large buckets) does not count."""
  needed = {}
  for t in solved_rows(table):
    by_l = {}
    for r in by_n[t['n']]:
      by_l.setdefault(r.tables[0], {})[r.hashes] = r.mean
    for l, errors in sorted(by_l.items()):
      z_from = None
      for z in sorted(errors, reverse=True):
        if errors[z] > target + 1e-12:
          break
        z_from = z
      if z_from is not None:
        needed.setdefault(l, {})[t['n']] = z_from
  return dict(sorted(needed.items()))


def z_slopes(needed):
  """{l: fitted slope of the needed z in log2 N}, for the l reached at >= 2 N."""
  return {l: plots.fitted_slope(np.log2(list(at_l)), list(at_l.values())) for l, at_l in needed.items()
          if len(at_l) >= 2}


def markdown(table, tolerance, needed=None, target=SOLVED):
  lines = ['# Match2 as N grows: the trained surrogate, and `anna` (Algorithm 1) swapped in', '',
           f'Cost of a cell: l (z + 1) per token. "Cheapest" is the cheapest cell with mean error within {tolerance} '
           'of the surrogate\'s, or, marked *, within that of the best cell (the surrogate\'s error is not '
           'reachable in the grid).', '',
           '| N | M | steps | surrogate error | cells x draws | best cell (l, z): error | '
           'cheapest cell (l, z): error, cost |', '|---|---|---|---|---|---|---|']
  for t in table:
    b, c = t['best'], t['cheapest']
    star = '' if c['within'] == 'surrogate' else ' *'
    lines.append(f"| {t['n']} | {t['modulus']} | {t['step']} | {t['surrogate_error']:.4f} | "
                 f"{t['cells']} x {t['draws']} | "
                 f"({b['tables']}, {b['hashes']}): {b['error']:.4f} +- {b['std']:.4f} | "
                 f"({c['tables']}, {c['hashes']}): {c['error']:.4f}, {c['cost']}{star} |")
  solved = solved_rows(table)
  if len(solved) >= 2:
    ns = [t['n'] for t in solved]
    slopes = {name: plots.fitted_slope(np.log2(ns), np.log2([t['cheapest'][name] for t in solved]))
              for name in ('tables', 'cost')}
    z_slope = plots.fitted_slope(np.log2(ns), [t['cheapest']['hashes'] for t in solved])
    lines += ['', f"Fitted on the cheapest cells of the N whose surrogate solves Match2 (error < {SOLVED}): "
              f"l ~ N^{slopes['tables']:.2f}, cost ~ N^{slopes['cost']:.2f}, z ~ {z_slope:.2f} log2 N. "
              f'{plots.THEOREM_34}.']
  else:
    lines += ['', f'No fit: {len(solved)} N with a surrogate that solves Match2 (error < {SOLVED}); the budget a '
              "cell needs to match an unsolved surrogate says nothing about Theorem 3.4's rates."]
  if needed:
    ns = [t['n'] for t in solved]
    slopes = z_slopes(needed)
    lines += ['', f'z needed with l tables: the smallest z from which every larger z in the grid errs at most '
              f'{target} (N whose surrogate solves; - : not reached):', '',
              '| N | ' + ' | '.join(f'l = {l}' for l in needed) + ' |', '|---|' + '---|' * len(needed)]
    lines += [f'| {n} | ' + ' | '.join(str(at_l.get(n, '-')) for at_l in needed.values()) + ' |' for n in ns]
    if slopes:
      lines += ['', 'Fitted z ~ s log2 N at each l reached at two or more N: ' +
                ', '.join(f'l = {l}: s = {s:.2f}' for l, s in slopes.items()) + '.']
  return '\n'.join(lines) + '\n'


def solved_rows(table):
  """The N whose surrogate solves the task: only there is the (l, z) that matches it a budget ANNA needs."""
  return [t for t in table if t['surrogate_error'] < SOLVED]


def figure(table, by_n, fixed, needed):
  import matplotlib.pyplot as plt

  ns = [t['n'] for t in table]
  fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
  ax = axes[0]
  for l, z in fixed:
    points = [(n, r.mean) for n in ns for r in by_n[n] if r.tables[0] == l and r.hashes == z]
    if points:
      ax.plot(*zip(*points), 'o-', label=f'l={l}, z={z}')
  ax.plot(ns, [t['surrogate_error'] for t in table], 'k--', label='surrogate')
  ax.set(xscale='log', xlabel='N', ylabel='test error', title='error against N at fixed cells')
  ax.legend(fontsize=8)
  solved = solved_rows(table)
  solved_ns = [t['n'] for t in solved]
  ax = axes[1]
  for name, marker in (('tables', 'o'), ('cost', 's')):
    y = [t['cheapest'][name] for t in solved]
    slope = plots.fitted_slope(np.log2(solved_ns), np.log2(y)) if y else None
    ax.plot(solved_ns, y, marker + '-', label=f'{name} (slope {slope:.2f})' if slope is not None else name)
  ax.set(xscale='log', yscale='log', xlabel='N',
         title=f'cheapest cell, N whose surrogate errs < {SOLVED}: l, l (z + 1)')
  ax.legend(fontsize=8)
  ax = axes[2]
  z = [t['cheapest']['hashes'] for t in solved]
  slope = plots.fitted_slope(np.log2(solved_ns), z) if z else None
  ax.plot(np.log2(solved_ns), z, 'ko-', label=f'cheapest cell (slope {slope:.2f})' if slope is not None
          else 'cheapest cell')
  slopes = z_slopes(needed)
  for l, at_l in needed.items():
    if l in slopes:
      ax.plot(np.log2(list(at_l)), list(at_l.values()), '.--', label=f'l = {l}: z needed (slope {slopes[l]:.2f})')
  ax.set(xlabel='log2 N', ylabel='z', title='hashes needed: Theorem 3.4 says z = Theta(log N)')
  ax.legend(fontsize=7)
  ax = axes[3]
  for l, z in fixed:
    points = [(n, r.no_collision_fraction, r.mean_collisions) for n in ns for r in by_n[n]
              if r.tables[0] == l and r.hashes == z]
    if points:
      line, = ax.plot([p[0] for p in points], [p[1] for p in points], 'o-', label=f'no collision, l={l} z={z}')
      known = [p for p in points if p[2] is not None]  # grids before collisions were recorded lack them
      ax.plot([p[0] for p in known], [p[2] / (l * p[0]) for p in known], 's:', color=line.get_color(),
              label=f'collisions / (l N), l={l} z={z}')
  ax.set(xscale='log', xlabel='N', title='no-collision fraction (o); share of keys a query meets per table (s)')
  ax.legend(fontsize=6)
  fig.tight_layout()
  return plots.png(fig)[0]


def main(argv):
  del argv
  quiet_console()
  path = os.path.join(FLAGS['workdir'].value, 'grid.jsonl')
  rows = records.read_cells(path)
  if not rows:
    fail(f'no grid rows in {path}: run experiments.main (--mode=grid) on the sweep first', 'n_scaling')
  try:
    fixed = [tuple(int(v) for v in cell.split(':')) for cell in FLAGS['fixed'].value]
  except ValueError:
    fail(f'--fixed_cells wants tables:hashes pairs, got {FLAGS["fixed"].value}', 'n_scaling')
  table, by_n = summarise(rows, FLAGS['tolerance'].value)
  if not table:
    fail(f'no Match2 grid rows with a sequence length in {path}', 'n_scaling')
  target = FLAGS['target'].value
  needed = hashes_needed(table, by_n, target)
  text = markdown(table, FLAGS['tolerance'].value, needed, target)
  out = FLAGS['out'].value or FLAGS['workdir'].value
  os.makedirs(out, exist_ok=True)
  write_atomic(os.path.join(out, 'n_scaling.md'), text)
  records.write_jsonl(os.path.join(out, 'n_scaling.jsonl'), table)
  write_atomic(os.path.join(out, 'n_scaling.png'), figure(table, by_n, fixed, needed))
  print(text)


FLAGS = {}  # set by define_flags() when run as a program

if __name__ == '__main__':
  FLAGS.update(define_flags())
  app.run(main, flags_parser=flags_parser('n_scaling'))
