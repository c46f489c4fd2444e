"""Every command line of ours answers bad input with one line on stderr and exit code 2, in a process of its own,
and leaves nothing behind (no result files, no checkpoints)."""

import multiprocessing
import os
import runpy
import subprocess
import sys
import traceback

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KHOP = '--config=experiments/configs/default.py'

BAD_INPUTS = [  # (module, arguments, a word the one-line error must contain)
    ('experiments.main', ['--config.bogus=1'], 'bogus'),
    ('experiments.main', ['--config=no/such/config.py'], 'config'),
    ('experiments.main', ['--config=tests/__init__.py'], 'config'),  # a file without get_config()
    ('experiments.main', ['--config.train.steps=many'], 'steps'),
    ('experiments.main', ['--config.sweep.attention.unit_softmax.beta=abc'], 'beta'),
    ('experiments.main', ['--config.attention.anna.bogus=1'], 'bogus'),  # a nested field
    ('experiments.main', ['--config.attention.anna.num_tables=0'], 'num_tables'),
    ('experiments.main', ['--config.attention.reformer.num_buckets=3'], 'even'),
    ('experiments.main', ["--config.attention.per_layer=({'kind':'full'},{'kind':'full'})"], 'layer_attention'),
    ('experiments.main', ["--config.attention.per_layer=({'nope':1},)"], 'nope'),
    ('experiments.main', [KHOP, '--config.task.name=copy'], 'unknown task'),
    ('experiments.main', [KHOP, '--config.task.khop.max_k=-1'], 'max_k >= 0'),
    ('experiments.main', [KHOP, '--config.model.depth=0', '--config.sweep.model.depth=()'], 'depth'),
    ('experiments.main', [KHOP, '--config.task.khop.n=3', '--config.task.khop.max_k=4'], 'too small'),
    ('experiments.main', [KHOP, '--config.attention.kind=sparse', '--config.sweep.attention.kind=()'],
     'attention kind'),
    ('experiments.main', ['--config.attention.anna.family=simhash'], 'family'),
    ('experiments.main', ['--no_such_flag=1'], 'no_such_flag'),
    ('experiments.main', ['--num_shards=2', '--shard_index=2'], 'shard_index'),
    ('experiments.main', ['--workdir=/proc/no-such-dir'], 'cannot write'),
    ('experiments.main', ['--mode=everything'], 'mode'),
    ('experiments.main', ['--mode=grid', KHOP], 'no grid'),
    ('experiments.main', ['--mode=grid', '--config.grid.draws=0'], 'draws'),
    ('experiments.main', ['--mode=grid', '--config.grid.tables_per_layer=((1,),(2,))'], 'depth'),
    ('experiments.n_scaling', [], 'no grid rows'),
    ('experiments.main', ['--mode=diagnose', '--cells=16x4'], 'tables:hashes'),
    ('experiments.main', ['--mode=diagnose', KHOP], 'test_size'),
    ('experiments.main', [KHOP, '--config.evaluation.k=5'], 'evaluation.k'),
    ('experiments.main', [KHOP, '--config.train.train_size=8'], 'fixed training set'),
    ('experiments.match2_construction', ['--log2_n=ten'], 'integers'),
    ('experiments.match2_construction', ['--width=7'], 'even'),
    ('experiments.khop_construction', ['--ks=one'], 'integers'),
    ('experiments.khop_construction', ['--base=1'], 'base'),
    ('benchmarks.scaling', ['--kinds=sparse'], 'unknown kinds'),
    ('benchmarks.scaling', ['--lengths=1k'], 'lengths'),
    ('benchmarks.scaling', ['--lengths=0'], '>= 1'),
    ('benchmarks.scaling', ['--repeats=0'], '>= 1'),
    ('benchmarks.scaling', ['--repeats=two'], 'repeats'),
    ('benchmarks.scaling', ['--outdir=/proc/no-such-dir', '--lengths=64'], 'cannot write'),
    ('launch.launch', ['--target=tpu', '--dry_run'], 'tpu_name'),
    ('launch.launch', ['--target=moon'], 'target'),
    ('launch.launch', ['--num_shards=0', '--dry_run'], 'num_shards'),
    ('launch.launch', ['--target=slurm', '--script=/proc/no-such-dir/job.sbatch'], 'cannot write'),
]


OUTPUT_FLAGS = {'benchmarks.scaling': '--outdir', 'experiments.match2_construction': '--out',
                'experiments.khop_construction': '--out'}


def run(module, args, cwd, env_extra=None):
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, **(env_extra or {}))
  return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)


def _run_module_as_main(module, args, stderr_path):
  """In a forked child: `python -m module args` with stderr to a file; exits with the command's exit code."""
  os.environ.update(XLA_FLAGS='', JAX_PLATFORMS='cpu')
  with open(stderr_path, 'w') as f:
    os.dup2(f.fileno(), 2)
  os.chdir(ROOT)  # relative config paths resolve from the repository root
  sys.argv = [module, *args]
  try:
    runpy.run_module(module, run_name='__main__', alter_sys=True)
    code = 0
  except SystemExit as exit_:
    code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    code = 1
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


@pytest.fixture(scope='module')
def forked():
  """Processes forked from a server that imported jax, flax and orbax once (importing them is most of a bad
  command's 2 s), each then running a command line as `python -m` would: its own process, exit code and stderr."""
  context = multiprocessing.get_context('forkserver')
  context.set_forkserver_preload(['jax', 'flax.nnx', 'optax', 'orbax.checkpoint', 'ml_collections', 'absl.app'])
  return context


@pytest.mark.parametrize('module, args, word', BAD_INPUTS, ids=[f'{m}:{" ".join(a)}' for m, a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(tmp_path, forked, module, args, word):
  workdir = tmp_path / 'work'
  flag = OUTPUT_FLAGS.get(module, '--workdir' if module.startswith('experiments') else None)
  extra = [f'{flag}={workdir}'] if flag and not any(a.startswith(flag) for a in args) else []
  child = forked.Process(target=_run_module_as_main, args=(module, [*args, *extra], str(tmp_path / 'stderr')))
  child.start()
  child.join(300)
  stderr = (tmp_path / 'stderr').read_text()
  assert child.exitcode == 2, (child.exitcode, stderr[-2000:])
  assert stderr.strip().count('\n') == 0, stderr[-2000:]
  assert word in stderr and 'Traceback' not in stderr, stderr
  assert not workdir.exists() or not any(workdir.rglob('*.json*')), 'a failed start left results behind'


def test_missing_sbatch_is_one_line(tmp_path):
  result = run('launch.launch', ['--target=slurm', f'--script={tmp_path / "job.sbatch"}'], cwd=ROOT,
               env_extra={'PATH': str(tmp_path)})  # no sbatch anywhere
  assert result.returncode == 2 and 'sbatch is not installed' in result.stderr and 'Traceback' not in result.stderr


def test_console_has_no_backend_probe_noise_and_fits_80_columns(tmp_path):
  args = [KHOP, f'--workdir={tmp_path}', '--config.task.khop.n=8', '--config.task.khop.max_k=1',
          '--config.model.width=16', '--config.model.num_heads=2', '--config.train.steps=4',
          '--config.optim.warmup_steps=1', '--config.train.batch_size=8', '--config.train.log_every=2',
          '--config.evaluation.every=4', '--config.train.checkpoint_every=2', '--config.evaluation.batches=1',
          '--config.sweep.model.depth=(1,)', "--config.sweep.attention.kind=('full',)"]
  result = run('experiments.main', args, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Unable to initialize' not in result.stderr and 'libtpu' not in result.stderr
  progress = [line for line in result.stderr.splitlines() if ' step ' in line]
  assert progress and all(len(line) <= 80 for line in progress), progress
