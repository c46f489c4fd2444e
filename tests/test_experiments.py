import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import sweep, train
from experiments.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  c = default.get_config()
  c.n, c.max_k, c.depth, c.width, c.num_heads = 8, 1, 1, 16, 2
  c.steps, c.batch_size, c.warmup_steps = 10, 8, 2
  c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 5, 10, 5, 1
  c.sweep.depth, c.sweep.attention = (), ()
  for name, value in overrides.items():
    c[name] = value
  return c


def params_of(workdir, c):
  trainer = train.Trainer(c)
  manager = train.checkpoint_manager(c, workdir)
  state, step = train.restore_latest(manager, trainer.initial_state)
  manager.close()
  return step, [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(state))]


def test_resume_from_checkpoint_gives_the_same_numbers(tmp_path):
  c = tiny_config()
  straight = train.train_and_evaluate(c, str(tmp_path / 'straight'))
  resumed_dir = tmp_path / 'resumed'
  train.train_and_evaluate(c, str(resumed_dir))
  # Lose the last checkpoint, as if the run had been killed after step 5.
  manager = train.checkpoint_manager(c, str(resumed_dir))
  manager.delete(10)
  manager.close()
  resumed = train.train_and_evaluate(c, str(resumed_dir))
  assert resumed['resumed_from'] == 5
  assert resumed['train/loss'] == straight['train/loss']
  assert resumed['eval/error'] == straight['eval/error']
  for a, b in zip(params_of(str(tmp_path / 'straight'), c)[1], params_of(str(resumed_dir), c)[1]):
    np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  c = tiny_config()
  train.train_and_evaluate(c, str(tmp_path))
  good_step, good_params = params_of(str(tmp_path), c)
  blown = tiny_config(steps=20, learning_rate=float('inf'))
  result = train.train_and_evaluate(blown, str(tmp_path))
  assert result['status'] == 'nan'
  step, params = params_of(str(tmp_path), c)
  assert step == good_step == 10
  for a, b in zip(params, good_params):
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a))


def test_sweep_expansion_and_sharding_are_deterministic():
  c = default.get_config()
  c.sweep.depth, c.sweep.attention, c.sweep.num_tables = (1, 2, 3), ('full', 'anna_softmax'), (1, 4)
  names = [name for name, _ in sweep.expand(c)]
  assert len(names) == len(set(names)) == 3 + 6  # full attention ignores num_tables: 3 points, not 6
  assert names == [name for name, _ in sweep.expand(c)]
  shards = [[n for n, _ in sweep.shard(sweep.expand(c), i, 5)] for i in range(5)]
  assert sorted(sum(shards, [])) == sorted(names)
  assert all(len(s) == 2 for s in shards[:4]) and len(shards[4]) == 1


def test_sweep_writes_results_table_plot_and_skips_finished_runs(tmp_path):
  c = tiny_config()
  c.sweep.depth, c.sweep.attention = (1, 2), ('full', 'anna_softmax')
  results = sweep.run_sweep(c, str(tmp_path))
  assert len(results) == 4 and all(r['status'] == 'done' for r in results)
  assert all('eval/error_k1' in r and 0.0 <= r['eval/error'] <= 1.0 for r in results)
  assert all(r['eval/dropped_fraction'] >= 0.0 for r in results if r['attention'] == 'anna_softmax')
  lines = (tmp_path / 'results.jsonl').read_text().splitlines()
  assert sorted(json.loads(line)['name'] for line in lines) == sorted(r['name'] for r in results)
  assert (tmp_path / 'results.md').read_text().count('\n') == 2 + 4
  assert (tmp_path / 'error_vs_depth.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob('runs/*/result.json')}
  again = sweep.run_sweep(c, str(tmp_path))
  assert again == results
  assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.glob('runs/*/result.json')}


KHOP = '--config=experiments/configs/default.py'  # the k-hop base config (the default job is Match2)


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
  c.sweep.attention = ('full', 'anna_softmax')
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
    assert {by_name[r['name']]['hparams']['attention'] for r in results} == {'full', 'anna_softmax'}
    assert 'sweep/error_vs_depth' in fetch_json(f'{base}/plugin/images/tags')['.']
  finally:
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow
def test_killed_sweep_resumes_and_loses_nothing(tmp_path):
  args = [f'--workdir={tmp_path}', '--config.n=8', '--config.max_k=1', '--config.width=16', '--config.num_heads=2',
          '--config.steps=2000', '--config.warmup_steps=10', '--config.checkpoint_every=50',
          '--config.eval_every=2000', '--config.log_every=50', '--config.sweep.depth=(1,2)',
          "--config.sweep.attention=('full',)"]
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  process = subprocess.Popen([sys.executable, '-m', 'experiments.main', KHOP, *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  second_run = tmp_path / 'runs' / 'khop-full-d2-w16-n8-k1-s0' / 'checkpoints'
  deadline = time.time() + 240
  while not (second_run.exists() and any(p.name.isdigit() for p in second_run.iterdir())):
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  first_result = tmp_path / 'runs' / 'khop-full-d1-w16-n8-k1-s0' / 'result.json'
  saved = first_result.read_text()
  assert json.loads((tmp_path / 'results.jsonl').read_text())['name'] == 'khop-full-d1-w16-n8-k1-s0'
  result = run_main(*args)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'finished earlier, skipped' in result.stderr and 'resuming from step' in result.stderr
  assert first_result.read_text() == saved
  lines = [json.loads(line) for line in (tmp_path / 'results.jsonl').read_text().splitlines()]
  assert [r['name'] for r in lines] == ['khop-full-d1-w16-n8-k1-s0', 'khop-full-d2-w16-n8-k1-s0']
  assert all(r['status'] == 'done' and r['steps'] == 2000 for r in lines)
