"""The runner's one command line: trains a sweep (or a single run) of the config given by --config, then
evaluates its grid if it has one; --mode picks a part.

  python -m experiments.main                                   # the README's job: a small Figure 1a
  python -m experiments.main --config=experiments/configs/khop_paper.py --config.train.steps=1000
  python -m experiments.main --mode=grid --config=experiments/configs/match2_paper.py --workdir=runs/match2_paper
  python -m experiments.main --mode=diagnose --config=... --cells=16:4,128:10   # experiments.swap_diagnosis
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from anna_jax.tooling import fail, first_line, flags_parser, quiet_console, writable_dir
from experiments import grid, records, swap_diagnosis, sweep

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'quick_figure1a.py')



def config_error(error):
  """One line for a config file or --config.x override that cannot be applied."""
  if isinstance(error, (KeyError, AttributeError)):
    return f'unknown config field {first_line(error)}: see the config file for its fields'
  return f'bad --config: {first_line(error)}'


try:  # ml_collections reads the --config.x overrides from sys.argv already here, when the flag is defined
  _CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Config file; override fields with --config.x=y.')
except Exception as e:  # noqa: BLE001 -- any failure here comes from the command line
  fail(config_error(e))
_WORKDIR = flags.DEFINE_string('workdir', 'runs/quick_figure1a', 'Where checkpoints, TensorBoard logs and results go.')
_MODE = flags.DEFINE_enum('mode', 'all', ['all', 'train', 'grid', 'diagnose'], 'all: train the sweep, then '
                          "evaluate the config's grid (if any); train: only train; grid: only evaluate finished "
                          "runs; diagnose: the swap diagnosis of finished runs (experiments.swap_diagnosis).")
_SHARD_INDEX = flags.DEFINE_integer('shard_index', 0, 'This process group runs sweep points i = shard_index mod num_shards.')
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 1, 'Number of shards the sweep is split into.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host); '
                                 'coordinator and process ids come from the flags below or the cluster env.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process (multi-host).')
_DIAGNOSIS = swap_diagnosis.define_flags()  # --cells, --sequences: read by --mode=diagnose
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Train again from scratch every run whose directory holds a run '
                               'trained with other settings (deleting its checkpoints, result and logs); without '
                               'it such a run stops the command with exit code 2.')




def load_config():
  """The config with its --config.x overrides applied (ml_collections applies them lazily, here)."""
  try:
    config = _CONFIG.value
    config.sweep  # a file that failed to load yields a stand-in that raises here  # noqa: B018
    return config
  except OSError:
    fail(f'cannot load the config file {flags.FLAGS["config"].config_filename!r}')
  except Exception as e:  # noqa: BLE001 -- a missing or broken config file or override is the user's input
    fail(config_error(e))


def main(argv):
  quiet_console()
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  import jax  # after flag parsing, so --help stays fast

  config = load_config()
  if _DISTRIBUTED.value:  # before anything asks jax for its devices
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  mode = _MODE.value
  has_grid = bool(config.grid.tables_per_layer or config.grid.tables_every_layer)
  with_grid = mode == 'grid' or (mode == 'all' and has_grid)
  try:  # every run of the sweep built (and so validated) once, here
    points = grid.validate(config) if with_grid else sweep.validate(config)
    sweep.validate_shard(_SHARD_INDEX.value, _NUM_SHARDS.value)
    if mode == 'diagnose':
      cells = swap_diagnosis.parse_cells(_DIAGNOSIS['cells'].value)
      if not all(x.evaluation.test_size for _, x in points):
        raise ValueError('the diagnosis reads a fixed test set: set evaluation.test_size > 0')
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    fail(first_line(e))
  writable_dir(_WORKDIR.value)
  workdir = os.path.abspath(_WORKDIR.value)
  try:
    if mode == 'diagnose':
      print(swap_diagnosis.run(config, workdir, points, cells, _DIAGNOSIS['sequences'].value))
      return
    run_modes(config, mode, with_grid, points)
  except records.StaleRun as e:
    fail(first_line(e))
  if jax.process_index() == 0:
    print(f'TensorBoard: tensorboard --logdir {workdir}/tb')


def run_modes(config, mode, with_grid, points):
  """Trains the sweep (unless mode is 'grid'), then evaluates its grid (if with_grid)."""
  import jax

  workdir = os.path.abspath(_WORKDIR.value)
  if mode != 'grid':
    results = sweep.run_sweep(config, _WORKDIR.value, _SHARD_INDEX.value, _NUM_SHARDS.value, points=points,
                              overwrite=_OVERWRITE.value)
    if jax.process_index() == 0:
      logging.info('results: %s/results.md (%d runs)', workdir, len(results))
      print(open(os.path.join(workdir, 'results.md')).read() if results else 'no finished runs')
  if with_grid:
    rows = grid.run_grid(config, _WORKDIR.value, points=points)
    if jax.process_index() == 0:
      print(open(os.path.join(workdir, 'grid.md')).read() if rows else 'no grid cells: no finished runs')
      if rows:
        print(f'grid: {workdir}/grid.jsonl, {workdir}/grid.md, plot {workdir}/grid.png')


if __name__ == '__main__':
  app.run(main, flags_parser=flags_parser('anna-jax'))
