import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args):
  result = subprocess.run([sys.executable, '-m', 'launch.launch', *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
  return result.returncode, result.stdout, result.stderr


def test_local_dry_run_prints_one_process_per_shard_with_its_gpus():
  code, out, _ = launch('--target=local', '--num_shards=2', '--gpus=4', '--dry_run', '--workdir=w', '--',
                        '--config.train.steps=7')
  assert code == 0
  lines = out.strip().splitlines()
  assert len(lines) == 2
  for shard, line in enumerate(lines):
    assert line.startswith(f'CUDA_VISIBLE_DEVICES={2 * shard},{2 * shard + 1} ')
    argv = shlex.split(line.split(' ', 1)[1])
    assert argv[:3] == ['python', '-m', 'experiments.main']
    assert {'--workdir=w', f'--shard_index={shard}', '--num_shards=2', '--config.train.steps=7'} <= set(argv)


def test_slurm_dry_run_prints_an_array_job_and_writes_nothing(tmp_path):
  script = tmp_path / 'job.sbatch'
  code, out, _ = launch('--target=slurm', '--num_shards=3', '--nodes_per_shard=2', '--gpus_per_node=8',
                        '--partition=gpu', f'--script={script}', '--dry_run', '--', '--config.model.depth=3')
  assert code == 0 and not script.exists()
  assert '#SBATCH --array=0-2' in out and '#SBATCH --nodes=2' in out and '#SBATCH --gpus-per-node=8' in out
  assert '#SBATCH --partition=gpu' in out
  srun = next(line for line in out.splitlines() if line.startswith('srun '))
  assert '--shard_index=$SLURM_ARRAY_TASK_ID' in srun and '--num_shards=3' in srun
  assert '--distributed' in srun and '--config.model.depth=3' in srun
  assert out.strip().endswith(f'sbatch {script}')


def test_tpu_dry_run_runs_on_every_worker_with_distributed_init():
  code, out, _ = launch('--target=tpu', '--tpu_name=pod', '--zone=us-central2-b', '--dry_run', '--',
                        '--config.train.steps=5')
  assert code == 0
  argv = shlex.split(out.strip())
  assert argv[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pod'] and '--worker=all' in argv
  remote = next(a for a in argv if a.startswith('--command='))
  assert 'experiments.main' in remote and '--distributed' in remote and '--config.train.steps=5' in remote


def test_missing_tpu_name_and_missing_sbatch_are_one_line_errors(tmp_path):
  code, _, err = launch('--target=tpu', '--dry_run')
  assert code == 2 and err.strip().count('\n') == 0 and 'tpu_name' in err
  env_path = os.environ['PATH']
  try:
    os.environ['PATH'] = str(tmp_path)  # no sbatch anywhere
    code, _, err = launch('--target=slurm', f'--script={tmp_path / "job.sbatch"}')
  finally:
    os.environ['PATH'] = env_path
  assert code == 2 and 'sbatch is not installed' in err and 'Traceback' not in err
