"""Launches experiments.main locally, as a SLURM job array, or on every worker of a Cloud TPU VM pod.

Everything after `--` goes to experiments.main unchanged. --dry_run prints what would run and runs nothing.

  python -m launch.launch --target=local --num_shards=2 -- --config.train.steps=2000
  python -m launch.launch --target=slurm --num_shards=10 --gpus_per_node=4 -- --config=experiments/configs/khop_paper.py
  python -m launch.launch --target=tpu --tpu_name=my-pod --zone=us-central2-b -- --config=experiments/configs/khop_paper.py

Scale-out model: a sweep is split into --num_shards deterministic shards (experiments.main --shard_index);
each shard is one JAX job. A job on several hosts (SLURM --nodes > 1, every TPU pod) calls
jax.distributed.initialize(), which reads the cluster from SLURM's or the TPU's environment, and trains data
parallel over all of its devices.
"""

import os
import shlex
import subprocess
import sys

from absl import app, flags

from anna_jax import tooling

_TARGET = flags.DEFINE_enum('target', 'local', ['local', 'slurm', 'tpu'], 'Where to launch.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands (and the sbatch script) without running them.')
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 1, 'Sweep shards: local processes, SLURM array tasks; on a TPU '
                                   'pod, shards run one after another.')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/sweep', 'Shared by every shard (a shared filesystem on clusters).')
_PYTHON = flags.DEFINE_string('python', 'python', 'Python that has anna-jax installed (on the remote side too).')
# local
_GPUS = flags.DEFINE_integer('gpus', 0, 'local: GPUs to spread the shards over (CUDA_VISIBLE_DEVICES); 0 = leave it.')
# slurm
_NODES = flags.DEFINE_integer('nodes_per_shard', 1, 'slurm: nodes per array task (> 1 runs multi-host).')
_GPUS_PER_NODE = flags.DEFINE_integer('gpus_per_node', 1, 'slurm: GPUs per node.')
_PARTITION = flags.DEFINE_string('partition', None, 'slurm: partition.')
_TIME = flags.DEFINE_string('time', '24:00:00', 'slurm: wall-clock limit per array task.')
_SCRIPT = flags.DEFINE_string('script', 'anna-jax.sbatch', 'slurm: where the generated batch script is written.')
# tpu
_TPU_NAME = flags.DEFINE_string('tpu_name', None, 'tpu: the TPU VM (pod slice) name.')
_ZONE = flags.DEFINE_string('zone', None, 'tpu: its zone.')
_PROJECT = flags.DEFINE_string('project', None, 'tpu: GCP project (default: gcloud config).')
_REMOTE_DIR = flags.DEFINE_string('remote_dir', 'anna-jax', 'tpu: the checkout on every worker.')


def main_command(extra_args, *more):
  return [_PYTHON.value, '-m', 'experiments.main', f'--workdir={_WORKDIR.value}', *more, *extra_args]


def local_commands(extra_args):
  """[(env additions, argv)] for one process per shard."""
  commands = []
  for shard in range(_NUM_SHARDS.value):
    env = {}
    if _GPUS.value:
      per_shard = max(1, _GPUS.value // _NUM_SHARDS.value)
      first = (shard * per_shard) % _GPUS.value
      env['CUDA_VISIBLE_DEVICES'] = ','.join(str((first + i) % _GPUS.value) for i in range(per_shard))
    commands.append((env, main_command(extra_args, f'--shard_index={shard}', f'--num_shards={_NUM_SHARDS.value}')))
  return commands


def slurm_script(extra_args):
  multi_host = ['--distributed'] if _NODES.value > 1 else []
  command = main_command(extra_args, '--shard_index=$SLURM_ARRAY_TASK_ID', f'--num_shards={_NUM_SHARDS.value}',
                         *multi_host)
  # shlex.join would quote $SLURM_ARRAY_TASK_ID; keep that one argument expandable.
  command = ' '.join(arg if '$SLURM' in arg else shlex.quote(arg) for arg in command)
  lines = ['#!/bin/bash', '#SBATCH --job-name=anna-jax', f'#SBATCH --array=0-{_NUM_SHARDS.value - 1}',
           f'#SBATCH --nodes={_NODES.value}', '#SBATCH --ntasks-per-node=1',
           f'#SBATCH --gpus-per-node={_GPUS_PER_NODE.value}', f'#SBATCH --time={_TIME.value}',
           '#SBATCH --output=slurm-%x-%A_%a.out']
  if _PARTITION.value:
    lines.append(f'#SBATCH --partition={_PARTITION.value}')
  lines += ['', '# One process per node sees all of its GPUs; with several nodes, jax.distributed.initialize()',
            '# reads the coordinator and process ids from the SLURM environment.', f'srun {command}', '']
  return '\n'.join(lines)


def tpu_command(extra_args):
  gcloud = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', _TPU_NAME.value, f'--zone={_ZONE.value}']
  if _PROJECT.value:
    gcloud.append(f'--project={_PROJECT.value}')
  runs = [shlex.join(main_command(extra_args, '--distributed', f'--shard_index={shard}',
                                  f'--num_shards={_NUM_SHARDS.value}')) for shard in range(_NUM_SHARDS.value)]
  remote = f'cd {shlex.quote(_REMOTE_DIR.value)} && ' + ' && '.join(runs)
  return gcloud + ['--worker=all', f'--command={remote}']



def fail(message):
  tooling.fail(message, 'anna-jax launch')


def call(command):
  try:
    return subprocess.call(command)
  except FileNotFoundError:
    fail(f'{command[0]} is not installed here; run with --dry_run to see the command')


def main(argv):
  extra_args = argv[1:]
  if _NUM_SHARDS.value < 1 or _NODES.value < 1 or _GPUS.value < 0:
    fail('--num_shards and --nodes_per_shard must be >= 1, --gpus >= 0')
  if _TARGET.value == 'local':
    commands = local_commands(extra_args)
    for env, command in commands:
      print(' '.join(f'{k}={v}' for k, v in env.items()), shlex.join(command))
    if _DRY_RUN.value:
      return
    processes = [subprocess.Popen(command, env={**os.environ, **env}) for env, command in commands]
    codes = [p.wait() for p in processes]
    sys.exit(max(codes))
  if _TARGET.value == 'slurm':
    script = slurm_script(extra_args)
    print(script)
    print(f'sbatch {shlex.quote(_SCRIPT.value)}')
    if _DRY_RUN.value:
      return
    try:
      with open(_SCRIPT.value, 'w') as f:
        f.write(script)
    except OSError as e:
      fail(f'cannot write {_SCRIPT.value}: {e.strerror}')
    sys.exit(call(['sbatch', _SCRIPT.value]))
  if not _TPU_NAME.value or not _ZONE.value:
    fail('--target=tpu needs --tpu_name and --zone')
  command = tpu_command(extra_args)
  print(shlex.join(command))
  if not _DRY_RUN.value:
    sys.exit(call(command))


if __name__ == '__main__':
  app.run(main, flags_parser=tooling.flags_parser('anna-jax launch'))
