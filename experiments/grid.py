"""Train once, evaluate on a grid: a trained run's checkpoint evaluated with ANNA (Algorithm 1) swapped in.

  python -m experiments.main --mode=grid --config=experiments/configs/match2_paper.py --workdir=runs/match2_paper

For every finished run of the config's sweep (e.g. one per surrogate beta), the latest checkpoint's trained
parameters are evaluated on the run's fixed test set with `anna` in every attention layer, over
config.grid: tables per layer (one tuple per layer; the grid is their product) x hashes x draws (fresh hash
functions). Per cell: the mean and standard deviation of the error over the draws, beside the surrogate's own
error on the same test set. Nothing is retrained.

Outputs in the workdir (rebuilt atomically after every cell): grid.jsonl (one row per (run, cell)), grid.md,
grid.png (one layer: error against tables, one curve per z, as the paper's Figure 1a; two layers: a heat map of
layer-1 x layer-2 tables, best mean over z with the winning z, as Figure 1b) and TensorBoard images under tb/grid.
Killed mid-grid, the same command resumes: finished cells are read back from grid.jsonl and skipped.
"""

import itertools
import json
import os
import time

import jax
import numpy as np
from absl import logging
from flax import nnx

from anna_jax.model import Transformer
from anna_jax.tooling import SummaryWriter, write_atomic
from experiments import checkpoints, experiment, metrics, plots, records, sweep
from experiments.evaluation import Evaluator


def validate(config):
  """[(name, Experiment)] of the sweep's runs, checked to have a grid to evaluate."""
  grid = config.grid
  if not (grid.tables_per_layer or grid.tables_every_layer) or not grid.hashes:
    raise ValueError('the config has no grid: set grid.tables_per_layer (or grid.tables_every_layer) and grid.hashes')
  points = sweep.validate(config)
  if not all(x.evaluation.test_size for _, x in points):
    raise ValueError('the grid evaluates a fixed test set: set evaluation.test_size > 0')
  return points


def cells(grid, depth):
  """(tables per layer, hashes) in a fixed order."""
  per_layer = grid.tables_per_layer or [(t,) * depth for t in grid.tables_every_layer]
  tables = itertools.product(*per_layer) if grid.tables_per_layer else per_layer
  return [(tuple(t), z) for t in tables for z in grid.hashes]


def cell_settings(x):
  """Everything besides (run, step, tables, z) that a cell's numbers depend on: the draws and their seed, and
  every field the run reads (they made its weights and its test set; anna's section gives the family, d' and plan)."""
  return {'draws': x.grid.draws, 'grid_seed': x.grid.seed, **x.fields}


def cell_key(run, step, tables, z, settings):
  return json.dumps([run, step, list(tables), z, settings], sort_keys=True, default=str)


class RunEvaluator:
  """The trained model of one run (its latest checkpoint), its Evaluator's test set, and a compiled evaluation
  per grid cell."""

  def __init__(self, x, run_dir):
    records.check(run_dir, x, what='grid')  # the checkpoint was trained with this config's training fields
    self.x = x
    self.evaluator = Evaluator(x)
    model, self.step = checkpoints.trained_model(x, run_dir)  # trained Params and hash functions
    self.params = nnx.state(model, nnx.Param)
    self.test_set = self.evaluator.test_set
    with jax.set_mesh(self.evaluator.mesh):  # sequences split as in training (train.sequence_devices)
      self.surrogate_error = metrics.error(jax.device_get(jax.jit(
          lambda m, batch: metrics.loss_and_metrics(m, batch)[1])(model, self.test_set)))

  def cell(self, tables, z, draws, seed):
    """Per draw of `draws` hash draws with anna (`tables[i]` tables in layer i): errors, no-collision
    fractions, (key, table) collisions per query (both averaged over layers), and the task's results (k-hop:
    errors per k)."""
    model_config = experiment.grid_model(self.x, tables, z)

    def hash_functions(d):  # the non-Param state (hash functions) of a fresh model; its Params are unused
      return nnx.split(Transformer(model_config, rngs=nnx.Rngs(seed * 100_003 + d)), nnx.Param, ...)

    graphdef = hash_functions(0)[0]

    @jax.jit  # compiled once per cell, reused by every draw
    def evaluate(rest, batch):
      return metrics.loss_and_metrics(nnx.merge(graphdef, self.params, rest), batch, self.x.task)[1]

    errors, lonely, collisions, results = [], [], [], []
    for d in range(draws):
      with jax.set_mesh(self.evaluator.mesh):
        cell_metrics = jax.device_get(evaluate(hash_functions(d)[2], self.test_set))
      errors.append(metrics.error(cell_metrics))
      lonely.append(float(cell_metrics['no_collision_fraction']))
      collisions.append(float(cell_metrics['mean_collisions']))
      results.append(metrics.evaluation_result([cell_metrics], self.x.task))
    return errors, lonely, collisions, results


def run_grid(config, workdir, points=None):
  """Evaluates every finished run of the sweep over the grid; returns all cells (resuming from grid.jsonl).
  points: `validate(config)` when the caller has built them already."""
  points = points or validate(config)
  path = os.path.join(workdir, 'grid.jsonl')
  cells_done = records.read_cells(path)
  done = {cell_key(c.run, c.step, c.tables, c.hashes, c.settings) for c in cells_done}
  for name, x in points:  # records.StaleRun before any cell if a checkpoint was trained with other settings
    records.check(os.path.join(workdir, 'runs', name), x, what='grid')
  for name, x in points:
    todo = cells(x.grid, x.model.depth)
    settings = cell_settings(x)
    result = records.read_result(os.path.join(workdir, 'runs', name))
    if result is None:
      logging.warning('grid: %s has not finished training; skipped', name)
      continue
    if all(cell_key(name, result.steps, t, z, settings) in done for t, z in todo):
      continue
    evaluator = RunEvaluator(x, os.path.join(workdir, 'runs', name))
    logging.info('grid: %s (step %d), surrogate error %.4f; %d cells x %d draws', name, evaluator.step,
                 evaluator.surrogate_error, len(todo), x.grid.draws)
    for i, (tables, z) in enumerate(todo):
      key = cell_key(name, evaluator.step, tables, z, settings)
      if key in done:
        continue
      t0 = time.perf_counter()
      errors, lonely, collisions, results = evaluator.cell(tables, z, x.grid.draws, x.grid.seed)
      by_k = [metrics.errors_by_k(r) for r in results]
      mean_by_k = {k: float(np.mean([d[k] for d in by_k])) for k in by_k[0]} if by_k[0] else None
      cell = records.GridCell.from_row(dict(  # as grid.jsonl holds it: a resumed grid returns the same cells
          run=name, step=evaluator.step, tables=list(tables), hashes=z, draws=len(errors),
          mean=float(np.mean(errors)), std=float(np.std(errors)), errors=errors,
          no_collision_fraction=float(np.mean(lonely)), mean_collisions=float(np.mean(collisions)),
          surrogate_error=evaluator.surrogate_error, attention=x.model.attention.kind,
          beta=x.model.attention.unit_softmax.beta, settings=json.loads(json.dumps(settings, default=str)),
          # k-hop: the error per k, mean over the draws, and the largest k solved by that mean
          errors_by_k=mean_by_k, max_k_solved=None if mean_by_k is None else metrics.max_k_solved(mean_by_k)))
      cells_done = [c for c in cells_done if not c.same_cell(cell)] + [cell]  # evaluated anew: replaces the old
      done.add(key)
      records.write_cells(path, cells_done)
      logging.info('grid [%d/%d] tables %s z %d: error %.3f +- %.3f (%.1fs)', i + 1, len(todo), list(tables), z,
                   cell.mean, cell.std, time.perf_counter() - t0)
  write_grid_reports(workdir, cells_done)
  return cells_done


def write_grid_reports(workdir, rows):
  rows = records.latest_cells(rows)
  if not rows or jax.process_index() != 0:
    return
  write_atomic(os.path.join(workdir, 'grid.md'), grid_markdown(rows))
  png, height, width = plots.grid_figure(rows)
  write_atomic(os.path.join(workdir, 'grid.png'), png)
  writer = SummaryWriter(os.path.join(workdir, 'tb', 'grid'))
  writer.image(len(rows), 'grid/figure1', png, height, width)
  writer.close()


def largest_k(cell):
  """k-hop: ', k = K' (the largest k its mean error solves, counting up from k = 0) for a cell's text; '' for other
  tasks and for a test of one k > 0 (induction heads' k = 1), which has no such count."""
  return '' if cell.max_k_solved is None or 0 not in cell.errors_by_k else f', k = {cell.max_k_solved}'


def grid_markdown(rows):
  lines = ['# Grid evaluation: each trained model with ANNA (Algorithm 1) in every layer, per (tables, z)', '']
  for run in dict.fromkeys(r.run for r in rows):
    mine = [r for r in rows if r.run == run]
    first = mine[0]
    trained = (f'Surrogate ({first.attention}, beta={first.beta:g})' if first.attention == 'unit_softmax'
               else f'The trained model ({first.attention}, as trained)')
    lines += [f'## {run}', '', f'{trained} error on the same test set: {first.surrogate_error:.4f}. Cells: '
              f'mean +- std over {first.draws} hash draws, checkpoint step {first.step}.', '']
    if plots.same_tables_every_layer(mine):
      hashes = sorted({r.hashes for r in mine})
      label = 'tables (every layer)' if len(first.tables) > 1 else 'tables'
      lines += [f'| {label} | ' + ' | '.join(f'z={z}' for z in hashes) + ' |', '|---|' + '---|' * len(hashes)]
      by = {(r.tables[0], r.hashes): r for r in mine}
      for t in sorted({r.tables[0] for r in mine}):
        cells_ = [by.get((t, z)) for z in hashes]
        lines.append(f'| {t} | ' + ' | '.join(f'{r.mean:.3f} +- {r.std:.3f}{largest_k(r)}' if r else ''
                                              for r in cells_) + ' |')
    else:
      best = plots.best_over_hashes(mine)
      rows_t = sorted({k[0] for k in best})
      cols_t = sorted({k[1] for k in best})
      lines += ['Best mean error over z (winning z), rows: layer-1 tables, columns: layer-2 tables.', '',
                '| l1 \\ l2 | ' + ' | '.join(map(str, cols_t)) + ' |', '|---|' + '---|' * len(cols_t)]
      for a in rows_t:
        cells_ = [best.get((a, b)) for b in cols_t]
        lines.append(f'| {a} | ' + ' | '.join(f'{r.mean:.3f} (z={r.hashes}){largest_k(r)}' if r else ''
                                              for r in cells_) + ' |')
    lines.append('')
  return '\n'.join(lines) + '\n'

