import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from anna_jax.kinds import anna as anna_kind
from experiments import experiment, grid, train
from tests.test_experiments import ROOT, TINY_KHOP, params_of, tiny_config


def test_data_and_sequence_parallel_over_8_devices_match_one_device(tmp_path, monkeypatch):
  # 8 devices = 2 (data) x 4 (sequence). Trained with unit_softmax (partitioned by XLA), evaluated with anna,
  # sequence-parallel (16 tokens, 4 per device; 8 buckets > 4: records routed to owners); then a grid cell.
  assert jax.device_count() == 8  # tests/conftest.py asks XLA for 8 host devices
  over = {'task.khop.n': 15, 'attention.kind': 'unit_softmax', 'evaluation.attention': 'anna',
          'evaluation.test_size': 16}
  traced = []  # which runs traced the sequence-parallel anna
  sharded_anna = anna_kind.sequence_parallel_anna
  monkeypatch.setattr(anna_kind, 'sequence_parallel_anna',
                      lambda *args, **kwargs: traced.append(name) or sharded_anna(*args, **kwargs))
  results, cells, params = [], [], []
  for name, devices in (('one', {'train.num_devices': 1}),
                        ('split', {'train.num_devices': 8, 'train.sequence_devices': 4})):
    c = tiny_config({**over, **devices})
    results.append(train.train_and_evaluate(c, str(tmp_path / name)))
    evaluator = grid.RunEvaluator(experiment.build(c), str(tmp_path / name))
    cells.append(evaluator.cell((2,), 2, 1, 0))
    params.append(params_of(str(tmp_path / name), tiny_config({**over, 'train.num_devices': 1}))[1])
  one, split = results
  assert split['num_devices'] == 8 and set(traced) == {'split'}
  np.testing.assert_allclose(split['train/loss'], one['train/loss'], rtol=1e-5)
  for name in ('eval/error', 'eval/mean_collisions', 'eval/no_collision_fraction'):
    np.testing.assert_allclose(split[name], one[name], rtol=1e-6)
  np.testing.assert_allclose(cells[1][:3], cells[0][:3], rtol=1e-6)
  # Adam divides by sqrt(v): near-zero gradients turn float reduction-order noise into visible (but
  # small) differences, well under the 10 steps x lr 1e-3 that the parameters moved.
  for a, b in zip(*params):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-4)


def test_sequence_devices_must_divide_devices_and_length():
  with pytest.raises(ValueError, match='groups of'):
    experiment.build(tiny_config({'train.num_devices': 8, 'train.sequence_devices': 3}))
  with pytest.raises(ValueError, match='tokens must split'):
    experiment.build(tiny_config({'train.num_devices': 8, 'train.sequence_devices': 2}))  # 9 tokens


def test_batch_must_split_over_devices():
  with pytest.raises(ValueError, match='split evenly'):
    experiment.build(tiny_config({'train.num_devices': 8, 'train.batch_size': 12}))


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


TINY_FLAGS = ['--config=experiments/configs/default.py', *TINY_KHOP, '--config.train.steps=6',
              '--config.optim.warmup_steps=2', '--config.train.batch_size=8', '--config.train.checkpoint_every=3',
              '--config.evaluation.every=6', '--config.train.log_every=3', '--config.evaluation.batches=1',
              '--config.train.num_devices=0', '--config.sweep.model.depth=()',
              "--config.sweep.attention.kind=('anna_softmax',)"]


def launch(workdir, devices_per_process, process_id=None, port=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
  args = [sys.executable, '-m', 'experiments.main', f'--workdir={workdir}', *TINY_FLAGS]
  if process_id is not None:
    args += ['--distributed', f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
             f'--process_id={process_id}']
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_train_together_like_one_process_with_two_devices(tmp_path):
  port = free_port()
  processes = [launch(tmp_path / 'multi', 1, i, port) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  single = launch(tmp_path / 'single', 2)
  output = single.communicate(timeout=300)[0]
  assert single.returncode == 0, output[-3000:]
  name = 'khop-anna_softmax'
  multi = json.loads((tmp_path / 'multi' / 'runs' / name / 'result.json').read_text())
  alone = json.loads((tmp_path / 'single' / 'runs' / name / 'result.json').read_text())
  assert multi['num_devices'] == alone['num_devices'] == 2
  np.testing.assert_allclose(multi['train/loss'], alone['train/loss'], rtol=1e-5)
  assert (tmp_path / 'multi' / 'runs' / name / 'checkpoints' / '6').is_dir()
  # Only process 0 writes metrics: one event file per TensorBoard run directory.
  assert len(list((tmp_path / 'multi' / 'tb' / name).glob('events.out.tfevents.*'))) == 1
