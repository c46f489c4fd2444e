"""The k-hop depth table of a finished sweep (experiments/configs/khop_depth_table.py): per attention kind, the
error for every (depth, k) as a heat map and the largest k solved per depth, beside Sanford et al.'s full
attention row and the theory's prediction.

  python -m experiments.khop_table --workdir=runs/khop_depth_table

Reads runs/*/result.json (every trained kind, evaluated with its own attention) and grid.jsonl (the
unit_softmax surrogates evaluated with `anna`, Algorithm 1, in every layer: per depth the best grid cell and
one fixed cell). Writes khop_table.md, khop_table.png and results.jsonl (every run's result.json, named) to --out
(default: the workdir).
"""

import io
import json
import os
import re

import numpy as np
from absl import app, flags

from experiments import grid, train
from experiments.cli import fail, flags_parser
from experiments.files import write_atomic

_WORKDIR = flags.DEFINE_string('workdir', 'runs/khop_depth_table', 'The sweep workdir (runs/ and grid.jsonl).')
_OUT = flags.DEFINE_string('out', '', 'Where khop_table.md and khop_table.png go (default: the workdir).')
_FIXED = flags.DEFINE_list('fixed_cell', ['16', '4'], 'The fixed grid cell reported beside the best: tables '
                           'per layer, hashes.')

# Sanford, Hsu, Telgarsky (ICML 2024), full attention, N = 100, width 128, 4 heads, 100k steps: the largest k
# with error < 5% at depth 2..6 (../shared/SPEC.md).
SANFORD_FULL = {2: 1, 3: 3, 4: 5, 5: 8, 6: 15}
THEORY = {
    'full': 'depth O(log k): k solved can double per layer (Sanford et al.)',
    'unit_softmax': 'as full attention (a softmax attention over unit-norm q, k)',
    'anna': 'depth O(log k) (Theorem 5.6): as full attention',
    'anna_softmax': 'no theorem; ANNA-like sparsity, so O(log k) is the hope',
    'reformer': 'O(1) bucket size needs Omega(log N) layers (Appendix E)',
    'lowrank': 'depth Omega(k) unless width Omega(N / k^6) (Sanford et al.)',
}


def variant(name):
  """The panel a run belongs to: its name without the task and the depth, e.g. 'unit_softmax-beta=8'."""
  return re.sub(r'-depth=\d+', '', name.removeprefix('khop-'))


def errors_of(result):
  return {int(key.removeprefix('eval/error_k')): value for key, value in result.items()
          if key.startswith('eval/error_k')}


def trained_panels(workdir):
  """({variant: {depth: {k: error}}}, [every finished run's result, with its name]) from the runs' result.json."""
  panels, results = {}, []
  runs = os.path.join(workdir, 'runs')
  for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
    path = os.path.join(runs, name, 'result.json')
    if not os.path.exists(path):
      continue
    with open(path) as f:
      result = json.load(f)
    if result.get('task.name') == 'khop' and result.get('status') == 'done':
      panels.setdefault(variant(name), {})[result['model.depth']] = errors_of(result)
      results.append({'name': name, **result})
  return panels, results


def grid_panels(workdir, fixed_tables, fixed_hashes):
  """{variant: {depth: {k: error}}} of `anna` swapped into the surrogates: the best cell per depth (lowest mean
  error) and the fixed cell; and {(variant, depth): the best cell's (tables, hashes)}."""
  rows = grid.latest_rows(grid.read_rows(os.path.join(workdir, 'grid.jsonl')))
  panels, winners = {}, {}
  for run in dict.fromkeys(r['run'] for r in rows):
    mine = [r for r in rows if r['run'] == run and 'errors_by_k' in r]
    if not mine:
      continue
    depth = len(mine[0]['tables'])
    source = variant(run)
    best = min(mine, key=lambda r: r['mean'])
    label = f'anna best cell <- {source}'
    panels.setdefault(label, {})[depth] = {int(k): e for k, e in best['errors_by_k'].items()}
    winners[(label, depth)] = (best['tables'][0], best['hashes'])
    fixed = [r for r in mine if set(r['tables']) == {fixed_tables} and r['hashes'] == fixed_hashes]
    if fixed:
      fixed_label = f'anna l={fixed_tables} z={fixed_hashes} <- {source}'
      panels.setdefault(fixed_label, {})[depth] = {int(k): e for k, e in fixed[0]['errors_by_k'].items()}
  return panels, winners


def heat_maps(panels):
  """PNG bytes: error per (depth, k), one panel per variant, one colour scale (0..1)."""
  import matplotlib.pyplot as plt

  names = list(panels)
  columns = min(4, len(names))
  rows_ = -(-len(names) // columns)
  fig, axes = plt.subplots(rows_, columns, figsize=(3.6 * columns, 2.9 * rows_), squeeze=False,
                           layout='constrained')  # room for the shared colour bar
  image = None
  for ax, name in zip(axes.flat, names):
    depths = sorted(panels[name])
    ks = sorted({k for d in depths for k in panels[name][d]})
    values = np.full((len(depths), len(ks)), np.nan)
    for i, d in enumerate(depths):
      for j, k in enumerate(ks):
        values[i, j] = panels[name][d].get(k, np.nan)
    image = ax.imshow(values, cmap='viridis_r', vmin=0.0, vmax=1.0, aspect='auto', origin='lower')
    for i in range(len(depths)):
      for j in range(len(ks)):
        if np.isfinite(values[i, j]):
          ax.text(j, i, f'{100 * values[i, j]:.0f}', ha='center', va='center', fontsize=6,
                  color='white' if values[i, j] > 0.5 else 'black')
    ax.set_xticks(range(len(ks)), ks)
    ax.set_yticks(range(len(depths)), depths)
    ax.set_xlabel('k (hops)')
    ax.set_ylabel('depth')
    ax.set_title(name, fontsize=8)
  for ax in list(axes.flat)[len(names):]:
    ax.axis('off')
  if image is not None:
    fig.colorbar(image, ax=axes.ravel().tolist(), label='error on answer tokens (cells: %)', shrink=0.8)
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  plt.close(fig)
  return buffer.getvalue()


KIND_ORDER = ('full', 'unit_softmax', 'anna', 'anna_softmax', 'reformer', 'lowrank')


def kind_of(name):
  """The attention kind of a panel ('anna best cell <- unit_softmax-beta=8' is anna)."""
  head = name.split(' <- ')[0]
  return max((k for k in KIND_ORDER if head.startswith(k)), key=len, default='')


def ordered(panels):
  return dict(sorted(panels.items(), key=lambda item: (KIND_ORDER.index(kind_of(item[0])), item[0])))


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
      solved = str(train.max_k_solved(panels[name][d]))
      if (name, d) in winners:
        solved += ' (l={}, z={})'.format(*winners[(name, d)])
      cells.append(solved)
    lines.append(f'| {d} | ' + ' | '.join(cells) + f' | {SANFORD_FULL.get(d, "")} |')
  lines += ['', '## What the theory predicts', '']
  lines += [f'- {kind}: {THEORY[kind]}' for kind in dict.fromkeys(kind_of(n) for n in names) if kind in THEORY]
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
  write_atomic(os.path.join(out, 'results.jsonl'), ''.join(json.dumps(r, sort_keys=True) + '\n' for r in results))
  print(open(os.path.join(out, 'khop_table.md')).read())


if __name__ == '__main__':
  app.run(main, flags_parser=flags_parser('anna-jax'))
