import importlib
import inspect
import json
import os
import pkgutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from anna_jax.tasks import KHop
from experiments import checkpoints, configs, experiment, metrics, plots, records, sweep, train
from experiments.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shipped_configs():
  """(module name, get_config args) of every config file in experiments/configs, each scale it takes."""
  found = []
  for info in pkgutil.iter_modules(configs.__path__):
    get_config = importlib.import_module(f'experiments.configs.{info.name}').get_config
    scales = [()] + ([('gpu',)] if inspect.signature(get_config).parameters else [])
    found += [pytest.param(info.name, args, id=':'.join((info.name, *args))) for args in scales]
  return found


@pytest.mark.parametrize('name, args', shipped_configs())
def test_every_shipped_config_builds_every_sweep_point(name, args):
  # What `experiments.main` checks before training: a config edited out of step with the library fails here.
  c = importlib.import_module(f'experiments.configs.{name}').get_config(*args)
  assert sweep.validate(c)


def tiny_config(overrides=None):
  """A tiny k-hop config; overrides: {'dotted.field': value}."""
  c = default.get_config()
  c.task.khop.n, c.task.khop.max_k, c.model.depth, c.model.width, c.model.num_heads = 8, 1, 1, 16, 2
  c.train.steps, c.train.batch_size, c.optim.warmup_steps = 10, 8, 2
  c.train.log_every, c.evaluation.every, c.train.checkpoint_every, c.evaluation.batches = 5, 10, 5, 1
  c.sweep.model.depth, c.sweep.attention.kind = (), ()
  for path, value in (overrides or {}).items():
    experiment.set_field(c, path, value)
  return c


def params_of(workdir, c):
  x = experiment.build(c)
  trainer = train.Trainer(x)
  manager = checkpoints.manager(x, workdir)
  state, step = checkpoints.restore_latest(manager, trainer.initial_state)
  manager.close()
  return step, [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(state))]


def test_resume_from_checkpoint_gives_the_same_numbers(tmp_path):
  c = tiny_config()
  straight = train.train_and_evaluate(c, str(tmp_path / 'straight'))
  resumed_dir = tmp_path / 'resumed'
  train.train_and_evaluate(c, str(resumed_dir))
  # Lose the last checkpoint, as if the run had been killed after step 5.
  manager = checkpoints.manager(experiment.build(c), str(resumed_dir))
  manager.delete(10)
  manager.close()
  resumed = train.train_and_evaluate(c, str(resumed_dir))
  assert resumed['resumed_from'] == 5
  assert resumed['train/loss'] == straight['train/loss']
  assert resumed['eval/error'] == straight['eval/error']
  for a, b in zip(params_of(str(tmp_path / 'straight'), c)[1], params_of(str(resumed_dir), c)[1]):
    np.testing.assert_array_equal(a, b)


def test_a_run_can_start_from_another_runs_parameters(tmp_path):
  surrogate = tiny_config({'attention.kind': 'unit_softmax'})
  train.train_and_evaluate(surrogate, str(tmp_path / 'surrogate'))
  _, trained = params_of(str(tmp_path / 'surrogate'), surrogate)
  # Fine-tuning with anna in every layer: the trained parameters carry over, the optimizer starts fresh.
  tuned = tiny_config({'attention.kind': 'anna', 'train.init_from': str(tmp_path / 'surrogate')})
  def initial_params(c):
    trainer = train.Trainer(experiment.build(c))
    model, _ = nnx.merge(trainer.graphdef, trainer.initial_state)
    return [np.asarray(a) for a in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]

  started, fresh = initial_params(tuned), initial_params(surrogate)
  assert len(started) == len(fresh)
  assert any(not np.array_equal(a, b) for a, b in zip(started, fresh))  # not the fresh initialisation
  trained_params = trained[: len(started)]  # the model's leaves come first in the (model, optimizer) state
  for a, b in zip(started, trained_params):
    np.testing.assert_array_equal(a, b)
  # A warm start may add the value gain (0 at init): every other parameter is the surrogate's.
  gained = initial_params(tiny_config({'attention.kind': 'anna', 'model.value_gain': True,
                                       'train.init_from': str(tmp_path / 'surrogate')}))
  added = [a for a in gained if not any(a.shape == b.shape and np.array_equal(a, b) for b in started)]
  assert len(gained) == len(started) + surrogate.model.depth and len(added) == surrogate.model.depth
  assert all(not a.any() for a in added)
  with pytest.raises(ValueError, match='shape'):
    train.Trainer(experiment.build(tiny_config({'model.width': 32, 'train.init_from': str(tmp_path / 'surrogate')})))
  with pytest.raises(ValueError, match='no run directory'):
    experiment.build(tiny_config({'train.init_from': str(tmp_path / 'nowhere')}))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  # A run that diverges after its last good checkpoint: its learning rate turns infinite from step 10 on, and the
  # run is resumed (same settings, more steps) past that point.
  schedule = train.make_schedule
  monkeypatch.setattr(train, 'make_schedule', lambda x: lambda step: jnp.where(step < 10, schedule(x)(step), jnp.inf))
  c = tiny_config()
  train.train_and_evaluate(c, str(tmp_path))
  good_step, good_params = params_of(str(tmp_path), c)
  blown = tiny_config({'train.steps': 20})
  result = train.train_and_evaluate(blown, str(tmp_path))
  assert result['status'] == 'nan'
  step, params = params_of(str(tmp_path), c)
  assert step == good_step == 10
  for a, b in zip(params, good_params):
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a))


def test_sweep_expansion_and_sharding_are_deterministic():
  c = default.get_config()
  c.sweep.model.depth, c.sweep.attention.kind = (1, 2, 3), ('full', 'anna_softmax')
  c.sweep.attention.anna_softmax.num_tables = (1, 4)
  names = [name for name, _ in sweep.expand(c)]
  assert len(names) == len(set(names)) == 3 + 6  # full attention ignores num_tables: 3 points, not 6
  assert 'khop-anna_softmax-num_tables=4-depth=2' in names and 'khop-full-depth=2' in names
  assert names == [name for name, _ in sweep.expand(c)]
  shards = [[n for n, _ in sweep.shard(sweep.expand(c), i, 5)] for i in range(5)]
  assert sorted(sum(shards, [])) == sorted(names)
  assert all(len(s) == 2 for s in shards[:4]) and len(shards[4]) == 1


def test_sweep_writes_results_table_plot_and_skips_finished_runs(tmp_path):
  c = tiny_config()
  c.sweep.model.depth, c.sweep.attention.kind = (1, 2), ('full', 'anna_softmax')
  results = sweep.run_sweep(c, str(tmp_path))
  assert len(results) == 4 and all(r['status'] == 'done' for r in results)
  assert all('eval/error_k1' in r and 0.0 <= r['eval/error'] <= 1.0 for r in results)
  assert all(r['eval/dropped_fraction'] >= 0.0 for r in results if r['attention.kind'] == 'anna_softmax')
  assert all(r['model.depth'] in (1, 2) and r['task.khop.n'] == 8 for r in results)  # every field recorded
  assert not any(k.startswith('attention.anna_softmax.') for r in results if r['attention.kind'] == 'full'
                 for k in r)  # but not the sections of kinds the run does not use
  lines = (tmp_path / 'results.jsonl').read_text().splitlines()
  assert sorted(json.loads(line)['name'] for line in lines) == sorted(r['name'] for r in results)
  assert (tmp_path / 'results.md').read_text().count('\n') == 2 + 4
  assert (tmp_path / 'error_vs_depth.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob('runs/*/result.json')}
  again = sweep.run_sweep(c, str(tmp_path))
  assert again == results
  assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.glob('runs/*/result.json')}


KHOP = '--config=experiments/configs/default.py'  # the k-hop base config (the default job is Match2)
TINY_KHOP = ['--config.task.khop.n=8', '--config.task.khop.max_k=1', '--config.model.width=16',
             '--config.model.num_heads=2']


def run_main(*args, timeout=300):
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'experiments.main', KHOP, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def fetch_json(url, body=None):
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, headers={'Content-Type': 'application/json'})
  with urllib.request.urlopen(request, timeout=10) as response:
    return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_serves_runs_scalars_hparams_and_plot(tmp_path):
  c = tiny_config()
  c.sweep.attention.kind = ('full', 'anna_softmax')
  results = sweep.run_sweep(c, str(tmp_path))
  port = free_port()
  server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), 'tensorboard'), '--logdir',
                             str(tmp_path / 'tb'), '--host', '127.0.0.1', '--port', str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  base = f'http://127.0.0.1:{port}/data'
  try:
    deadline = time.time() + 60
    while True:
      try:
        runs = fetch_json(f'{base}/runs')
        if len(runs) >= 3:
          break
      except OSError:
        pass
      assert time.time() < deadline, 'tensorboard did not come up'
      time.sleep(1)
    names = {r['name'] for r in results}
    assert names <= set(runs)
    tags = fetch_json(f'{base}/plugin/scalars/tags')
    for name in names:
      assert {'train/loss', 'train/steps_per_sec', 'train/lr', 'eval/error'} <= set(tags[name])
    groups = fetch_json(f'{base}/plugin/hparams/session_groups', {
        'startIndex': 0, 'sliceSize': 10, 'colParams': [],
        'allowedStatuses': ['STATUS_UNKNOWN', 'STATUS_SUCCESS', 'STATUS_FAILURE', 'STATUS_RUNNING']})
    by_name = {g['name']: g for g in groups['sessionGroups']}
    assert set(by_name) == names
    assert {by_name[r['name']]['hparams']['attention.kind'] for r in results} == {'full', 'anna_softmax'}
    assert 'sweep/error_vs_depth' in fetch_json(f'{base}/plugin/images/tags')['.']
  finally:
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow
def test_killed_sweep_resumes_and_loses_nothing(tmp_path):
  args = [f'--workdir={tmp_path}', *TINY_KHOP, '--config.train.steps=150', '--config.optim.warmup_steps=10',
          '--config.train.checkpoint_every=50', '--config.evaluation.every=150', '--config.train.log_every=50',
          '--config.sweep.model.depth=(1,2)', "--config.sweep.attention.kind=('full',)"]
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  process = subprocess.Popen([sys.executable, '-m', 'experiments.main', KHOP, *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  second_run = tmp_path / 'runs' / 'khop-full-depth=2' / 'checkpoints'
  deadline = time.time() + 240
  while not (second_run.exists() and any(p.name.isdigit() for p in second_run.iterdir())):
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  first_result = tmp_path / 'runs' / 'khop-full-depth=1' / 'result.json'
  saved = first_result.read_text()
  assert json.loads((tmp_path / 'results.jsonl').read_text())['name'] == 'khop-full-depth=1'
  result = run_main(*args)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'finished earlier, skipped' in result.stderr and 'resuming from step' in result.stderr
  assert first_result.read_text() == saved
  lines = [json.loads(line) for line in (tmp_path / 'results.jsonl').read_text().splitlines()]
  assert [r['name'] for r in lines] == ['khop-full-depth=1', 'khop-full-depth=2']
  assert all(r['status'] == 'done' and r['steps'] == 150 for r in lines)
  # Another seed in the same workdir: one line, exit code 2, nothing trained or rewritten.
  stale = run_main(*args, '--config.seed=1')
  assert stale.returncode == 2 and len(stale.stderr.strip().splitlines()) == 1, stale.stderr[-2000:]
  assert 'seed 0 -> 1' in stale.stderr and '--overwrite' in stale.stderr
  assert first_result.read_text() == saved


def test_every_config_section_reaches_the_module_it_configures():
  # Checked on the built model, not on the config: the value set is the value the module uses.
  from anna_jax.model import Transformer
  cases = [
      ('reformer', {'attention.reformer.num_rounds': 3, 'attention.reformer.num_buckets': 6,
                    'attention.reformer.chunk_size': 4, 'attention.reformer.loop_plan': 'accelerator'},
       lambda core: (core.config.num_rounds, core.config.num_buckets, core.config.chunk_size, core.config.loop_plan,
                     core.hashes.projections[...].shape[1]) == (3, 6, 4, 'accelerator', 3)),
      ('anna_softmax', {'attention.anna_softmax.num_tables': 5, 'attention.anna_softmax.window': 7,
                        'attention.anna_softmax.loop_plan': 'cpu_xla'},
       lambda core: (core.config.num_tables, core.config.window, core.config.loop_plan,
                     core.hashes.projections[...].shape[1]) == (5, 7, 'cpu_xla', 5)),
      ('anna', {'attention.anna.num_tables': 6, 'attention.anna.num_hashes': 1},
       lambda core: core.hashes.projections[...].shape[1:4:2] == (6, 1)),  # (heads, tables, d, hashes)
      ('unit_softmax', {'attention.unit_softmax.beta': 0.25}, lambda core: core.config.beta == 0.25),
      ('lowrank', {'attention.lowrank.num_features': 5}, lambda core: core.features[...].shape[1] == 5),
      ('full_blockwise', {'attention.full_blockwise.block': 16}, lambda core: core.config.block == 16),
  ]
  for kind, fields, check in cases:
    x = experiment.build(tiny_config({'attention.kind': kind, **fields}))
    core = Transformer(x.model, rngs=nnx.Rngs(0)).blocks[0].attention.core
    assert check(core), kind
    assert all(x.fields[path] == value for path, value in fields.items())  # and the run records it
  # Per-layer attention, and the evaluation swap, reach every layer.
  c = tiny_config({'model.depth': 2, 'evaluation.attention': 'anna',
                   'attention.per_layer': ({'kind': 'full'}, {'kind': 'anna_softmax', 'anna_softmax.num_tables': 3})})
  x = experiment.build(c)
  cores = [b.attention.core for b in Transformer(x.model, rngs=nnx.Rngs(0)).blocks]
  assert [type(core).__name__ for core in cores] == ['FullAttention', 'ANNASoftmaxAttention']
  assert cores[1].config.num_tables == 3
  assert [type(b.attention.core).__name__ for b in Transformer(x.eval_model, rngs=nnx.Rngs(0)).blocks] == [
      'ANNAAttention'] * 2


def test_any_field_can_be_swept_and_names_the_runs():
  c = tiny_config()
  c.sweep.optim.learning_rate = (1e-3, 3e-3)
  c.sweep.attention.reformer.num_rounds = (2, 4)  # read only by reformer runs
  c.sweep.attention.kind = ('full', 'reformer')
  names = [name for name, _ in sweep.expand(c)]
  assert names == ['khop-full-learning_rate=0.001', 'khop-full-learning_rate=0.003',
                   'khop-reformer-num_rounds=2-learning_rate=0.001', 'khop-reformer-num_rounds=2-learning_rate=0.003',
                   'khop-reformer-num_rounds=4-learning_rate=0.001', 'khop-reformer-num_rounds=4-learning_rate=0.003']
  built = dict(sweep.validate(c))
  assert built['khop-reformer-num_rounds=4-learning_rate=0.003'].model.attention.reformer.num_rounds == 4
  assert built['khop-reformer-num_rounds=4-learning_rate=0.003'].optim.learning_rate == 3e-3


def test_errors_by_k_groups_the_sequences_of_each_k():
  # 4 sequences of k = 0, 2, 0, 2 (none of 1 or 3): per k, the errors of its sequences over their tokens.
  batch = {'k': jnp.array([0, 2, 0, 2]), 'tokens': jnp.zeros((4, 3), jnp.int32),
           'targets': jnp.zeros((4, 3), jnp.int32), 'loss_mask': jnp.ones((4, 3)),
           'eval_mask': jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)}
  logits = jnp.stack([jnp.array([[0, 1], [1, 0], [0, 1]]), jnp.array([[1, 0], [0, 1], [0, 1]]),
                      jnp.array([[0, 1], [0, 1], [0, 1]]), jnp.array([[1, 0], [1, 0], [1, 0]])]).astype(jnp.float32)
  task = KHop(n=2, max_k=3)
  _, step_metrics = metrics.loss_and_metrics(lambda tokens: (logits, {}), batch, task)
  result = metrics.evaluation_result([jax.device_get(step_metrics)], task)
  assert metrics.errors_by_k(result) == {0: 3 / 4, 2: 1 / 5} and result['eval/error'] == 4 / 9
  assert metrics.max_k_solved({0: 0.01, 1: 0.2, 2: 0.0}) == 0 and metrics.max_k_solved({0: 0.3}) == -1


def test_khop_table_puts_trained_runs_and_grid_cells_in_one_table(tmp_path):
  from experiments import khop_table
  for name, depth, errors in (('khop-full-depth=1', 1, [0.0, 0.3]), ('khop-full-depth=2', 2, [0.0, 0.01]),
                              ('khop-unit_softmax-depth=2', 2, [0.01, 0.02])):
    (tmp_path / 'runs' / name).mkdir(parents=True)
    result = {'task.name': 'khop', 'status': 'done', 'steps': 10, 'model.depth': depth,
              **{f'eval/error_k{k}': e for k, e in enumerate(errors)}}
    (tmp_path / 'runs' / name / 'result.json').write_text(json.dumps(result))
  cells = [records.GridCell(run='khop-unit_softmax-depth=2', step=5, tables=(t, t), hashes=z, draws=1, mean=m, std=0.0,
                            errors=(m,), no_collision_fraction=0.0, mean_collisions=1.0, surrogate_error=0.02,
                            attention='unit_softmax', beta=8.0, settings={'model.depth': 2}, errors_by_k={0: m, 1: m})
           for t, z, m in ((1, 1, 0.3), (4, 2, 0.01), (16, 4, 0.2))]
  records.write_cells(str(tmp_path / 'grid.jsonl'), cells)
  panels, results = khop_table.trained_panels(str(tmp_path))
  anna, winners = khop_table.grid_panels(str(tmp_path), 16, 4)
  assert panels['full'] == {1: {0: 0.0, 1: 0.3}, 2: {0: 0.0, 1: 0.01}} and len(results) == 3
  assert winners == {('anna best cell <- unit_softmax', 2): (4, 2)}  # the lowest mean error
  assert anna['anna l=16 z=4 <- unit_softmax'] == {2: {0: 0.2, 1: 0.2}}
  text = khop_table.markdown(khop_table.ordered({**panels, **anna}), winners)
  assert '| depth | full | unit_softmax | anna best cell <- unit_softmax | anna l=16 z=4 <- unit_softmax |' in text
  assert '| 1 | 0 |  |  |  |  |' in text and '| 2 | 1 | 1 | 1 (l=4, z=2) | -1 | 1 |' in text
  assert plots.heat_maps(panels)[:4] == b'\x89PNG'


def test_a_model_field_no_module_reads_is_an_error():
  c = tiny_config()
  c.model.dropout = 0.5  # added in a config file: TransformerConfig has no such field
  with pytest.raises(ValueError, match="unknown model field 'dropout'"):
    experiment.build(c)
  assert set(experiment.MODEL_FIELDS) == set(tiny_config().model)  # the default section holds every model field


def test_value_gain_lr_scale_multiplies_the_gains_updates_only():
  from anna_jax import Transformer, TransformerConfig
  from experiments import optim
  model_config = TransformerConfig(vocab_size=10, num_classes=3, max_len=16, depth=1, width=8, num_heads=2,
                                   value_gain=True, causal=True)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 10)
  grads = nnx.grad(lambda m: jnp.mean(m(tokens)[0] ** 2))(Transformer(model_config, rngs=nnx.Rngs(0)))

  def first_updates(scale):
    model = Transformer(model_config, rngs=nnx.Rngs(0))
    x = types.SimpleNamespace(optim=experiment.OptimConfig(value_gain_lr_scale=scale, weight_decay=0.0, grad_clip=0.0))
    tx = optim.make_optimizer(x, 1e-3)
    params = nnx.state(model, nnx.Param)
    updates, _ = tx.update(nnx.state(grads, nnx.Param), tx.init(params), params)
    return nnx.to_flat_state(updates)

  plain, scaled = first_updates(1.0), first_updates(10.0)
  for (path, a), (_, b) in zip(plain, scaled):
    gain = optim.VALUE_GAIN in [str(key) for key in path]
    np.testing.assert_allclose(np.asarray(b), np.asarray(a) * (10.0 if gain else 1.0), rtol=1e-6)
  assert any(optim.VALUE_GAIN in [str(key) for key in path] for path, _ in plain)


def test_microbatches_give_the_batch_gradient_with_one_hash_draw_per_step():
  # train.microbatches sums the gradient over microbatches in a lax.scan: the plain step's numbers up to float
  # order, rows with fewer loss tokens weighted by their share, anna's resampled hashes drawn once per step.
  anna = {'attention.kind': 'anna', 'attention.anna.straight_through': True, 'attention.anna.resample_hashes': True}
  trainer = train.Trainer(experiment.build(tiny_config(anna)))
  batch = trainer.x.task.sample(jax.random.key(0), 8)
  batch['loss_mask'] = batch['loss_mask'].at[:3, 2:].set(False)  # microbatches of unequal loss tokens
  results, hash_calls = {}, {}
  for count in (1, 4):
    model, _ = nnx.merge(trainer.graphdef, trainer.initial_state, copy=True)
    trainer.microbatches = count
    results[count] = nnx.jit(trainer._gradient)(model, batch)
    hash_calls[count] = [int(v[...]) for path, v in nnx.to_flat_state(nnx.state(model)) if path[-1] == 'hash_calls']
  (plain_grads, plain), (split_grads, split) = results[1], results[4]
  assert hash_calls[1] == hash_calls[4] == [1]  # drawn once, as the unsplit step does
  assert set(split) == set(plain) and split['counted'] == plain['counted'] and split['wrong'] == plain['wrong']
  for name in plain:
    np.testing.assert_allclose(split[name], plain[name], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(plain_grads), jax.tree.leaves(split_grads)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)


def test_microbatches_automatic_on_cpu_and_checked():
  from experiments.configs import induction_paper, match2_paper
  assert train.microbatch_count(experiment.build(induction_paper.get_config()), 1) == 4  # 32 x 101 x 512 floats
  assert train.microbatch_count(experiment.build(induction_paper.get_config()), 2) == 2
  assert train.microbatch_count(experiment.build(match2_paper.get_config()), 1) == 1
  with pytest.raises(ValueError, match='microbatches 3 must divide the 8 sequences'):
    experiment.build(tiny_config({'train.microbatches': 3}))


def test_evaluation_history_keeps_training_seconds_across_a_resume(tmp_path):
  history = records.EvaluationHistory(str(tmp_path), 0)
  history.add(5, 1.5, {'eval/error': 0.5, 'train/loss': 2.0})
  history.add(10, 3.0, {'eval/error': 0.25})
  resumed = records.EvaluationHistory(str(tmp_path), 5)  # killed after step 5's checkpoint: step 10's row goes
  resumed.add(10, 2.0, {'eval/error': 0.2})
  assert records.read_history(str(tmp_path)) == [{'step': 5, 'train_seconds': 1.5, 'eval/error': 0.5},
                                                  {'step': 10, 'train_seconds': 3.5, 'eval/error': 0.2}]


def test_length_table_charges_warm_starts_and_finds_who_reaches_each_k_first(tmp_path):
  from experiments import length_table
  cell = tmp_path / 'n128_a16' / 'runs'

  def run(name, kind, history, init_from=''):
    (cell / name).mkdir(parents=True)
    last = history[-1]
    result = {'task.name': 'khop', 'status': 'done', 'steps': last['step'], 'attention.kind': kind,
              'train.init_from': init_from, 'train_seconds': last['train_seconds'], 'step_memory_mib': 10.0,
              'train/steps_per_sec': 2.0, **{k: v for k, v in last.items() if k.startswith('eval/')}}
    (cell / name / 'result.json').write_text(json.dumps(result))
    records.write_jsonl(str(cell / name / 'evaluations.jsonl'), history)

  def row(step, seconds, errors):
    return {'step': step, 'train_seconds': seconds, **{f'eval/error_k{k}': e for k, e in enumerate(errors)}}

  run('khop-full', 'full', [row(500, 100.0, [0.0, 0.5]), row(1000, 200.0, [0.0, 0.01])])
  run('khop-local', 'local', [row(500, 20.0, [0.01, 0.2]), row(1000, 40.0, [0.0, 0.04])])
  run('khop-anna', 'anna', [row(500, 30.0, [0.0, 0.02])], init_from=str(cell / 'khop-full'))
  runs = length_table.load_runs(str(tmp_path))
  anna = next(r for r in runs if r['variant'] == 'anna (warm from full)')
  assert anna['history'][0]['seconds'] == 230.0  # its source's 200 s first
  text = '\n'.join(length_table.crossover_rows(runs))
  assert '| alphabet N / 8 | 128 | 0 | local (20 s, 500 steps) | full (100 s, 500 steps); anna (warm from full) (230 s' \
         in text
  assert '| alphabet N / 8 | 128 | 1 | local (40 s, 1000 steps) | full (200 s, 1000 steps); anna' in text
  assert '| alphabet N / 8 | 128 | local | 1 | 0.0 / 4.0 | 1000 | 2.00 | 40 | 10.0 |' in '\n'.join(
      length_table.table_rows(runs))
  assert length_table.time_to_accuracy(runs, 128, 16)[:4] == b'\x89PNG'


def test_a_hashing_kinds_tuning_is_set_from_the_config_and_reaches_its_plan(monkeypatch):
  from anna_jax import plans
  from anna_jax.model import Transformer
  c = tiny_config({'attention.kind': 'anna', 'attention.anna.tuning.token_budget': 1024})
  x = experiment.build(c)
  assert x.model.attention.anna.tuning == plans.Tuning(token_budget=1024)
  assert not any('tuning' in path for path in records.run_fields(x))  # speed only: a run resumes with any
  resolved = []
  real = plans.resolve
  monkeypatch.setattr(plans, 'resolve', lambda *a, **kw: resolved.append(a) or real(*a, **kw))
  model = Transformer(x.model, rngs=nnx.Rngs(0))
  model(jnp.zeros((1, 9), jnp.int32))
  assert resolved and all(a[2] == plans.Tuning(token_budget=1024) for a in resolved)


def test_length_table_reads_a_stopped_run_from_its_record_and_last_evaluation(tmp_path):
  from experiments import length_table
  run_dir = tmp_path / 'n512_a4' / 'runs' / 'khop-reformer'
  run_dir.mkdir(parents=True)
  (run_dir / 'config.json').write_text(json.dumps({'fields': {'task.name': 'khop', 'attention.kind': 'reformer',
                                                              'train.init_from': ''}}))
  records.write_jsonl(str(run_dir / 'evaluations.jsonl'),
                      [{'step': 500, 'train_seconds': 9.0, 'eval/error_k0': 0.01, 'eval/error_k1': 0.5}])
  (run,) = length_table.load_runs(str(tmp_path))
  assert run['result'].status == 'stopped' and run['result'].steps == 500
  assert '| alphabet 4 | 512 | reformer | 0 | 1.0 / 50.0 | 500 (stopped: its last evaluation) |' in '\n'.join(
      length_table.table_rows([run]))
