import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from anna_jax import oracle
from anna_jax.attention import make_attention
from benchmarks.measure import Record
from benchmarks.report import crossover, fit_slope

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'benchmarks.scaling', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def records(times, kind, mode='forward'):
  return [Record(kind, mode, n, 'ok', median_seconds=t) for n, t in times.items()]


def test_slope_and_crossover_on_known_curves():
  lengths = [1024, 2048, 4096, 8192]
  rs = records({n: 1e-6 * n for n in lengths}, 'anna') + records({n: 0.5e-9 * n * n for n in lengths}, 'full')
  assert fit_slope(rs, 'anna', 'forward', 0, 10**9) == pytest.approx(1.0)
  assert fit_slope(rs, 'full', 'forward', 0, 10**9) == pytest.approx(2.0)
  assert crossover(rs, 'forward') == 2048  # 1e-6 n < 0.5e-9 n^2 from n > 2000
  rs.append(Record('anna', 'forward', 16384, 'ok', median_seconds=0.016))
  rs.append(Record('full', 'forward', 16384, 'over_memory'))
  assert crossover(rs, 'forward') == 2048  # full could not run at 16K: ANNA wins there by default
  assert crossover(records({1024: 2.0}, 'anna') + records({1024: 1.0}, 'full'), 'forward') is None


def test_tiny_harness_run_writes_every_output(tmp_path):
  result = run('--lengths=128,256', '--heads=2', '--head_dim=8', '--repeats=2', '--num_tables=2',
               '--chunk_size=32', '--window=256', '--lowrank_features=16', '--reformer_chunk=32', '--block=64',
               '--quality_queries=16', '--profile', f'--outdir={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  kinds = 6  # every CPU kind: anna, anna_softmax, reformer, lowrank, full, full_blockwise
  assert len(list((tmp_path / 'trace').iterdir())) == kinds * 2 * 2  # one jax.profiler trace per point
  with open(tmp_path / 'scaling.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == kinds * 2 * 2  # kinds x modes x lengths
  assert all(r['status'] == 'ok' and float(r['median_seconds']) > 0 and float(r['compile_seconds']) > 0 and
             int(r['peak_bytes']) > 0 and float(r['analytic_flops']) > 0 and float(r['peak_fraction']) > 0
             for r in rows)
  forward = [r for r in rows if r['mode'] == 'forward']
  assert all(0.0 <= float(r['dropped_fraction']) <= 1.0 for r in forward if r['kind'] in ('anna_softmax', 'reformer'))
  assert all(0.0 <= float(r['no_collision_fraction']) <= 1.0 and float(r['mean_collisions']) > 0
             for r in forward if r['kind'] == 'anna')
  # Quality against exact attention over the same pairs: anna_softmax's windows hold every key here, so it is
  # exact; the Reformer's chunks drop pairs, which shows; a Performer with 16 features is an approximation.
  quality = {(r['kind'], int(r['n'])): (float(r['dropped_fraction']), float(r['relative_error'])) for r in forward}
  assert all(quality['anna_softmax', n][0] == 0.0 and quality['anna_softmax', n][1] < 1e-4 for n in (128, 256))
  assert all(quality['reformer', n][0] > 0.0 and quality['reformer', n][1] > 1e-3 for n in (128, 256))
  assert all(1e-3 < quality['lowrank', n][1] < 2.0 for n in (128, 256))
  assert all(float(r['relative_error']) < 1e-4 for r in forward if r['kind'] == 'full_blockwise')  # exact
  # cost_analysis only where it is right (no loops)
  assert all((r['xla_flops'] == 'nan') == (r['kind'] not in ('full', 'lowrank')) for r in rows)
  summary = json.loads((tmp_path / 'scaling.json').read_text())
  assert 'cpu' in summary['device'].lower() and set(summary['crossover']) == {'forward', 'train'}
  report = (tmp_path / 'report.md').read_text()
  assert '## forward: median time' in report and '## train: median time' in report and '| 256 |' in report
  assert 'speed-up over the strongest exact baseline' in report and 'Matmul peak measured' in report
  assert (tmp_path / 'scaling.png').read_bytes()[:4] == b'\x89PNG'
  assert list((tmp_path / 'tb').glob('events.out.tfevents.*'))


def test_over_memory_points_are_recorded_and_the_run_goes_on(tmp_path):
  result = run('--lengths=64,4096', '--kinds=full,anna', '--modes=forward', '--heads=2', '--head_dim=8',
               '--repeats=1', '--num_tables=1', '--chunk_size=32', '--window=32', '--memory_budget_gb=0.01',
               f'--outdir={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / 'scaling.csv') as f:
    status = {(r['kind'], r['n']): r['status'] for r in csv.DictReader(f)}
  assert status == {('full', '64'): 'ok', ('full', '4096'): 'over_memory', ('anna', '64'): 'ok',
                    ('anna', '4096'): 'ok'}


def test_measure_runs_in_process_from_a_settings_object():
  # No flags read inside: a Settings object and the kind's name are all a point needs.
  from benchmarks import kinds, measure
  s = kinds.Settings(heads=2, head_dim=8, num_tables=2, chunk_size=16, window=16, repeats=1, quality_queries=8,
                     reformer_chunk=16)
  # Analytic FLOPs written out by hand (rows = batch x heads = 2, n = 64, d = 8): full 4 n^2 d; reformer (4
  # buckets, 8 rounds, chunk 16) 2 n d (B / 2) r + 8 n c d r; anna_softmax (z = log2(64 / 8) = 3, l = 2, W = 16)
  # 4 n d z l + 4 d P over the P pairs scored, fewer than the window slots n W l.
  expected = {'full': 2 * 4 * 64 * 64 * 8, 'reformer': 2 * (2 * 64 * 8 * 2 * 8 + 8 * 64 * 16 * 8 * 8)}
  for kind, flops in expected.items():
    record = measure.measure(s, kind, 'forward', 64, budget=2**34, peak_gflops=1.0)
    assert record.status == 'ok' and record.median_seconds > 0, record
    assert record.analytic_flops == flops, kind
  hashing = 2 * 4 * 64 * 8 * 3 * 2
  record = measure.measure(s, 'anna_softmax', 'forward', 64, budget=2**34, peak_gflops=1.0)
  assert hashing < record.analytic_flops < hashing + 2 * 4 * 64 * 16 * 8 * 2
  # anna_softmax with windows that hold every collision: its quality reference (the oracle) agrees with it, and
  # the pairs it is charged for are the oracle's (query, key, table) collisions.
  wide = kinds.Settings(heads=2, head_dim=8, num_tables=2, num_hashes=2, chunk_size=16, window=64, repeats=1,
                        quality_queries=16)
  for mode in ('forward', 'train'):
    record = measure.measure(wide, 'anna_softmax', mode, 64, budget=2**34, peak_gflops=1.0)
    keys = jax.random.split(jax.random.key(wide.seed), 5)
    q, k = (jax.random.normal(key, (wide.batch, 64, 2, 8)) for key in keys[:2])
    module = make_attention(kinds.attention_config('anna_softmax', 64, wide), 2, 8, rngs=nnx.Rngs(keys[3]))
    pairs = float(jnp.sum(oracle.collision_counts(q, k, module.hashes.projections[...], 'hyperplane')))
    assert record.analytic_flops == (3 if mode == 'train' else 1) * (2 * 4 * 64 * 8 * 2 * 2 + 4 * 8 * pairs)
    if mode == 'forward':  # quality is measured on forward points only
      assert record.dropped_fraction == 0.0 and record.relative_error < 1e-5
  with pytest.raises(ValueError, match='>= 1'):
    kinds.Settings(repeats=0)


@pytest.mark.slow
def test_device_check_runs_in_a_reduced_form_on_cpu(tmp_path):
  # benchmarks/device_check.sh as `make device-check` runs it, shrunk: two lengths, one kind, a 1 s scaling
  # budget (so the second length is skipped: the budget works), the train step's speed, the long-N train step
  # benchmark at N = 64 for two kinds, then the induction
  # surrogate for 2 s (a tiny model), which must stop on its time limit with a checkpoint and a result the same command resumes.
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu', PYTHON=sys.executable, LENGTHS='64,128',
             KINDS='anna_softmax', SCALING_SECONDS='1', REPEATS='1', TRAIN_SECONDS='2', SPEED_SETTINGS='1:1',
             LONG_LENGTHS='64', LONG_VARIANTS='full,anna (colliding ST)',
             TRAIN_FLAGS='--config.model.width=16 --config.task.khop.n=16 --config.evaluation.test_size=8 '
                         '--config.train.batch_size=4 --config.train.log_every=1')
  out = tmp_path / 'check'
  result = subprocess.run(['sh', 'benchmarks/device_check.sh', str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  for causal in ('nocausal', 'causal'):
    with open(out / f'scaling-{causal}' / 'scaling.csv') as f:
      status = {(r['kind'], r['mode'], r['n']): r['status'] for r in csv.DictReader(f)}
    assert status['anna_softmax', 'forward', '64'] == 'ok'  # the first point always runs
    later = {status['anna_softmax', mode, '128'] for mode in ('forward', 'train')}
    assert later == {'skipped'}
  (run,) = (out / 'induction' / 'runs').iterdir()
  trained = json.loads((run / 'result.json').read_text())
  assert trained['status'] == 'time_limit' and 0 < trained['steps'] < 400_000 and 'eval/error' in trained
  assert (run / 'checkpoints' / str(trained['steps'])).is_dir()
  speed = (out / 'train_step_speed.md').read_text()  # the same tiny model's step
  assert '| 1 | 1 |' in speed and 'share of the FLOP bound' in speed
  long_steps = (out / 'long_train_step.md').read_text()  # the k-hop length model's whole train step, two kinds
  assert '| 64 | full |' in long_steps and '| 64 | anna (colliding ST) |' in long_steps and '| ok |' in long_steps
  assert 'finished' in (out / 'device.txt').read_text()


def test_sequence_parallel_traffic_benchmark_records_every_collective(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  command = [sys.executable, '-m', 'benchmarks.sequence_parallel', '--head_dim=8', '--num_tables=2', '--repeats=1',
             f'--outdir={tmp_path}']
  bad = subprocess.run([*command, '--lengths=100'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
  result = subprocess.run([*command, '--lengths=512'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / 'traffic.jsonl') as f:
    rows = {(r['way'], r['causal']): r for r in map(json.loads, f)}
  assert len(rows) == 4 and all(r['max_abs_difference'] < 1e-5 for r in rows.values())
  # dense, z = 4: a (tables, 16 buckets, dim + 1) float32 table per device, summed once or scanned in 4 shifts
  assert [(c['name'], c['bytes']) for c in rows['dense', False]['collectives']] == [('psum', 2 * 16 * 9 * 4)]
  assert [c['name'] for c in rows['dense', True]['collectives']] == ['ppermute'] * 4
  # routed, z = 9: 64 tokens per device, 16 slots per (source, destination): ids 4 bytes, payloads 9 floats
  routed = rows['routed', False]
  slots = 2 * 8 * 16
  assert sorted((c['name'], c['bytes']) for c in routed['collectives'] if c['per_round']) == [
      ('all_to_all', slots * 4), ('all_to_all', slots * 4), ('all_to_all', slots * 36), ('all_to_all', slots * 36)]
  assert routed['rounds'] >= 1 and routed['sent_bytes_per_device'] >= routed['rounds'] * slots * 80 * 7 / 8
