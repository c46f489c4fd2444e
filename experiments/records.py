"""Every file a run or a grid writes and reads back, in one place: the record of the config that trained a run
(and the check that a later command agrees), its result.json, a sweep's results.jsonl, and the grid's cells
(typed: `GridCell`, one JSON line each in grid.jsonl).

`runs/<name>/config.json` is written (atomically) before a run's first step: every field the run reads, as
`Experiment.fields` holds them. A later command that trains in the same directory, or evaluates its checkpoint
on a grid, compares its own fields with the record and refuses (`StaleRun`, one line naming the fields) when any
field that changes the run's numbers differs: otherwise an old checkpoint would be resumed, skipped as finished
or evaluated under the new settings' name.

Fields that do not change a run's numbers, and so may differ (`UNRECORDED`): how many steps (more continues the
run, fewer stops it), how often it logs, evaluates and checkpoints, how many checkpoints it keeps, its time limit,
and how many devices and microbatches it is split over (the same numbers up to float reduction order), and a kind's
CPU tuning (attention.<kind>.tuning.*: speed and memory only). The grid
compares only what made the weights (`training_fields`: the evaluation section may differ, its cells are keyed by
it), and the sections of attention kinds the run neither trains nor evaluates with (the grid's own `anna`) never count.
Runs from before these records (a result.json or checkpoints, no config.json) are compared with their
result.json where there is one, and are otherwise adopted with a warning. Fields the record lacks (added to the
code later) count as recorded at their default.
"""

import collections.abc
import dataclasses
import functools
import json
import os

import jax
from absl import logging

from anna_jax import registry
from anna_jax.tasks import TASKS
from anna_jax.tooling import write_atomic
from experiments import experiment

UNRECORDED = ('train.steps', 'train.log_every', 'train.checkpoint_every', 'train.keep_checkpoints',
              'train.time_limit_s', 'train.num_devices', 'train.sequence_devices', 'train.microbatches',
              'evaluation.every')
RECORD = 'config.json'


class StaleRun(ValueError):
  """A run directory holds a run trained with other settings than the command asks for."""


def _plain(value):
  return json.loads(json.dumps(value, sort_keys=True, default=str))


def _kinds(model):
  return {model.attention.kind, *(layer.kind for layer in model.layer_attention)}


def run_fields(x):
  """{field: value} of the built Experiment `x` that its numbers depend on (see the module docstring)."""
  kinds = _kinds(x.model) | _kinds(x.eval_model)
  fields = {}
  for path, value in x.fields.items():
    parts = path.split('.')
    unused_kind = parts[0] == 'attention' and len(parts) > 2 and parts[1] not in kinds
    if path in UNRECORDED or 'tuning' in parts or unused_kind:
      continue
    fields[path] = _plain(value)
  return fields


def training_fields(x):
  """run_fields without the evaluation section: what made the weights."""
  return {path: value for path, value in run_fields(x).items() if not path.startswith('evaluation.')}


def recorded_fields(run_dir):
  """The fields recorded for the run in `run_dir`: config.json's, else a legacy result.json's (which holds the
  fields of its day beside its results); None if neither exists."""
  for name in (RECORD, 'result.json'):
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      return record['fields'] if name == RECORD else record
  return None


@functools.cache
def _defaults():
  """{'section.field': default} of every dataclass the config tree is built from (a field added to the code later
  counts as its dataclass default, whatever a user config sets)."""
  sections = {'train': experiment.TrainConfig, 'optim': experiment.OptimConfig, 'evaluation': experiment.EvalConfig,
              **{f'task.{name}': task for name, task in TASKS.items()},
              **{f'attention.{kind.name}': kind.config for kind in registry.kinds()}}
  tree = {name: experiment.section(cls) for name, cls in sections.items()}
  tree['model'] = experiment.model_section()
  return {path: _plain(value) for name, node in tree.items()
          for path, value in experiment.leaves(node, f'{name}.').items()}


def differences(recorded, wanted):
  """'field recorded -> wanted' for every wanted field whose value differs from the record's. A field the record
  lacks (added to the code after the run) counts as recorded at its default: a run from before a field existed
  ran as its default runs."""
  out = []
  for path, value in wanted.items():
    before = recorded[path] if path in recorded else _defaults().get(path, value)
    if before != value:
      out.append(f'{path} {before} -> {value}')
  return out


def check(run_dir, x, what='train'):
  """StaleRun if the run recorded in `run_dir` differs from the built Experiment `x`: in run_fields when it is
  to be trained (what='train'), in training_fields when its checkpoint is to be evaluated (what='grid')."""
  recorded = recorded_fields(run_dir)
  if recorded is None:
    return
  differing = differences(recorded, run_fields(x) if what == 'train' else training_fields(x))
  if differing:
    action = ('rerun with --overwrite to train it again from scratch, or choose another --workdir' if what == 'train'
              else 'evaluate it with the config it was trained with')
    raise StaleRun(f'{run_dir} was trained with other settings ({"; ".join(differing)}): {action}')


def has_run(run_dir):
  """Whether anything of a run is in `run_dir`: a record, a result or a checkpoint."""
  checkpoints = os.path.join(run_dir, 'checkpoints')
  return (any(os.path.exists(os.path.join(run_dir, name)) for name in (RECORD, 'result.json'))
          or (os.path.isdir(checkpoints) and bool(os.listdir(checkpoints))))


def write(run_dir, x):
  """Records the run's fields in `run_dir` (once: a resumed run keeps its record; a legacy run is adopted)."""
  path = os.path.join(run_dir, RECORD)
  if os.path.exists(path):
    return
  if has_run(run_dir):
    logging.warning('%s has no recorded config (a run from before records): adopting this one', run_dir)
  os.makedirs(run_dir, exist_ok=True)
  write_atomic(path, json.dumps({'fields': run_fields(x)}, indent=1, sort_keys=True))


# --- results and grid cells ------------------------------------------------------------------------------------


def read_jsonl(path):
  """The rows (dicts) of a JSON-lines file; [] if it does not exist."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows):
  """Rows (dicts) as JSON lines, keys sorted, atomically."""
  write_atomic(path, ''.join(json.dumps(r, sort_keys=True, default=str) + '\n' for r in rows))


@dataclasses.dataclass(frozen=True)
class RunResult(collections.abc.Mapping):
  """A run's result, typed: what made it (`fields`), how it ended, its last metrics and how it ran. As a Mapping
  it is the flat record result.json holds ('model.depth', 'status', 'eval/error', ...; `name` besides), which
  tables, plots and the HParams dashboard read."""
  name: str  # the run's directory name under runs/
  status: str  # 'done', 'nan' (a non-finite loss stopped it) or 'time_limit'
  steps: int  # steps completed
  fields: dict  # every config field the run read: 'model.depth', 'attention.kind', ...
  metrics: dict  # the last logged and evaluated values: 'train/loss', 'eval/error', 'eval/error_k1', ...
  info: dict  # how it ran: `INFO`

  INFO = ('compile_seconds', 'train_seconds', 'resumed_from', 'device', 'num_devices', 'microbatches',
          'peak_rss_mib', 'step_memory_mib', 'device_peak_mib')

  @classmethod
  def from_flat(cls, name, flat):
    """From result.json's flat record: metrics are named with a slash, `INFO` says how it ran, the rest are the
    config fields."""
    flat = {k: v for k, v in flat.items() if k != 'name'}
    status, steps = flat.pop('status'), flat.pop('steps')
    metrics = {k: v for k, v in flat.items() if '/' in k}
    info = {k: v for k, v in flat.items() if k in cls.INFO}
    fields = {k: v for k, v in flat.items() if k not in metrics and k not in info}
    return cls(name, status, steps, fields, metrics, info)

  def flat(self):
    """result.json's record (without the name, which the directory gives)."""
    return {**self.fields, 'status': self.status, 'steps': self.steps, **self.info, **self.metrics}

  def __getitem__(self, key):
    return self.name if key == 'name' else self.flat()[key]

  def __iter__(self):
    return iter(['name', *self.flat()])

  def __len__(self):
    return 1 + len(self.flat())


def result_path(run_dir):
  return os.path.join(run_dir, 'result.json')


def write_result(run_dir, result):
  """A run's result.json (a RunResult's flat record), atomically."""
  write_atomic(result_path(run_dir), json.dumps(result.flat(), indent=1, sort_keys=True, default=str))


def read_result(run_dir):
  """The RunResult of the run in run_dir, None if it has not finished."""
  path = result_path(run_dir)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return RunResult.from_flat(os.path.basename(os.path.normpath(run_dir)), json.load(f))


@dataclasses.dataclass(frozen=True)
class GridCell:
  """One (run, checkpoint step, tables per layer, hashes) cell of a grid: anna swapped into a trained model."""
  run: str  # the run's name under runs/
  step: int  # the checkpoint evaluated
  tables: tuple  # tables per layer
  hashes: int  # z
  draws: int
  mean: float  # error, mean over the draws
  std: float
  errors: tuple  # per draw
  no_collision_fraction: float  # queries with no collision, mean over layers and draws
  mean_collisions: float  # (key, table) collisions per query
  surrogate_error: float  # the trained model's own error on the same test set
  attention: str  # the kind it was trained with
  beta: float  # its unit_softmax.beta
  settings: dict  # every field of the run (model.depth, task.*, ...) and the draws' seed: what the cell depends on
  errors_by_k: dict = None  # k-hop: {k: error}, mean over the draws
  max_k_solved: int = None  # k-hop: by that mean

  @property
  def depth(self):
    return len(self.tables)

  def field(self, path, default=None):
    """A field of the run that made the cell ('task.match2.n', ...)."""
    return (self.settings or {}).get(path, default)

  def same_cell(self, other):
    return (self.run, self.step, self.tables, self.hashes) == (other.run, other.step, other.tables, other.hashes)

  @classmethod
  def from_row(cls, row):
    row = dict(row)
    row['tables'], row['errors'] = tuple(row['tables']), tuple(row['errors'])
    if row.get('errors_by_k') is not None:
      row['errors_by_k'] = {int(k): v for k, v in row['errors_by_k'].items()}
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in row.items() if name in names})

  def to_row(self):
    row = dataclasses.asdict(self)
    row.update(tables=list(self.tables), errors=list(self.errors))
    if self.errors_by_k is None:
      del row['errors_by_k'], row['max_k_solved']
    return json.loads(json.dumps(row, default=str))  # as grid.jsonl holds it


def read_cells(path):
  """The GridCells of a grid.jsonl."""
  return [GridCell.from_row(row) for row in read_jsonl(path)]


def write_cells(path, cells):
  write_jsonl(path, [cell.to_row() for cell in cells])


def latest_cells(cells):
  """Cells of each run's latest evaluated checkpoint (a run trained further is evaluated again)."""
  latest = {}
  for c in cells:
    latest[c.run] = max(latest.get(c.run, 0), c.step)
  return [c for c in cells if c.step == latest[c.run]]


def history_path(run_dir):
  return os.path.join(run_dir, 'evaluations.jsonl')


def read_history(run_dir):
  """A run's evaluations in order: rows of step, train_seconds (training time so far, evaluation, checkpoints and
  compilation left out, summed over resumes) and the evaluation's entries ('eval/error', 'eval/error_k1', ...)."""
  return read_jsonl(history_path(run_dir))


class EvaluationHistory:
  """Appends each evaluation of a run to its evaluations.jsonl (time to accuracy is read from it). A run resumed
  from step `start` keeps the rows up to that step and counts its training time on from theirs."""

  def __init__(self, run_dir, start):
    self.run_dir = run_dir
    self.rows = [row for row in read_history(run_dir) if row['step'] <= start]
    self.offset = self.rows[-1]['train_seconds'] if self.rows else 0.0

  def add(self, step, train_seconds, evaluation):
    entries = {k: v for k, v in evaluation.items() if k.startswith('eval/')}
    self.rows.append({'step': step, 'train_seconds': round(self.offset + train_seconds, 3), **entries})
    if jax.process_index() == 0:
      write_jsonl(history_path(self.run_dir), self.rows)
