"""A sweep: the product of the config's `sweep` axes, run one after another, resumable and shardable.

Layout under the workdir:
  runs/<name>/checkpoints  Orbax checkpoints of each run (resume from the latest)
  runs/<name>/config.json  the fields the run was trained with (experiments.records): a command whose point
                           differs in any field behind the run's numbers stops (StaleRun), or with
                           overwrite=True (--overwrite) trains that run again from scratch
  runs/<name>/result.json  written atomically when the run ends: a run with one (for at least the steps
                           asked) is skipped on restart; asked for more steps, it resumes from its checkpoint
  tb/<name>/               TensorBoard events of each run; tb/ holds the HParams experiment and the plot
  results.jsonl, results.md, error_vs_depth.png   rebuilt atomically from every result.json
"""

import os
import re
import shutil
import time

import jax
from absl import logging

from anna_jax.tooling import SummaryWriter, format_seconds, write_atomic
from experiments import experiment, plots, records, train


def run_name(c, swept):
  """'<task>-<attention kind>' and then field=value for every swept field this run reads, e.g.
  'khop-full-depth=3'; a field is named by its last part unless two swept fields share it."""
  name = f'{c.task.name}-{c.attention.kind}'
  shown = [path for path in swept if path not in ('task.name', 'attention.kind') and experiment.is_used(c, path)]
  last = [path.rsplit('.', 1)[-1] for path in swept]
  for path in shown:
    label = path.rsplit('.', 1)[-1]
    label = label if last.count(label) == 1 else path
    value = swept[path]
    text = ','.join(map(format_value, value)) if isinstance(value, (tuple, list)) else format_value(value)
    name += f'-{label}={text}'
  return re.sub(r'[^A-Za-z0-9_.,=+-]', '_', name)


def format_value(value):
  return f'{value:g}' if isinstance(value, float) else str(value)


def expand(config):
  """[(name, run config)] for every distinct point of the sweep, in a fixed order.

  Points that differ only in fields their run does not read (ANNA's tables for full attention, say) have the
  same name and run once.
  """
  named = {}
  for c, swept in experiment.points(config):
    named.setdefault(run_name(c, swept), c)
  return list(named.items())


def validate_shard(shard_index, num_shards):
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f'need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}')


def validate(config):
  """[(name, Experiment)] of every point, each built (and so validated) once."""
  points = []
  for name, c in expand(config):
    try:
      points.append((name, experiment.build(c)))
    except (ValueError, TypeError) as e:
      raise ValueError(f'{name}: {e}') from None
  return points


def shard(points, shard_index, num_shards):
  """Deterministic round-robin split: shard i runs points i, i + num_shards, ..."""
  return points[shard_index::num_shards]


def collect_results(workdir, names):
  """The finished runs' RunResults."""
  results = [records.read_result(os.path.join(workdir, 'runs', name)) for name in names]
  return [r for r in results if r is not None]


def markdown_table(results):
  columns = ['name', 'status', 'eval/error', 'eval/max_k_solved', 'train/loss', 'eval/dropped_fraction',
             'eval/no_collision_fraction', 'train/steps_per_sec', 'compile_seconds']
  columns = [col for col in columns if any(col in r for r in results)]
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  for r in results:
    cells = [r.get(col, '') for col in columns]
    lines.append('| ' + ' | '.join(f'{x:.4g}' if isinstance(x, float) else str(x) for x in cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_reports(workdir, names):
  """Rebuilds results.jsonl, results.md and the plot from the runs' result.json files."""
  results = collect_results(workdir, names)
  if jax.process_index() != 0 or not results:
    return results
  records.write_jsonl(os.path.join(workdir, 'results.jsonl'), [dict(r) for r in results])
  write_atomic(os.path.join(workdir, 'results.md'), markdown_table(results))
  png, height, width = plots.error_vs_depth(results)
  write_atomic(os.path.join(workdir, 'error_vs_depth.png'), png)
  writer = SummaryWriter(os.path.join(workdir, 'tb'))
  writer.image(len(results), 'sweep/error_vs_depth', png, height, width)
  writer.close()
  return results


def check_recorded(workdir, points, overwrite=False):
  """records.StaleRun for the first point whose run directory holds a run trained with other settings; with
  `overwrite`, such runs are deleted instead (checkpoints, result, TensorBoard logs) and train from scratch."""
  for name, x in points:
    run_dir = os.path.join(workdir, 'runs', name)
    try:
      records.check(run_dir, x)
    except records.StaleRun as e:
      if not overwrite:
        raise
      logging.warning('%s; --overwrite: deleting it to train again from scratch', e)
      if jax.process_index() == 0:
        shutil.rmtree(run_dir)
        shutil.rmtree(os.path.join(workdir, 'tb', name), ignore_errors=True)


def run_sweep(config, workdir, shard_index=0, num_shards=1, points=None, overwrite=False):
  """Runs this shard's unfinished points; returns the results of every finished point of the sweep.
  points: `validate(config)` when the caller has built them already. A point whose run directory holds a run
  trained with other settings raises records.StaleRun before anything trains, unless `overwrite`."""
  validate_shard(shard_index, num_shards)
  points = points or validate(config)
  names = [name for name, _ in points]
  mine = shard(points, shard_index, num_shards)
  os.makedirs(workdir, exist_ok=True)
  check_recorded(workdir, mine, overwrite)
  if jax.process_index() == 0:
    writer = SummaryWriter(os.path.join(workdir, 'tb'))
    hparams = list(dict.fromkeys(field for _, x in points for field in x.fields))
    writer.hparams_experiment(hparams, train.METRICS)
    writer.close()
  durations = []
  logging.info('sweep: %d points, %d in this shard (%d/%d); workdir %s', len(points), len(mine),
               shard_index, num_shards, os.path.abspath(workdir))
  def finished(name, x):  # a result for at least this many steps; a run asked for more steps continues
    result = records.read_result(os.path.join(workdir, 'runs', name))
    return result is not None and result.steps >= x.train.steps  # done, or stopped by a non-finite loss

  for i, (name, x) in enumerate(mine):
    run_dir = os.path.join(workdir, 'runs', name)
    if finished(name, x):
      logging.info('[%d/%d] %s: finished earlier, skipped', i + 1, len(mine), name)
      continue
    if durations:
      remaining = sum(1 for n, c_ in mine[i:] if not finished(n, c_))
      logging.info('sweep ETA %s', format_seconds(remaining * sum(durations) / len(durations)))
    t0 = time.perf_counter()
    result = train.run(x, run_dir, tb_dir=os.path.join(workdir, 'tb', name), label=f'[{i + 1}/{len(mine)}]')
    durations.append(time.perf_counter() - t0)
    if jax.process_index() == 0:
      records.write_result(run_dir, result)
    write_reports(workdir, names)
  return write_reports(workdir, names)
