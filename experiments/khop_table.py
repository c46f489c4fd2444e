"""The k-hop depth table of a finished sweep (experiments/configs/khop_depth_table.py): per attention kind, the
error for every (depth, k) as a heat map and the largest k solved per depth, beside Sanford et al.'s full
attention row and the theory's prediction.

  python -m experiments.khop_table --workdir=runs/khop_depth_table

Reads runs/*/result.json (every trained kind, evaluated with its own attention) and grid.jsonl (the
unit_softmax surrogates evaluated with `anna`, Algorithm 1, in every layer: per depth the best grid cell and
one fixed cell). Writes khop_table.md, khop_table.png and results.jsonl (every run's result.json, named) to --out
(default: the workdir).
"""

import os
import re

from absl import app, flags

from anna_jax import registry
from anna_jax.tooling import fail, flags_parser, write_atomic
from experiments import metrics, records
from experiments.plots import heat_maps

_WORKDIR = flags.DEFINE_string('workdir', 'runs/khop_depth_table', 'The sweep workdir (runs/ and grid.jsonl).')
_OUT = flags.DEFINE_string('out', '', 'Where khop_table.md and khop_table.png go (default: the workdir).')
_FIXED = flags.DEFINE_list('fixed_cell', ['16', '4'], 'The fixed grid cell reported beside the best: tables '
                           'per layer, hashes.')

# Sanford, Hsu, Telgarsky (ICML 2024), full attention, N = 100, width 128, 4 heads, 100k steps: the largest k
# with error < 5% at depth 2..6 (../shared/SPEC.md).
SANFORD_FULL = {2: 1, 3: 3, 4: 5, 5: 8, 6: 15}


def variant(name):
  """The panel a run belongs to: its name without the task and the depth, e.g. 'unit_softmax-beta=8'."""
  return re.sub(r'-depth=\d+', '', name.removeprefix('khop-'))


def trained_panels(workdir):
  """({variant: {depth: {k: error}}}, [every finished run's result, with its name]) from the runs' result.json."""
  panels, results = {}, []
  runs = os.path.join(workdir, 'runs')
  for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
    result = records.read_result(os.path.join(runs, name))
    if result and result.fields.get('task.name') == 'khop' and result.status == 'done':
      panels.setdefault(variant(name), {})[result.fields['model.depth']] = metrics.errors_by_k(result.metrics)
      results.append(dict(result))
  return panels, results


def grid_panels(workdir, fixed_tables, fixed_hashes):
  """{variant: {depth: {k: error}}} of `anna` swapped into the surrogates: the best cell per depth (lowest mean
  error) and the fixed cell; and {(variant, depth): the best cell's (tables, hashes)}."""
  cells = records.latest_cells(records.read_cells(os.path.join(workdir, 'grid.jsonl')))
  panels, winners = {}, {}
  for run in dict.fromkeys(c.run for c in cells):
    mine = [c for c in cells if c.run == run and c.errors_by_k is not None]
    if not mine:
      continue
    depth = mine[0].field('model.depth', mine[0].depth)
    source = variant(run)
    best = min(mine, key=lambda c: c.mean)
    label = f'anna best cell <- {source}'
    panels.setdefault(label, {})[depth] = dict(best.errors_by_k)
    winners[(label, depth)] = (best.tables[0], best.hashes)
    fixed = [c for c in mine if set(c.tables) == {fixed_tables} and c.hashes == fixed_hashes]
    if fixed:
      fixed_label = f'anna l={fixed_tables} z={fixed_hashes} <- {source}'
      panels.setdefault(fixed_label, {})[depth] = dict(fixed[0].errors_by_k)
  return panels, winners


def kind_of(name):
  """The attention kind of a panel ('anna best cell <- unit_softmax-beta=8' is anna); '' if none."""
  head = name.split(' <- ')[0]
  return max((k for k in registry.names() if head.startswith(k)), key=len, default='')


def ordered(panels):
  """Panels by kind in registration order (the kinds' columns), then by name."""
  order = {name: i for i, name in enumerate(registry.names())}
  return dict(sorted(panels.items(), key=lambda item: (order.get(kind_of(item[0]), len(order)), item[0])))


def markdown(panels, winners):
  names = list(panels)
  depths = sorted({d for p in panels.values() for d in p} | set(SANFORD_FULL))
  lines = ['# k-hop: the largest k solved (error < 5% on every k\' <= k) per depth and attention kind', '',
           '`-1`: not even k = 0; blank: not run. Sanford et al.: full attention at N = 100, width 128, 100k steps.',
           '', '| depth | ' + ' | '.join(names) + ' | Sanford et al. (full) |',
           '|---|' + '---|' * (len(names) + 1)]
  for d in depths:
    cells = []
    for name in names:
      if d not in panels[name]:
        cells.append('')
        continue
      solved = str(metrics.max_k_solved(panels[name][d]))
      if (name, d) in winners:
        solved += ' (l={}, z={})'.format(*winners[(name, d)])
      cells.append(solved)
    lines.append(f'| {d} | ' + ' | '.join(cells) + f' | {SANFORD_FULL.get(d, "")} |')
  lines += ['', '## What the theory predicts', '']
  lines += [f'- {kind}: {registry.get(kind).theory}' for kind in dict.fromkeys(kind_of(n) for n in names)
            if kind and registry.get(kind).theory]
  lines += ['', '## Error per (depth, k), percent', '']
  for name in names:
    ks = sorted({k for p in panels[name].values() for k in p})
    lines += [f'### {name}', '', '| depth | ' + ' | '.join(f'k={k}' for k in ks) + ' |', '|---|' + '---|' * len(ks)]
    for d in sorted(panels[name]):
      lines.append(f'| {d} | ' + ' | '.join(f'{100 * panels[name][d][k]:.1f}' if k in panels[name][d] else ''
                                            for k in ks) + ' |')
    lines.append('')
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    fixed_tables, fixed_hashes = (int(x) for x in _FIXED.value)
  except ValueError:
    fail(f'--fixed_cell needs two integers (tables, hashes), got {",".join(_FIXED.value)}')
  workdir = _WORKDIR.value
  panels, results = trained_panels(workdir)
  anna, winners = grid_panels(workdir, fixed_tables, fixed_hashes)
  panels = ordered({**panels, **anna})
  if not panels:
    fail(f'no finished k-hop runs under {workdir}/runs')
  out = _OUT.value or workdir
  os.makedirs(out, exist_ok=True)
  write_atomic(os.path.join(out, 'khop_table.md'), markdown(panels, winners))
  write_atomic(os.path.join(out, 'khop_table.png'), heat_maps(panels))
  records.write_jsonl(os.path.join(out, 'results.jsonl'), results)
  print(open(os.path.join(out, 'khop_table.md')).read())


if __name__ == '__main__':
  app.run(main, flags_parser=flags_parser('anna-jax'))
