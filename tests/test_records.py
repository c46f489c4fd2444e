"""A run directory records the config that trained it; a command that differs in a field behind the run's numbers
stops instead of resuming, skipping or evaluating the old run under the new settings."""

import dataclasses
import json

import pytest

from experiments import experiment, records, sweep
from tests.test_experiments import tiny_config
from tests.test_grid import tiny_match2


def recorded_dir(tmp_path, c):
  records.write(str(tmp_path), experiment.build(c))
  return str(tmp_path)


@pytest.mark.parametrize('make, path, value', [
    (tiny_config, 'seed', 1),
    (tiny_config, 'optim.learning_rate', 0.1),
    (tiny_match2, 'train.train_size', 32),
    (tiny_config, 'model.width', 32),
    (tiny_config, 'attention.anna_softmax.num_tables', 2),  # a section of the kind the run trains with
], ids=['seed', 'learning_rate', 'train_size', 'width', 'kind_section'])
def test_a_differing_field_is_named_and_refused(tmp_path, make, path, value):
  base = make({'attention.kind': 'anna_softmax'} if 'anna_softmax' in path else None)
  run_dir = recorded_dir(tmp_path, base)
  changed = make({**({'attention.kind': 'anna_softmax'} if 'anna_softmax' in path else {}), path: value})
  for what in ('train', 'grid'):
    with pytest.raises(records.StaleRun, match=f'{path} .* -> {value}'):
      records.check(run_dir, experiment.build(changed), what)
  records.check(run_dir, experiment.build(base))  # the same config passes


def test_fields_that_do_not_change_the_numbers_may_differ(tmp_path):
  run_dir = recorded_dir(tmp_path, tiny_config())
  same = tiny_config({'train.steps': 40, 'train.log_every': 7, 'train.checkpoint_every': 3,
                      'train.keep_checkpoints': 5, 'train.time_limit_s': 9.0, 'evaluation.every': 11,
                      'attention.anna.num_tables': 9})  # anna's section: read by no run of a full model
  records.check(run_dir, experiment.build(same))
  # The evaluation section changes the run's result (train refuses) but not its weights (the grid accepts).
  evaluated = experiment.build(tiny_config({'evaluation.batches': 3}))
  with pytest.raises(records.StaleRun, match='evaluation.batches'):
    records.check(run_dir, evaluated)
  records.check(run_dir, evaluated, what='grid')


def test_a_legacy_result_is_compared_by_the_fields_it_holds_newer_ones_at_their_default(tmp_path):
  x = experiment.build(tiny_config())
  old_fields = {path: value for path, value in x.fields.items() if path != 'train.init_from'}  # before it existed
  (tmp_path / 'result.json').write_text(json.dumps({**old_fields, 'steps': 10, 'status': 'done'}))
  records.check(str(tmp_path), x)
  with pytest.raises(records.StaleRun, match='seed 0 -> 3'):
    records.check(str(tmp_path), experiment.build(tiny_config({'seed': 3})))
  (tmp_path / 'checkpoints').mkdir()  # a run directory to start from
  with pytest.raises(records.StaleRun, match='train.init_from'):
    records.check(str(tmp_path), experiment.build(tiny_config({'train.init_from': str(tmp_path)})))


def test_stale_runs_stop_the_sweep_untouched_and_overwrite_trains_them_again(tmp_path):
  c = tiny_config()
  c.sweep.model.depth = (2,)
  sweep.run_sweep(c, str(tmp_path))
  kept = (tmp_path / 'runs' / 'khop-full-depth=2' / 'result.json').read_text()
  changed = tiny_config({'optim.learning_rate': 0.003})
  changed.sweep.model.depth = (2,)
  before = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
  with pytest.raises(records.StaleRun, match='optim.learning_rate 0.001 -> 0.003'):
    sweep.run_sweep(changed, str(tmp_path))
  assert before == {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}  # nothing touched
  results = sweep.run_sweep(changed, str(tmp_path), overwrite=True)
  assert [(r['optim.learning_rate'], r['resumed_from']) for r in results] == [(0.003, 0)]
  assert (tmp_path / 'runs' / 'khop-full-depth=2' / 'result.json').read_text() != kept


def test_run_results_and_grid_cells_are_typed_and_round_trip(tmp_path):
  result = records.RunResult('khop-full-depth=2', 'done', 40, {'seed': 0, 'model.depth': 2},
                             {'eval/error': 0.25, 'eval/error_k1': 0.5}, {'compile_seconds': 1.5, 'device': 'cpu'})
  (tmp_path / 'run').mkdir()
  records.write_result(str(tmp_path / 'run'), result)
  again = records.read_result(str(tmp_path / 'run'))
  assert again == dataclasses.replace(result, name='run')  # the name is the directory's
  assert again.fields == {'seed': 0, 'model.depth': 2} and again['eval/error'] == 0.25 and again['steps'] == 40
  assert dict(again)['name'] == 'run' and 'status' in again and 'nope' not in again
  cell = records.GridCell(run='r', step=5, tables=(2, 2), hashes=1, draws=2, mean=0.5, std=0.1, errors=(0.4, 0.6),
                          no_collision_fraction=0.0, mean_collisions=3.0, surrogate_error=0.1, attention='full',
                          beta=1.0, settings={'model.depth': 2}, errors_by_k={0: 0.0, 1: 1.0}, max_k_solved=0)
  records.write_cells(str(tmp_path / 'grid.jsonl'), [cell, dataclasses.replace(cell, step=9)])
  cells = records.read_cells(str(tmp_path / 'grid.jsonl'))
  assert cells[0] == cell and records.latest_cells(cells) == [cells[1]] and cell.field('model.depth') == 2
