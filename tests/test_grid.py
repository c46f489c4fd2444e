"""Train once, evaluate on a grid: tiny configs end to end, resume included."""

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest

from experiments import experiment, grid, plots, records, swap_diagnosis, sweep
from experiments.configs import match2_paper, quick_figure1a


def tiny_match2(overrides=None):
  """A tiny Match2 surrogate sweep (beta 0.1 and 10) with a grid; overrides: {'dotted.field': value}."""
  c = match2_paper.get_config()
  c.task.match2.n, c.task.match2.modulus, c.model.width, c.train.train_size = 8, 11, 16, 64
  c.evaluation.test_size = 16
  c.train.steps, c.train.batch_size, c.optim.warmup_steps = 12, 8, 2
  c.train.log_every, c.evaluation.every, c.train.checkpoint_every = 6, 12, 6
  c.sweep.attention.unit_softmax.beta = (0.1, 10.0)
  c.grid.tables_per_layer, c.grid.hashes, c.grid.draws = ((1, 3),), (1, 2), 2
  for path, value in (overrides or {}).items():
    experiment.set_field(c, path, value)
  return c


@pytest.fixture(scope='module')
def trained_match2(tmp_path_factory):
  """A workdir holding tiny_match2's two trained runs, trained once per test process (copy it, then use it)."""
  workdir = tmp_path_factory.mktemp('trained_match2')
  sweep.run_sweep(tiny_match2(), str(workdir))
  return workdir


def copy_of(trained, tmp_path):
  shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
  return tmp_path


def test_grid_evaluates_every_trained_run_and_resumes(tmp_path, monkeypatch, trained_match2):
  c = tiny_match2()
  copy_of(trained_match2, tmp_path)
  calls = []
  real_cell = grid.RunEvaluator.cell
  monkeypatch.setattr(grid.RunEvaluator, 'cell', lambda self, *a: calls.append(a) or real_cell(self, *a))
  rows = grid.run_grid(c, str(tmp_path))
  assert len(rows) == 2 * 2 * 2 == len(calls)  # 2 runs (betas) x 2 table counts x 2 hash counts
  assert {r.beta for r in rows} == {0.1, 10.0}
  for r in rows:
    assert len(r.errors) == 2 and np.isclose(r.mean, np.mean(r.errors))
    assert 0.0 <= r.mean <= 1.0 and 0.0 <= r.surrogate_error <= 1.0 and r.step == 12
  assert (tmp_path / 'grid.png').read_bytes()[:4] == b'\x89PNG'
  assert 'z=1' in (tmp_path / 'grid.md').read_text()
  assert list((tmp_path / 'tb' / 'grid').iterdir())
  # Same draws, same numbers: a second evaluation of one cell is identical.
  run = dict(sweep.validate(c))[rows[0].run]
  evaluator = grid.RunEvaluator(run, str(tmp_path / 'runs' / rows[0].run))
  again, _, _, _ = evaluator.cell(rows[0].tables, rows[0].hashes, 2, c.grid.seed)
  assert tuple(again) == rows[0].errors

  # Killed mid-grid: drop the last three cells from grid.jsonl; the same call recomputes only those.
  lines = (tmp_path / 'grid.jsonl').read_text().splitlines()
  (tmp_path / 'grid.jsonl').write_text('\n'.join(lines[:-3]) + '\n')
  calls.clear()
  resumed = grid.run_grid(c, str(tmp_path))
  assert len(calls) == 3
  key = lambda r: (r.run, r.tables, r.hashes)
  assert sorted(map(key, resumed)) == sorted(map(key, rows))
  by_key = {key(r): r.errors for r in rows}
  assert all(by_key[key(r)] == r.errors for r in resumed)


def test_two_layer_grid_makes_a_heat_map_with_the_best_z(tmp_path):
  from experiments.configs import induction_paper
  c = induction_paper.get_config()
  c.task.khop.n, c.model.width, c.evaluation.test_size = 12, 16, 8
  c.train.steps, c.train.batch_size, c.optim.warmup_steps = 4, 4, 1
  c.train.log_every, c.evaluation.every, c.train.checkpoint_every = 2, 4, 2
  c.sweep.attention.unit_softmax.beta = (1.0,)
  c.grid.tables_per_layer, c.grid.hashes, c.grid.draws = ((2, 4), (1, 3)), (1, 2), 1
  sweep.run_sweep(c, str(tmp_path))
  rows = grid.run_grid(c, str(tmp_path))
  assert len(rows) == 2 * 2 * 2 and all(len(r.tables) == 2 for r in rows)
  best = plots.best_over_hashes(rows)
  for tables, r in best.items():
    assert r.mean == min(x.mean for x in rows if x.tables == tables)
  text = (tmp_path / 'grid.md').read_text()
  assert 'l1 \\ l2' in text and '(z=' in text
  assert (tmp_path / 'grid.png').read_bytes()[:4] == b'\x89PNG'
  # The same run over cells for any depth: one table count given to every layer; k-hop rows carry the error
  # per k (this test set holds k = 1 only, so it is the cell's error).
  c.grid.tables_per_layer, c.grid.tables_every_layer = (), (1, 3)
  rows = grid.run_grid(c, str(tmp_path))
  uniform = [r for r in rows if r.tables in ((1, 1), (3, 3))]
  assert len(rows) == 2 * 2 * 2 + len(uniform) and len(uniform) == 2 * 2
  for r in uniform:
    assert r.errors_by_k == {1: r.mean} and r.max_k_solved == -1  # k = 0 untested: no k counts as solved
  text = grid.grid_markdown(uniform)
  assert '| tables (every layer) | z=1 | z=2 |' in text and ', k =' not in text  # nothing to count from k = 0
  tested_from_0 = [dataclasses.replace(r, errors_by_k={0: 0.01, 1: r.mean}, max_k_solved=0) for r in uniform]
  assert ', k = 0' in grid.grid_markdown(tested_from_0)


def test_a_run_asked_for_more_steps_resumes_and_is_evaluated_again(tmp_path, trained_match2):
  c = tiny_match2()
  c.sweep.attention.unit_softmax.beta = (0.1,)
  copy_of(trained_match2, tmp_path)
  first = grid.run_grid(c, str(tmp_path))
  longer = tiny_match2({'train.steps': 18})
  longer.sweep.attention.unit_softmax.beta = (0.1,)
  results = sweep.run_sweep(longer, str(tmp_path))
  assert results[0]['steps'] == 18 and results[0]['resumed_from'] == 12
  rows = grid.run_grid(longer, str(tmp_path))
  assert len(rows) == 2 * len(first) and {r.step for r in rows} == {12, 18}
  assert records.latest_cells(rows) == [r for r in rows if r.step == 18]
  assert 'step 18' in (tmp_path / 'grid.md').read_text()


def test_quick_config_is_the_paper_setup_scaled_down():
  c = quick_figure1a.get_config()
  paper = match2_paper.get_config()
  for field in ('task', 'model', 'attention', 'evaluation.test_size', 'train.train_size', 'train.batch_size',
                'optim.learning_rate'):
    section, *rest = field.split('.')
    assert (c[section][rest[0]] if rest else c[section]) == (paper[section][rest[0]] if rest else paper[section])
  assert c.train.steps < paper.train.steps and c.grid.tables_per_layer == ((1, 2, 4, 8, 16),) and c.grid.hashes == (1, 2, 3)


def test_a_cell_is_evaluated_again_when_anything_behind_its_numbers_changes(tmp_path, monkeypatch, trained_match2):
  c = tiny_match2({'grid.tables_per_layer': ((2,),), 'grid.hashes': (1,)})
  c.sweep.attention.unit_softmax.beta = (0.1,)
  copy_of(trained_match2, tmp_path)
  first = grid.run_grid(c, str(tmp_path))
  calls = []
  real_cell = grid.RunEvaluator.cell
  monkeypatch.setattr(grid.RunEvaluator, 'cell', lambda self, *a: calls.append(a) or real_cell(self, *a))
  assert grid.run_grid(c, str(tmp_path)) == first and not calls  # nothing changed: nothing recomputed
  for path, value in (('grid.draws', 3), ('grid.seed', 1), ('attention.anna.family', 'crosspolytope')):
    changed = copy.deepcopy(c)
    experiment.set_field(changed, path, value)
    rows = grid.run_grid(changed, str(tmp_path))
    assert len(calls) == 1, path  # recomputed, not read back as if it were the old cell
    saved = records.read_cells(str(tmp_path / 'grid.jsonl'))  # the new row replaced the old one on disk
    setting = {'grid.draws': 'draws', 'grid.seed': 'grid_seed'}.get(path, path)
    assert len(rows) == len(saved) == 1 and saved[0].settings[setting] == value
    calls.clear()
  assert rows[0].draws == 2 and rows[0].settings['attention.anna.family'] == 'crosspolytope'
  # A field behind the weights: the checkpoint was not trained with it, so the grid refuses to evaluate it.
  saved = (tmp_path / 'grid.jsonl').read_text()
  with pytest.raises(records.StaleRun, match='optim.learning_rate'):
    grid.run_grid(tiny_match2({'optim.learning_rate': 0.5, 'grid.tables_per_layer': ((2,),), 'grid.hashes': (1,)}),
                  str(tmp_path))
  assert (tmp_path / 'grid.jsonl').read_text() == saved and not calls
  # The swap diagnosis of the same checkpoint: per layer and head, the surrogate's weights beside anna's.
  points = [(name, x) for name, x in sweep.validate(c) if (tmp_path / 'runs' / name / 'checkpoints').exists()]
  text = swap_diagnosis.run(c, str(tmp_path), points, [(2, 1), (64, 0)], sequences=8)
  rows = [json.loads(line) for line in (tmp_path / 'swap_diagnosis.jsonl').read_text().splitlines()]
  assert len(rows) == 1 and rows[0]['layer'] == 1 and '| 1 | 0 |' in text
  assert 0 < rows[0]['top_weight'] <= 1 and -1 <= rows[0]['cos_top'] <= 1
  # z = 0: every key collides in every table, so anna is uniform attention and keeps no query alone.
  assert rows[0]['64:0']['alone'] == 0 and rows[0]['64:0']['top_kept'] == pytest.approx(1 / 8)
  assert np.isfinite(rows[0]['value_range']) and 'e^' in text


def test_swap_diagnosis_references_and_value_range():
  import jax.numpy as jnp
  from anna_jax import ANNAConfig, AttentionConfig
  n = 6
  v = jnp.exp(0.1 * jnp.arange(n, dtype=jnp.float32))[None, :, None, None] * jnp.ones((2, n, 3, 4))
  np.testing.assert_allclose(swap_diagnosis.value_range(v), 0.1 * (n - 1) * np.ones(3), rtol=1e-5)
  cos = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 1, n, n)), jnp.float32)
  seen = jnp.tril(jnp.ones((n, n), bool))
  uniform = swap_diagnosis.reference_weights(cos, seen, AttentionConfig(kind='anna', anna=ANNAConfig(num_hashes=0)))
  np.testing.assert_allclose(uniform[0, 0], seen / seen.sum(-1, keepdims=True), rtol=1e-6)  # z = 0: every key
  sharp = swap_diagnosis.reference_weights(cos, seen, AttentionConfig(kind='anna', anna=ANNAConfig(num_hashes=4)))
  np.testing.assert_allclose(sharp.sum(-1), 1, rtol=1e-6)
  p = (1 - np.arccos(np.asarray(cos[0, 0, 3, :4])) / np.pi) ** 4
  np.testing.assert_allclose(sharp[0, 0, 3, :4], p / p.sum(), rtol=1e-5)
  with pytest.raises(ValueError, match='full'):
    swap_diagnosis.reference_weights(cos, seen, AttentionConfig(kind='full'))


def test_grid_models_carry_the_cell_tables_hashes_and_family():
  c = tiny_match2({'model.depth': 2, 'attention.anna.family': 'crosspolytope',
                   'grid.tables_per_layer': ((3,), (5,))})
  (_, x), = sweep.validate(c)[:1]
  from anna_jax.model import Transformer
  from flax import nnx
  model = Transformer(experiment.grid_model(x, (3, 5), 2), rngs=nnx.Rngs(0))
  cores = [block.attention.core for block in model.blocks]
  assert [type(core).__name__ for core in cores] == ['ANNAAttention'] * 2
  assert [core.config.num_tables for core in cores] == [3, 5] and {core.config.num_hashes for core in cores} == {2}
  assert [core.hashes.projections[...].shape[1] for core in cores] == [3, 5]  # (heads, tables, hashes, d, d')
  assert all(core.config.family == 'crosspolytope' for core in cores)
