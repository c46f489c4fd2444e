"""The k-hop length table of finished runs (experiments/configs/khop_length_table.py): per alphabet regime and
sequence length N, every kind's largest k solved, errors per k, steps, speed, training time and memory; heat maps
(N x k per kind); time-to-accuracy curves per cell; and which kind first reaches each k.

  python -m experiments.length_table --workdir=runs/khop_length --out=experiments/results/khop_length_table

Reads <workdir>/n<N>_a<ALPHABET>/runs/*/ (result.json, evaluations.jsonl, config.json). A run warm-started from
another (train.init_from) is charged that run's training time too: its curve starts where its source's ended.
Times are training seconds as the runs logged them (evaluation, checkpoints and compilation left out), so they
are only as clean as the machine was while the runs trained (the results README says how they ran); the steps
each kind needed are machine-free.
"""

import os
import re

from absl import app, flags

from anna_jax.tooling import fail, flags_parser, write_atomic
from experiments import metrics, plots, records
from experiments.plots import heat_maps

CELL = re.compile(r'n(\d+)_a(\d+)$')


def regime(n, alphabet):
  return 'alphabet 4' if alphabet == 4 else 'alphabet N / 8' if alphabet * 8 == n else f'alphabet {alphabet}'


def variant(result):
  """A run's column: its kind, 'anna' marked as trained through from a warm start."""
  kind = result.fields['attention.kind']
  return f'{kind} (warm from full)' if result.fields.get('train.init_from') else kind


def stopped_result(run_dir, name, history):
  """A RunResult (status 'stopped') of a run that has evaluated but not finished (killed, or still training): its
  recorded fields and its last evaluation; None if it has neither."""
  fields = records.recorded_fields(run_dir)
  if not fields or not history:
    return None
  last = history[-1]
  return records.RunResult(name, 'stopped', last['step'], fields, {k: v for k, v in last.items() if '/' in k}, {})


def load_runs(workdir):
  """Every k-hop run of the length table that has evaluated (finished, or stopped with its last evaluation): dicts of n, alphabet, variant, result, history (rows with
  'seconds', training time charged to it, its source's included)."""
  runs, by_dir = [], {}
  for cell in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
    match = CELL.match(cell)
    if not match or not os.path.isdir(os.path.join(workdir, cell, 'runs')):
      continue
    for name in sorted(os.listdir(os.path.join(workdir, cell, 'runs'))):
      run_dir = os.path.join(workdir, cell, 'runs', name)
      history = records.read_history(run_dir)
      result = records.read_result(run_dir) or stopped_result(run_dir, name, history)
      if result is None or result.fields.get('task.name') != 'khop':
        continue
      run = dict(n=int(match[1]), alphabet=int(match[2]), variant=variant(result), result=result,
                 history=history, dir=os.path.abspath(run_dir))
      by_dir[run['dir']] = run
      runs.append(run)
  for run in runs:  # charge a warm start its source's training time
    source = by_dir.get(os.path.abspath(run['result'].fields.get('train.init_from') or ''))
    before = source['history'][-1]['train_seconds'] if source and source['history'] else 0.0
    run['start_seconds'] = before
    run['history'] = [{**row, 'seconds': before + row['train_seconds']} for row in run['history']]
  return runs


def first_reaching(run, k):
  """(seconds, steps) of the first evaluation at which `run` solved k (every k' <= k below 5%), or None."""
  for row in run['history']:
    if metrics.max_k_solved(metrics.errors_by_k(row)) >= k:
      return row['seconds'], row['step']
  return None


def table_rows(runs):
  lines = ['| regime | N | kind | largest k solved | errors k = 0..8 (%) | steps | train steps/s | training time '
           '(s, its warm start included) | compiled step memory (MiB) | peak RSS (MiB) |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for run in sorted(runs, key=lambda r: (r['alphabet'] != 4, r['n'], r['variant'])):
    result, errors = run['result'], metrics.errors_by_k(run['result'])
    seconds = run['history'][-1]['seconds'] if run['history'] else result.info.get('train_seconds', 0.0)
    lines.append(
        f'| {regime(run["n"], run["alphabet"])} | {run["n"]} | {run["variant"]} | {metrics.max_k_solved(errors)} | '
        + ' / '.join(f'{100 * errors[k]:.1f}' for k in sorted(errors)) + f' | {result.steps}'
        + (' (stopped: its last evaluation)' if result.status == 'stopped' else '') + ' | '
        f'{result.metrics.get("train/steps_per_sec", float("nan")):.2f} | {seconds:.0f} | '
        f'{result.info.get("step_memory_mib", "")} | {result.info.get("peak_rss_mib", "")} |')
  return lines


def crossover_rows(runs):
  """Per (regime, N, k): the kinds that reached k, fastest first, with their seconds and steps."""
  lines = ['| regime | N | k | first to reach it (training seconds, steps) | others that reached it |',
           '|---|---|---|---|---|']
  cells = sorted({(r['alphabet'] != 4, r['n'], r['alphabet']) for r in runs})
  for _, n, alphabet in cells:
    mine = [r for r in runs if r['n'] == n and r['alphabet'] == alphabet]
    for k in range(9):
      reached = sorted((hit, r['variant']) for r in mine if (hit := first_reaching(r, k)))
      if not reached:
        break
      text = [f'{name} ({seconds:.0f} s, {steps} steps)' for (seconds, steps), name in reached]
      lines.append(f'| {regime(n, alphabet)} | {n} | {k} | {text[0]} | {"; ".join(text[1:])} |')
  return lines


def time_to_accuracy(runs, n, alphabet):
  """PNG bytes: largest k solved against training seconds, one line per kind, for one (N, alphabet) cell."""
  fig, ax = plots.plt.subplots(figsize=(6, 3.6))
  for run in sorted((r for r in runs if r['n'] == n and r['alphabet'] == alphabet), key=lambda r: r['variant']):
    points = [(row['seconds'], metrics.max_k_solved(metrics.errors_by_k(row))) for row in run['history']]
    if points:
      ax.step([run['start_seconds']] + [s for s, _ in points], [-1] + [k for _, k in points], where='post',
              label=run['variant'], marker='.')
  ax.set_xscale('log')
  ax.set_xlabel('training seconds (log; a warm start includes its source run)')
  ax.set_ylabel('largest k solved')
  ax.yaxis.set_major_locator(plots.MaxNLocator(integer=True))
  ax.set_title(f'k-hop, N = {n}, {regime(n, alphabet)}', fontsize=9)
  ax.legend(fontsize=7)
  return plots.png(fig)[0]


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  workdir = flags.FLAGS.workdir
  runs = load_runs(workdir)
  if not runs:
    fail(f'no finished k-hop runs under {workdir}/n<N>_a<ALPHABET>/runs')
  out = flags.FLAGS.out or workdir
  os.makedirs(out, exist_ok=True)
  text = ['# k-hop as N grows: the largest k solved (error < 5% on every k\' <= k) per kind', '',
          '`-1`: not even k = 0. Errors on answer tokens ("none" targets excluded), per k.', '', *table_rows(runs),
          '', '## Time to accuracy: which kind first reaches each k', '', *crossover_rows(runs), '']
  write_atomic(os.path.join(out, 'length_table.md'), '\n'.join(text))
  for regime_name, is_four in (('alphabet4', True), ('growing', False)):
    panels = {}
    for run in runs:
      if (run['alphabet'] == 4) == is_four:
        panels.setdefault(run['variant'], {})[run['n']] = metrics.errors_by_k(run['result'])
    if panels:
      write_atomic(os.path.join(out, f'heat_maps_{regime_name}.png'), heat_maps(panels, row_label='N'))
  for n, alphabet in sorted({(r['n'], r['alphabet']) for r in runs}):
    write_atomic(os.path.join(out, f'time_to_accuracy_n{n}_a{alphabet}.png'), time_to_accuracy(runs, n, alphabet))
  records.write_jsonl(os.path.join(out, 'results.jsonl'),
                      [{'cell': f'n{r["n"]}_a{r["alphabet"]}', **dict(r['result']), 'history': r['history']}
                       for r in runs])
  print('\n'.join(text))


if __name__ == '__main__':  # flags defined only when run, so tests can import this beside other studies
  flags.DEFINE_string('workdir', 'runs/khop_length', 'The folder of n<N>_a<ALPHABET> workdirs.')
  flags.DEFINE_string('out', '', 'Where length_table.md, the plots and results.jsonl go (default: the workdir).')
  app.run(main, flags_parser=flags_parser('anna-jax'))
