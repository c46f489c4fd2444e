"""Runs a sweep (or a single run) of the config given by --config; see README.md.

  python -m experiments.main --workdir=runs/default
  python -m experiments.main --config=experiments/configs/khop_paper.py --config.steps=1000
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import sweep
from experiments.cli import fail

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'default.py')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Config file; override fields with --config.x=y.')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/default', 'Where checkpoints, TensorBoard logs and results go.')
_SHARD_INDEX = flags.DEFINE_integer('shard_index', 0, 'This process group runs sweep points i = shard_index mod num_shards.')
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 1, 'Number of shards the sweep is split into.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host); '
                                 'coordinator and process ids come from the flags below or the cluster env.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process (multi-host).')




def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, TypeError, AttributeError, KeyError) as e:
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def quiet_libraries():
  # Orbax logs every save at INFO; keep the console for our own progress lines.
  quiet = lambda r: r.levelno >= 30 or 'orbax' not in r.pathname  # 30: Python's WARNING
  logging.get_absl_handler().python_handler.addFilter(quiet)


def main(argv):
  quiet_libraries()
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  import jax  # after flag parsing, so --help stays fast

  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  try:
    sweep.validate(config, _SHARD_INDEX.value, _NUM_SHARDS.value)
  except ValueError as e:
    fail(str(e))
  results = sweep.run_sweep(config, _WORKDIR.value, _SHARD_INDEX.value, _NUM_SHARDS.value)
  if jax.process_index() == 0:
    workdir = os.path.abspath(_WORKDIR.value)
    logging.info('results: %s/results.md (%d runs)', workdir, len(results))
    print(open(os.path.join(workdir, 'results.md')).read() if results else 'no finished runs')
    print(f'TensorBoard: tensorboard --logdir {workdir}/tb')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
