"""The config tree and its ONE factory: `build(config)` turns a nested ml_collections config into the library's
dataclasses (each `Cls(**section)`), validated once, here.

Sections (experiments/configs/default.py sets every field):
  seed                      model init, hash functions, the data streams
  task.name                 a key of anna_jax.tasks.TASKS ('khop', 'match2'); task.<name>: that task's fields
  model                     anna_jax.model.TransformerConfig (vocab, classes and length come from the task)
  attention.kind            a registered kind (anna_jax.registry); attention.<kind>: that kind's settings dataclass
                            (every registered kind has one: full, full_blockwise, unit_softmax, anna, ...)
  attention.per_layer       () or one dict per layer of overrides of the attention section, dotted below it, e.g.
                            ({'kind': 'full'}, {'kind': 'anna_softmax', 'anna_softmax.num_tables': 8})
  train, optim, evaluation  TrainConfig, OptimConfig, EvalConfig below
  grid                      GridConfig below: `anna` swapped into a trained model over tables x hashes x draws
  sweep                     the same tree again, every leaf a tuple of values to sweep (empty: not swept);
                            `with_sweep_axes` makes it, so any field can be swept: --config.sweep.model.depth='(1,2)'
"""

import copy
import dataclasses
import itertools
import os
from typing import Any

import jax
import ml_collections

from anna_jax import registry
from anna_jax.attention import AttentionConfig
from anna_jax.model import TransformerConfig
from anna_jax.tasks import TASKS

# The model section holds every TransformerConfig field but these, which come from the task and the attention section.
FROM_TASK_AND_ATTENTION = ('vocab_size', 'num_classes', 'max_len', 'attention', 'layer_attention')
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(TransformerConfig) if f.name not in FROM_TASK_AND_ATTENTION)


def check_at_least(section, config, minimum, names):
  """ValueError naming the first of `names` whose value on `config` is below `minimum`."""
  for name in names:
    if getattr(config, name) < minimum:
      raise ValueError(f'{section}.{name} must be >= {minimum}, got {getattr(config, name)}')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000
  batch_size: int = 32  # global batch, split over the data-parallel devices
  train_size: int = 0  # match2: > 0 trains on a fixed label-balanced set of this many sequences; 0: fresh ones
  num_devices: int = 1  # devices to train on; 0 takes every device
  # Devices each sequence is split over (mesh axis 'seq'; anna and anna_softmax run sequence-parallel, see
  # anna_jax.sequence_parallel); the batch is split over the other num_devices / sequence_devices (axis 'data').
  sequence_devices: int = 1
  # The batch's gradient is summed over this many microbatches (a lax.scan; the same numbers up to float summation
  # order). 0: automatic, 1 on accelerators and on CPU as many as keep each one's activations in cache (faster
  # there: experiments.train.microbatch_count).
  microbatches: int = 0
  log_every: int = 100  # steps between console / TensorBoard logs
  checkpoint_every: int = 200  # steps between Orbax checkpoints (and at the end)
  keep_checkpoints: int = 2  # checkpoints kept on disk
  # > 0: stop once training has run this many seconds, with a checkpoint and an evaluation (status
  # 'time_limit', the result's steps those completed), so the same command resumes: a fixed slice of a machine.
  time_limit_s: float = 0.0
  # A run directory whose latest checkpoint's trained parameters start this run (matched by name, shapes checked;
  # what the model has beyond them, such as anna's hash functions, is drawn as usual), with a fresh optimizer:
  # fine-tuning, e.g. a unit_softmax surrogate with `anna` in every layer (its v and everything outside the
  # attention learn; q and k get no gradient from Algorithm 1). '' starts from scratch.
  init_from: str = ''

  def __post_init__(self):
    check_at_least('train', self, 1, ('steps', 'batch_size', 'log_every', 'checkpoint_every', 'keep_checkpoints',
                                      'sequence_devices'))
    check_at_least('train', self, 0, ('train_size', 'num_devices', 'time_limit_s', 'microbatches'))


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW (weight_decay = 0 is Adam) after a linear warm-up."""
  learning_rate: float = 1e-3
  warmup_steps: int = 50
  schedule: str = 'linear_decay'  # after warm-up: 'linear_decay' (to 0 at train.steps) or 'constant'
  weight_decay: float = 0.01
  grad_clip: float = 1.0  # global-norm clip; 0 disables it
  # model.value_gain's log-gains learn at this multiple of the rate: Adam moves a parameter about one rate per step,
  # and a gain that makes the latest of several equal matches win must span tens over the sequence.
  value_gain_lr_scale: float = 1.0

  def __post_init__(self):
    if not self.learning_rate > 0 or self.warmup_steps < 0:
      raise ValueError(f'need optim.learning_rate > 0 and optim.warmup_steps >= 0, got {self.learning_rate}, '
                       f'{self.warmup_steps}')
    if self.schedule not in ('linear_decay', 'constant'):
      raise ValueError(f"optim.schedule must be 'linear_decay' or 'constant', got {self.schedule!r}")
    if not self.value_gain_lr_scale > 0:
      raise ValueError(f'need optim.value_gain_lr_scale > 0, got {self.value_gain_lr_scale}')


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  attention: str = ''  # '' evaluates with the training attention; a kind swaps it in for evaluation only
  every: int = 500  # steps between evaluations (and at the end)
  batches: int = 4  # batches of fresh sequences per evaluation (per k for k-hop)
  test_size: int = 0  # > 0: a fixed set of this many sequences (match2: balanced); 0: fresh batches
  k: int = -1  # k-hop: evaluate this k only; -1: every k in 0..max_k
  error_over: str = 'answers'  # k-hop: count errors on 'answers' (targets other than "none") or 'all' tokens

  def __post_init__(self):
    if self.attention and self.attention not in registry.names():
      raise ValueError(f'evaluation.attention must be empty or one of {registry.names()}, got {self.attention!r}')
    check_at_least('evaluation', self, 1, ('every', 'batches'))
    check_at_least('evaluation', self, 0, ('test_size',))
    if self.error_over not in ('answers', 'all'):
      raise ValueError(f"evaluation.error_over must be 'answers' or 'all', got {self.error_over!r}")


@dataclasses.dataclass(frozen=True)
class GridConfig:
  tables_per_layer: tuple = ()  # one tuple of table counts per layer, e.g. ((1, 2, 4),) for one layer
  tables_every_layer: tuple = ()  # or: table counts given to every layer at once (sweeps over depth)
  hashes: tuple = ()  # hashes per table (z)
  draws: int = 10  # fresh hash functions per cell: mean and std over them
  seed: int = 0  # draw d of every cell uses hash seed (seed, d)

  def __post_init__(self):
    if self.tables_per_layer and self.tables_every_layer:
      raise ValueError('set grid.tables_per_layer or grid.tables_every_layer, not both')
    if min((min(t) for t in self.tables_per_layer + (self.tables_every_layer,) if t), default=1) < 1:
      raise ValueError('grid tables must be >= 1')
    if (self.hashes and min(self.hashes) < 0) or self.draws < 1:
      raise ValueError('grid hashes must be >= 0 and grid.draws >= 1')


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One run, built: the library's dataclasses and the flat record of every field that made it."""
  seed: int
  task: Any  # anna_jax.tasks.KHop or Match2
  model: TransformerConfig  # what trains
  eval_model: TransformerConfig  # what evaluates (evaluation.attention swapped into every layer)
  train: TrainConfig
  optim: OptimConfig
  evaluation: EvalConfig
  grid: GridConfig
  fields: dict  # 'section.field' -> value for every field this run reads (unused kinds' sections left out)


def _as_section(value):
  """A field's default as a config value: a dataclass (e.g. a kind's plans.Tuning) becomes a section of its own."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return ml_collections.ConfigDict({f.name: _as_section(getattr(value, f.name)) for f in dataclasses.fields(value)})
  return value


def section(cls, **overrides):
  """A config section with every field of dataclass `cls` at its default (or the override); a field whose default
  is a dataclass is a section too, so its fields are set as any other (attention.anna.tuning.token_budget)."""
  values = {f.name: _as_section(f.default) for f in dataclasses.fields(cls)}
  unknown = set(overrides) - set(values)
  if unknown:
    raise KeyError(f'{cls.__name__} has no field {sorted(unknown)}')
  return ml_collections.ConfigDict({**values, **overrides})


def from_section(cls, section_):
  """cls(**section_), the fields that `section` made sections of built back into their dataclasses."""
  values = dict(section_)
  for f in dataclasses.fields(cls):
    default = f.default
    if dataclasses.is_dataclass(default) and isinstance(values.get(f.name), (dict, ml_collections.ConfigDict)):
      values[f.name] = from_section(type(default), values[f.name])
  return cls(**values)


def model_section(**overrides):
  """The model section: every TransformerConfig field the config sets (MODEL_FIELDS), at its default or the
  override."""
  unknown = sorted(set(overrides) - set(MODEL_FIELDS))
  if unknown:
    raise KeyError(f'TransformerConfig has no config field {unknown}')
  defaults = {f.name: f.default for f in dataclasses.fields(TransformerConfig) if f.name in MODEL_FIELDS}
  return ml_collections.ConfigDict({**defaults, **overrides})


def attention_sections(**overrides):
  """The attention section: kind 'full', no per-layer overrides and one section per registered kind at its
  defaults; overrides: {kind: {field: value}}."""
  c = ml_collections.ConfigDict({'kind': 'full', 'per_layer': ()})
  for kind in registry.kinds():
    c[kind.name] = section(kind.config, **overrides.get(kind.name, {}))
  return c


def with_sweep_axes(c):
  """Adds c.sweep: the config's tree with every leaf an empty tuple, so any field can be swept."""
  def axes(node):
    return ml_collections.ConfigDict({key: axes(value) if isinstance(value, ml_collections.ConfigDict) else ()
                                      for key, value in node.items()})

  with c.unlocked():
    c.sweep = axes(ml_collections.ConfigDict({k: v for k, v in c.items() if k not in ('sweep', 'grid')}))
  return c


def leaves(node, prefix=''):
  """{'a.b.c': value} of every leaf of a ConfigDict (or dict)."""
  out = {}
  for key, value in node.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(leaves(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def set_field(c, path, value):
  """c.<path> = value for a dotted path that exists (KeyError names it otherwise)."""
  *parents, name = path.split('.')
  node = c
  for parent in parents:
    if parent not in node:
      raise KeyError(f"'{path}'")
    node = node[parent]
  if name not in node:
    raise KeyError(f"'{path}'")
  node[name] = value


def swept_axes(c):
  """[(dotted field, values)] of the non-empty sweep tuples, in the config's order."""
  return [(path, tuple(values)) for path, values in leaves(c.sweep).items() if tuple(values)]


def points(c):
  """Every point of the sweep: [(config without `sweep`, {swept field: value})], in a fixed order."""
  axes = swept_axes(c)
  result = []
  for values in itertools.product(*(v for _, v in axes)):
    point = copy.deepcopy(c)
    with point.unlocked():
      del point['sweep']
    for (path, _), value in zip(axes, values):
      set_field(point, path, value)
    result.append((point, dict(zip((path for path, _ in axes), values))))
  return result


def kinds_used(c):
  """Attention kinds a run reads the sections of: training, per layer, evaluation, and `anna` for a grid."""
  kinds = {c.attention.kind, *(layer.get('kind', c.attention.kind) for layer in c.attention.per_layer)}
  if c.evaluation.attention:
    kinds.add(c.evaluation.attention)
  if (c.grid.tables_per_layer or c.grid.tables_every_layer) and c.grid.hashes:
    kinds.add('anna')
  return kinds


def is_used(c, path):
  """Whether the run reads field `path` (a section of another task or of an unused attention kind is not)."""
  parts = path.split('.')
  if parts[0] == 'task' and len(parts) > 2:
    return parts[1] == c.task.name
  if parts[0] == 'attention' and len(parts) > 2:
    return parts[1] in kinds_used(c)
  return True


def attention_config(section_, **kind_override):
  """AttentionConfig(kind, <kind>=Cls(**section.<kind>), ...) from an attention section (a ConfigDict)."""
  missing = [kind.name for kind in registry.kinds() if kind.name not in section_]
  if missing:
    raise KeyError(f"'attention.{missing[0]}': the config has no section for the registered kind {missing[0]!r}")
  sections = {kind.name: from_section(kind.config, section_[kind.name]) for kind in registry.kinds()}
  return AttentionConfig(kind=kind_override.get('kind', section_.kind), **sections)


def layer_attention(c, kind=None):
  """Per-layer AttentionConfigs from attention.per_layer (empty tuple: every layer uses attention)."""
  layers = []
  for overrides in c.attention.per_layer:
    layer = copy.deepcopy(c.attention)
    for path, value in dict(overrides).items():
      try:
        set_field(layer, path, value)
      except KeyError:
        raise KeyError(f"'attention.per_layer' entry names no attention field {path!r}") from None
    layers.append(attention_config(layer, kind=kind or layer.kind))
  return tuple(layers)


def model_config(c, task, kind=None, layers=None):
  """TransformerConfig of the run; `kind` swaps that attention kind into every layer."""
  unknown = sorted(set(c.model) - set(MODEL_FIELDS))
  if unknown:  # a key added in a config file that no module reads
    raise ValueError(f'unknown model field {unknown[0]!r}; the model section holds {", ".join(MODEL_FIELDS)}')
  attention = attention_config(c.attention, kind=kind or c.attention.kind)
  return TransformerConfig(vocab_size=task.vocab_size, num_classes=task.num_classes, max_len=task.length,
                           attention=attention, layer_attention=layer_attention(c, kind) if layers is None else layers,
                           **{name: c.model[name] for name in MODEL_FIELDS})


def build(c):
  """The Experiment of a run config (no `sweep`, or one whose sweep is ignored); ValueError / KeyError / TypeError
  with a one-line message for anything that cannot run."""
  if c.task.name not in TASKS:
    raise ValueError(f'unknown task {c.task.name!r}; choose one of {sorted(TASKS)}')
  task = TASKS[c.task.name](**c.task[c.task.name])
  task.validate()
  train = TrainConfig(**c.train)
  optim = OptimConfig(**c.optim)
  evaluation = EvalConfig(**c.evaluation)
  grid = GridConfig(tables_per_layer=tuple(tuple(t) for t in c.grid.tables_per_layer),
                    tables_every_layer=tuple(c.grid.tables_every_layer), hashes=tuple(c.grid.hashes),
                    draws=c.grid.draws, seed=c.grid.seed)
  model = model_config(c, task)
  eval_model = model_config(c, task, kind=evaluation.attention) if evaluation.attention else model
  if optim.warmup_steps > train.steps:
    raise ValueError(f'optim.warmup_steps {optim.warmup_steps} exceeds train.steps {train.steps}')
  if train.init_from and not os.path.isdir(os.path.join(train.init_from, 'checkpoints')):
    raise ValueError(f'train.init_from: {train.init_from} is no run directory (it has no checkpoints/)')
  if train.train_size and not task.fixed_training_set:
    raise ValueError(f'a fixed training set (train.train_size > 0) is not defined for {task.name}')
  task.validate_evaluation(evaluation.k)
  devices = train.num_devices or jax.device_count()
  if devices > jax.device_count() or devices % train.sequence_devices:
    raise ValueError(f'{devices} devices ({jax.device_count()} available) must split into groups of '
                     f'train.sequence_devices={train.sequence_devices}')
  data_devices = devices // train.sequence_devices
  if train.batch_size % data_devices:
    raise ValueError(f'batch_size {train.batch_size} must split evenly over {data_devices} data-parallel devices')
  if train.microbatches and train.batch_size // data_devices % train.microbatches:
    raise ValueError(f'train.microbatches {train.microbatches} must divide the {train.batch_size // data_devices} '
                     'sequences each data-parallel device gets')
  length = sequence_length(task)
  if length % train.sequence_devices:
    raise ValueError(f'sequences of {length} tokens must split evenly over train.sequence_devices='
                     f'{train.sequence_devices}')
  if grid.tables_per_layer and len(grid.tables_per_layer) != model.depth:
    raise ValueError(f'grid.tables_per_layer has {len(grid.tables_per_layer)} entries for depth {model.depth}')
  fields = {path: value for path, value in leaves(c).items()
            if not path.startswith(('sweep.', 'grid.')) and is_used(c, path)}
  return Experiment(c.seed, task, model, eval_model, train, optim, evaluation, grid, fields)


def sequence_length(task):
  """Tokens per sequence of the task's batches."""
  return jax.eval_shape(lambda key: task.sample(key, 1)['tokens'], jax.random.key(0)).shape[1]


def grid_model(experiment, tables, num_hashes):
  """The run's model with `anna` in every layer, tables[i] tables in layer i, num_hashes hashes each."""
  layers = []
  for i, t in enumerate(tables):
    layer = experiment.model.attention_of(i)
    layers.append(layer.replace(kind='anna', anna=dataclasses.replace(layer.anna, num_tables=t,
                                                                      num_hashes=num_hashes)))
  return dataclasses.replace(experiment.model, layer_attention=tuple(layers))
