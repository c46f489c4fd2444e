"""One run: train_and_evaluate(config, workdir) trains one config, checkpoints with Orbax, returns its result.

The data stream is a pure function of (seed, step): batches are sampled inside the jitted step (fresh
sequences, or rows of a fixed training set when `train.train_size` > 0), so a run resumed from a checkpoint sees
exactly the batches it would have seen, and gives the same numbers. Evaluation uses fresh sequences, or a fixed
test set of `evaluation.test_size` sequences drawn once from its own seed.
"""

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from anna_jax.model import Transformer
from anna_jax.sequence_parallel import SEQUENCE_AXIS
from experiments import experiment, records
from experiments.summaries import SummaryWriter

METRICS = ('eval/error', 'eval/max_k_solved', 'train/loss')
SOLVED_ERROR = 0.05  # "solved" k: error below 5%, as in the paper
STAT_NAMES = ('dropped_fraction', 'no_collision_fraction', 'mean_collisions')  # attention stats we report


def make_schedule(x):
  """Linear warm-up, then a linear decay to 0 at train.steps or a constant rate (a run cut short and resumed with
  more steps then follows the same trajectory)."""
  optim, steps = x.optim, x.train.steps
  after = (optax.linear_schedule(optim.learning_rate, 0.0, steps - optim.warmup_steps)
           if optim.schedule == 'linear_decay' else optax.constant_schedule(optim.learning_rate))
  return optax.join_schedules([optax.linear_schedule(0.0, optim.learning_rate, optim.warmup_steps), after],
                              [optim.warmup_steps])


def loss_and_metrics(model, batch, max_k=None):
  """max_k: k-hop evaluations also count errors per k (wrong_by_k, counted_by_k: (max_k + 1,))."""
  logits, stats = model(batch['tokens'])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
  loss_mask, eval_mask = batch['loss_mask'], batch['eval_mask']
  loss = jnp.sum(ce * loss_mask) / jnp.maximum(jnp.sum(loss_mask), 1)
  wrong = (jnp.argmax(logits, -1) != batch['targets']) & eval_mask
  metrics = {'loss': loss, 'wrong': jnp.sum(wrong), 'counted': jnp.sum(eval_mask), **stats}
  if max_k is not None:  # summed over the batch inside the step, so sharded batches give small replicated sums
    metrics['wrong_by_k'] = jnp.zeros(max_k + 1, jnp.int32).at[batch['k']].add(jnp.sum(wrong, -1))
    metrics['counted_by_k'] = jnp.zeros(max_k + 1, jnp.int32).at[batch['k']].add(jnp.sum(eval_mask, -1))
  return loss, metrics


def errors_by_k(metrics):
  """{k: error} for every k with counted tokens, from loss_and_metrics(..., max_k) on a mixed-k batch."""
  wrong, counted = np.asarray(metrics['wrong_by_k']), np.asarray(metrics['counted_by_k'])
  return {k: float(wrong[k] / counted[k]) for k in range(len(counted)) if counted[k]}


def max_k_solved(per_k):
  """Largest k with every k' <= k below SOLVED_ERROR; -1 if none."""
  solved = -1
  while solved + 1 in per_k and per_k[solved + 1] < SOLVED_ERROR:
    solved += 1
  return solved


def khop_results(per_k):
  """The evaluation entries of k-hop errors per k."""
  return {'eval/max_k_solved': max_k_solved(per_k), **{f'eval/error_k{k}': e for k, e in per_k.items()}}


def make_mesh(x):
  """A (data, seq) mesh: batches split over 'data', each sequence over SEQUENCE_AXIS (train.sequence_devices)."""
  devices = np.array(jax.devices()[: x.train.num_devices or jax.device_count()])
  return jax.sharding.Mesh(devices.reshape(-1, x.train.sequence_devices), ('data', SEQUENCE_AXIS))


def batch_shardings(mesh, batch):
  """Per array of a batch: the batch axis over 'data', the token axis (if any) over SEQUENCE_AXIS."""
  return jax.tree.map(lambda a: NamedSharding(mesh, P('data', SEQUENCE_AXIS) if a.ndim > 1 else P('data')), batch)


class Trainer:
  """Holds the jitted train and eval steps of one built Experiment, and its fixed data sets (if any)."""

  def __init__(self, x):
    self.x = x
    self.task = x.task
    self.max_k = x.task.max_k if x.task.name == 'khop' else None  # k-hop evaluations count errors per k
    self.mesh = make_mesh(x)
    self.replicated = NamedSharding(self.mesh, P())
    self.schedule = make_schedule(x)
    if x.model.attention.kind == 'anna' and not x.model.attention.anna.straight_through:
      logging.warning('attention=anna (Algorithm 1) passes no gradient to queries and keys, so they cannot '
                      'learn; the paper trains unit_softmax and evaluates with anna (evaluation.attention / the grid), '
                      'or set attention.anna.straight_through')
    model = Transformer(x.model, rngs=nnx.Rngs(x.seed))
    if x.train.init_from:
      warm_start(model, x.train.init_from)
    tx = optax.adamw(self.schedule, weight_decay=x.optim.weight_decay)
    if x.optim.grad_clip:
      tx = optax.chain(optax.clip_by_global_norm(x.optim.grad_clip), tx)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    self.graphdef, state = nnx.split((model, optimizer))
    self.initial_state = jax.device_put(state, self.replicated)
    # Evaluation may swap in another attention (the paper's recipe); it reuses the trained Params.
    self.swapped = x.eval_model != x.model
    eval_model = Transformer(x.eval_model, rngs=nnx.Rngs(x.seed))
    self.eval_graphdef, _, self.eval_rest = nnx.split(eval_model, nnx.Param, ...)
    self.data_key = jax.random.key(x.seed + 1)  # training stream
    self.eval_key = jax.random.key(x.seed + 2)  # fresh sequences, never shared with training
    # Fixed sets (the paper's Match2: 10,000 training and 256 test sequences), drawn once from their own seeds.
    self.train_set = self.task.balanced_set(x.seed + 3, x.train.train_size) if x.train.train_size else None
    self.test_set = self.fixed_test_set() if x.evaluation.test_size else None
    self.train_step = jax.jit(self._train_step, donate_argnums=0)
    self.eval_step = jax.jit(self._eval_step)
    self.eval_fixed = jax.jit(self._eval_fixed)

  def fixed_test_set(self):
    x = self.x
    key = jax.random.key(x.seed + 4)
    if self.task.name == 'match2':
      return self.task.balanced_set(x.seed + 4, x.evaluation.test_size)
    k = None if x.evaluation.k < 0 else x.evaluation.k
    return self.task.sample(key, x.evaluation.test_size, k=k, every_token=x.evaluation.error_over == 'all')

  def _sample(self, key, k=None):
    batch_size = self.x.train.batch_size
    if k is None:
      batch = self.task.sample(key, batch_size)
    else:
      batch = self.task.sample(key, batch_size, k=k, every_token=self.x.evaluation.error_over == 'all')
    return self.shard(batch)

  def shard(self, batch):
    return jax.lax.with_sharding_constraint(batch, batch_shardings(self.mesh, batch))

  def _train_batch(self, step, train_set):
    key = jax.random.fold_in(self.data_key, step)
    if train_set is None:
      return self._sample(key)
    rows = jax.random.randint(key, (self.x.train.batch_size,), 0, self.x.train.train_size)  # with replacement
    return self.shard(jax.tree.map(lambda x: x[rows], train_set))

  def _train_step(self, state, step, train_set):
    model, optimizer = nnx.merge(self.graphdef, state)
    batch = self._train_batch(step, train_set)
    (_, metrics), grads = nnx.value_and_grad(loss_and_metrics, has_aux=True)(model, batch)
    optimizer.update(model, grads)
    metrics['lr'] = self.schedule(step)
    # Parameters stay replicated (XLA would otherwise split a position table along the sequence axis).
    return jax.lax.with_sharding_constraint(nnx.state((model, optimizer)), self.replicated), metrics

  def eval_model(self, state):
    model, _ = nnx.merge(self.graphdef, state)
    params = nnx.state(model, nnx.Param)
    rest = self.eval_rest if self.swapped else nnx.state(model, nnx.Not(nnx.Param))
    return nnx.merge(self.eval_graphdef, params, rest)

  def _eval_step(self, state, index, k):
    key = jax.random.fold_in(jax.random.fold_in(self.eval_key, k), index)
    _, metrics = loss_and_metrics(self.eval_model(state), self._sample(key, k if self.task.name == 'khop' else None))
    return metrics

  def _eval_fixed(self, state, test_set):
    _, metrics = loss_and_metrics(self.eval_model(state), test_set, self.max_k)
    return metrics

  def evaluate(self, state):
    """Per-token error on the fixed test set, or on fresh sequences (k-hop: per k)."""
    if self.test_set is not None:
      metrics = jax.device_get(self.eval_fixed(state, self.test_set))
      result = {'eval/error': int(metrics['wrong']) / max(int(metrics['counted']), 1)}
      if self.max_k is not None:
        result.update(khop_results(errors_by_k(metrics)))
      result.update({f'eval/{name}': float(metrics[name]) for name in STAT_NAMES if name in metrics})
      return result
    ks = range(self.task.max_k + 1) if self.task.name == 'khop' else [0]
    if self.task.name == 'khop' and self.x.evaluation.k >= 0:
      ks = [self.x.evaluation.k]
    per_k, wrong_total, counted_total, stats = {}, 0, 0, {}
    for k in ks:
      metrics = [self.eval_step(state, i, k) for i in range(self.x.evaluation.batches)]
      metrics = jax.device_get(metrics)
      wrong = sum(int(m['wrong']) for m in metrics)
      counted = sum(int(m['counted']) for m in metrics)
      per_k[k] = wrong / max(counted, 1)
      wrong_total, counted_total = wrong_total + wrong, counted_total + counted
      for name in STAT_NAMES:
        stats.setdefault(name, []).extend(float(m[name]) for m in metrics if name in m)
    result = {'eval/error': wrong_total / max(counted_total, 1)}
    if self.task.name == 'khop':
      result.update(khop_results(per_k))
    result.update({f'eval/{name}': float(np.mean(values)) for name, values in stats.items() if values})
    return result


def warm_start(model, run_dir):
  """Sets model's Params to those of the latest checkpoint in run_dir (a run of the same architecture); a
  ValueError names the first parameter the checkpoint lacks or holds in another shape."""
  directory = os.path.abspath(os.path.join(run_dir, 'checkpoints'))
  manager = ocp.CheckpointManager(directory) if os.path.isdir(directory) else None
  step = manager.latest_step() if manager else None
  if step is None:
    raise ValueError(f'train.init_from: {run_dir} has no checkpoint')
  saved = manager.restore(step, args=ocp.args.StandardRestore())['0']  # (model, optimizer): the model's state
  manager.close()

  def fill(template, stored, path):
    if isinstance(template, dict):
      if not isinstance(stored, dict):
        raise ValueError(f'train.init_from: {run_dir} has no parameter {path}')
      return {key: fill(value, stored.get(str(key)), f'{path}/{key}') for key, value in template.items()}
    if stored is None or tuple(stored.shape) != tuple(template.shape):
      found = 'none' if stored is None else tuple(stored.shape)
      raise ValueError(f'train.init_from: parameter {path} of {run_dir} has shape {found}, the model needs '
                       f'{tuple(template.shape)}')
    return jnp.asarray(stored, template.dtype)

  params = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(params, fill(nnx.to_pure_dict(params), saved, ''))
  nnx.update(model, params)
  logging.info('initialised from %s (step %d)', run_dir, step)


def checkpoint_manager(x, workdir):
  options = ocp.CheckpointManagerOptions(max_to_keep=x.train.keep_checkpoints, create=True,
                                         enable_async_checkpointing=False)  # the next step donates the state
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')), options=options)


def restore_latest(manager, state):
  """(state, completed steps) from the latest checkpoint, or the given state and 0."""
  step = manager.latest_step()
  if step is None:
    return state, 0
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
  restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  nnx.replace_by_pure_dict(state, restored)
  return state, step


def train_and_evaluate(config, workdir, tb_dir=None, label=''):
  """Trains one run config (a config without `sweep`, see experiments.experiment) in `workdir`, resuming from
  its latest checkpoint, and returns the result dict (see `run`)."""
  return run(experiment.build(config), workdir, tb_dir, label)


def run(x, workdir, tb_dir=None, label=''):
  """Trains the built Experiment `x` in `workdir` (resuming from its latest checkpoint); returns the result dict:
  every config field the run read ('model.depth', ...), the last metrics, and status: 'done', 'nan' when a
  non-finite loss stopped the run (the last good checkpoint is kept), or 'time_limit' (train.time_limit_s; steps
  is then the steps completed, so a sweep resumes it). `label` prefixes console progress lines.
  """
  records.check(workdir, x)  # records.StaleRun if workdir holds a run trained with other settings
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    records.write(workdir, x)
  trainer = Trainer(x)
  with jax.set_mesh(trainer.mesh):  # attention sees the mesh's sequence axis while it is traced
    return _run(trainer, workdir, tb_dir, label)


def _run(trainer, workdir, tb_dir, label):
  x = trainer.x
  steps = x.train.steps
  writer = SummaryWriter(tb_dir or os.path.join(workdir, 'tb'))
  writer.hparams_session(x.fields)
  manager = checkpoint_manager(x, workdir)
  state, start = restore_latest(manager, trainer.initial_state)
  logging.info('%s %s', label, os.path.basename(os.path.normpath(workdir)))
  if start:
    logging.info('%s resuming from step %d', label, start)

  t0 = time.perf_counter()
  compiled = trainer.train_step.lower(state, jnp.int32(start), trainer.train_set).compile()
  compile_seconds = time.perf_counter() - t0
  logging.info('%s compiled train step in %.1fs', label, compile_seconds)

  status, last = 'done', {}
  window_start, window_steps = time.perf_counter(), 0
  pending = None  # (step, metrics) of the step dispatched last: read after dispatching the next

  def finish_step(step, metrics):
    nonlocal status, last, window_start, window_steps
    metrics = jax.device_get(metrics)
    if not math.isfinite(float(metrics['loss'])):
      status = 'nan'
      logging.error('%s non-finite loss at step %d: stopping; the last good checkpoint is kept', label, step)
      return False
    window_steps += 1
    completed = step + 1
    if completed % x.train.log_every == 0 or completed == steps:
      elapsed = time.perf_counter() - window_start
      steps_per_sec = window_steps / max(elapsed, 1e-9)
      last = {'train/loss': float(metrics['loss']), 'train/error': float(metrics['wrong']) / max(int(metrics['counted']), 1),
              'train/lr': float(metrics['lr']), 'train/steps_per_sec': steps_per_sec}
      last.update({f'train/{name}': float(metrics[name]) for name in STAT_NAMES if name in metrics})
      writer.scalars(completed, last)
      eta = (steps - completed) / max(steps_per_sec, 1e-9)
      logging.info('%s step %d/%d loss %.4f err %.3f %.1f/s ETA %s', label, completed, steps,
                   last['train/loss'], last['train/error'], steps_per_sec, format_seconds(eta))
      window_start, window_steps = time.perf_counter(), 0
    return True

  train_start = time.perf_counter()
  limit = x.train.time_limit_s
  for step in range(start, steps):
    state, metrics = compiled(state, jnp.int32(step), trainer.train_set)
    if pending is not None and not finish_step(*pending):
      pending = None
      break
    pending = (step, metrics)
    completed = step + 1
    out_of_time = limit > 0 and time.perf_counter() - train_start > limit and completed < steps
    save = completed % x.train.checkpoint_every == 0 or completed == steps or out_of_time
    evaluate = completed % x.evaluation.every == 0 or completed == steps or out_of_time
    if save or evaluate:
      ok = finish_step(*pending)  # checkpoint and evaluate only a state whose loss was finite
      pending = None
      if not ok:
        break
      if save:
        manager.save(completed, args=ocp.args.StandardSave(nnx.to_pure_dict(state)))
      if evaluate:
        evaluation = trainer.evaluate(state)
        writer.scalars(completed, evaluation)
        logging.info('%s eval at step %d: error %.4f', label, completed, evaluation['eval/error'])
        last.update(evaluation)
    if out_of_time:
      status, steps = 'time_limit', completed
      logging.info('%s time limit (%.0f s) reached at step %d: checkpoint saved; the same command resumes',
                   label, limit, completed)
      break
  if pending is not None:
    finish_step(*pending)
  if status == 'done' and 'eval/error' not in last:  # killed after its final checkpoint: evaluate that
    last.update(trainer.evaluate(state))
    writer.scalars(steps, last)
  manager.close()
  train_seconds = time.perf_counter() - train_start
  writer.hparams_session_end(ok=status == 'done')
  writer.close()
  result = dict(x.fields)
  result.update(status=status, steps=steps, compile_seconds=round(compile_seconds, 3),
                train_seconds=round(train_seconds, 3), resumed_from=start,
                device=jax.devices()[0].device_kind, num_devices=trainer.mesh.size)
  result.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in last.items()})
  return result


def format_seconds(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'
