"""One run: train_and_evaluate(config, workdir) trains one config, checkpoints with Orbax, returns its result.

The Trainer holds the jitted train step; the loop below drives it, checkpoints (experiments.checkpoints) and
evaluates with the Trainer's Evaluator (experiments.evaluation). The data stream is a pure function of (seed,
step): batches are sampled inside the jitted step (fresh sequences, or rows of the task's fixed training set when
`train.train_size` > 0), so a run resumed from a checkpoint sees exactly the batches it would have seen, and gives
the same numbers.
"""

import math
import os
import resource
import time

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from anna_jax.model import Transformer
from anna_jax.tooling import SummaryWriter, compiled_bytes, format_seconds
from experiments import checkpoints, experiment, metrics, records
from experiments.evaluation import Evaluator, shard
from experiments.optim import make_optimizer, make_schedule

METRICS = ('eval/error', 'eval/max_k_solved', 'train/loss')  # the columns of a sweep's results table


class Trainer:
  """The jitted train step of one built Experiment, its training set (if fixed) and its Evaluator."""

  def __init__(self, x):
    self.x = x
    self.evaluator = Evaluator(x)
    self.mesh = self.evaluator.mesh
    self.replicated = NamedSharding(self.mesh, P())
    self.schedule = make_schedule(x)
    if x.model.attention.kind == 'anna' and not x.model.attention.anna.straight_through:
      logging.warning('attention=anna (Algorithm 1) passes no gradient to queries and keys, so they cannot '
                      'learn; the paper trains unit_softmax and evaluates with anna (evaluation.attention / the grid), '
                      'or set attention.anna.straight_through')
    model = Transformer(x.model, rngs=nnx.Rngs(x.seed))
    if x.train.init_from:
      checkpoints.warm_start(model, x.train.init_from)
    optimizer = nnx.Optimizer(model, make_optimizer(x, self.schedule), wrt=nnx.Param)
    self.graphdef, state = nnx.split((model, optimizer))
    self.initial_state = jax.device_put(state, self.replicated)
    self.data_key = jax.random.key(x.seed + 1)  # training stream
    # A fixed training set (the paper's Match2: 10,000 sequences), drawn once from its own seed.
    self.train_set = x.task.train_set(x.seed + 3, x.train.train_size) if x.train.train_size else None
    self.microbatches = microbatch_count(x, self.mesh.shape['data'])
    self.train_step = jax.jit(self._train_step, donate_argnums=0)

  def _train_batch(self, step, train_set):
    key = jax.random.fold_in(self.data_key, step)
    if train_set is None:
      return shard(self.mesh, self.x.task.sample(key, self.x.train.batch_size))
    rows = jax.random.randint(key, (self.x.train.batch_size,), 0, self.x.train.train_size)  # with replacement
    return shard(self.mesh, jax.tree.map(lambda x: x[rows], train_set))

  def _train_step(self, state, step, train_set):
    model, optimizer = nnx.merge(self.graphdef, state)
    batch = self._train_batch(step, train_set)
    grads, step_metrics = self._gradient(model, batch)
    optimizer.update(model, grads)
    step_metrics['lr'] = self.schedule(step)
    # Parameters stay replicated (XLA would otherwise split a position table along the sequence axis).
    return jax.lax.with_sharding_constraint(nnx.state((model, optimizer)), self.replicated), step_metrics

  def _gradient(self, model, batch):
    """(the gradient of the batch's mean loss, the batch's metrics), summed over self.microbatches microbatches
    in a lax.scan: row r of the batch goes to microbatch r % microbatches (each holds rows of every data-parallel
    device). Each microbatch's gradient is weighted by its share of the loss tokens, so the sum is the whole
    batch's gradient up to float summation order."""
    count = self.microbatches
    if count == 1:  # the plain gradient: bitwise what runs from before microbatches computed
      (_, step_metrics), grads = nnx.value_and_grad(metrics.loss_and_metrics, has_aux=True)(model, batch)
      return grads, step_metrics
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    split = jax.tree.map(lambda a: a.reshape(a.shape[0] // count, count, *a.shape[1:]).swapaxes(0, 1), batch)
    loss_tokens = jnp.maximum(jnp.sum(batch['loss_mask']), 1)

    def loss(params, microbatch):
      # Every microbatch starts from the step's non-trained state (a resampled hash function's call count), so
      # all of them see the hashes an unsplit step would; the state after any of them is the step's.
      model = nnx.merge(graphdef, params, rest, copy=True)  # fresh variables of this trace
      value, step_metrics = metrics.loss_and_metrics(model, shard(self.mesh, microbatch))
      return value, (step_metrics, nnx.split(model, nnx.Param, ...)[2])

    def accumulate(grads, microbatch):
      (value, (step_metrics, after)), microbatch_grads = jax.value_and_grad(loss, has_aux=True)(params, microbatch)
      share = jnp.sum(microbatch['loss_mask']) / loss_tokens
      grads = jax.tree.map(lambda total, g: total + share * g, grads, microbatch_grads)
      return grads, (share * value, step_metrics, after)

    grads, (losses, per_microbatch, after) = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params), split)
    nnx.update(model, jax.tree.map(lambda a: a[-1], after))
    # Counts (wrong, counted) add up; the attention stats are means over equal microbatches.
    step_metrics = {name: jnp.sum(v, 0) if jnp.issubdtype(v.dtype, jnp.integer) else jnp.mean(v, 0)
                    for name, v in per_microbatch.items()}
    step_metrics['loss'] = jnp.sum(losses)
    return grads, step_metrics

  def evaluate(self, state):
    """The Evaluator's entries for the trained state (model, optimizer)."""
    model, _ = nnx.merge(self.graphdef, state)
    params, rest = nnx.state(model, nnx.Param, ...)
    return self.evaluator.evaluate(params, rest)


# On CPU a step runs faster when each microbatch's MLP activations (sequences x tokens x MLP width floats) stay
# within about this many (2 MiB, a core's cache here): the induction-heads model's 32 x 101 x 512 in 4 microbatches
# trains 1.4x faster; k-hop's and Match2's at N = 32 (one microbatch) do not gain from more
# (benchmarks/results/train_step_profile/).
CPU_MICROBATCH_FLOATS = 512 * 1024


def microbatch_count(x, data_devices):
  """train.microbatches, or where it is 0 (automatic): 1 on accelerators; on CPU the fewest microbatches (a divisor
  of each data-parallel device's batch) whose MLP activations fit CPU_MICROBATCH_FLOATS."""
  if x.train.microbatches:
    return x.train.microbatches
  per_device = x.train.batch_size // data_devices
  if jax.default_backend() != 'cpu':
    return 1
  floats_per_sequence = experiment.sequence_length(x.task) * x.model.mlp_ratio * x.model.width
  fitting = [count for count in range(1, per_device + 1)
             if per_device % count == 0 and per_device // count * floats_per_sequence <= CPU_MICROBATCH_FLOATS]
  return fitting[0] if fitting else per_device


def train_and_evaluate(config, workdir, tb_dir=None, label=''):
  """Trains one run config (a config without `sweep`, see experiments.experiment) in `workdir`, resuming from
  its latest checkpoint, and returns its records.RunResult (see `run`)."""
  return run(experiment.build(config), workdir, tb_dir, label)


def run(x, workdir, tb_dir=None, label=''):
  """Trains the built Experiment `x` in `workdir` (resuming from its latest checkpoint); returns its
  records.RunResult: every config field the run read ('model.depth', ...), the last metrics, and status: 'done',
  'nan' when a non-finite loss stopped the run (the last good checkpoint is kept), or 'time_limit'
  (train.time_limit_s; steps is then the steps completed, so a sweep resumes it). `label` prefixes console
  progress lines.
  """
  records.check(workdir, x)  # records.StaleRun if workdir holds a run trained with other settings
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    records.write(workdir, x)
  trainer = Trainer(x)
  with jax.set_mesh(trainer.mesh):  # attention sees the mesh's sequence axis while it is traced
    return _run(trainer, workdir, tb_dir, label)


def memory_info(compiled):
  """Memory of a run, in MiB: the compiled train step's own (arguments + outputs + temporaries, as XLA plans
  them: the same on every run of a program), the device's peak where it reports one (GPU/TPU), and this
  process's peak resident memory (on CPU that holds the step's, beside everything else the process keeps)."""
  mib = lambda b: round(b / 2**20, 1)
  info = {'peak_rss_mib': mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}
  planned = compiled_bytes(compiled)
  if planned is not None:
    info['step_memory_mib'] = mib(planned)
  device_stats = jax.local_devices()[0].memory_stats() or {}  # this process's device (multi-process runs)
  if 'peak_bytes_in_use' in device_stats:
    info['device_peak_mib'] = mib(device_stats['peak_bytes_in_use'])
  return info


class Progress:
  """The loop's bookkeeping: each step's metrics read one step late (the next step is already dispatched), the
  last logged values, the steps/s of the current logging window and the run's status."""

  def __init__(self, x, writer, label):
    self.x, self.writer, self.label = x, writer, label
    self.status, self.last = 'done', {}
    self.window_start, self.window_steps = time.perf_counter(), 0

  def finish_step(self, step, step_metrics):
    """Reads a step's metrics and logs them when due; False (status 'nan') if its loss is not finite."""
    step_metrics = jax.device_get(step_metrics)
    if not math.isfinite(float(step_metrics['loss'])):
      self.status = 'nan'
      logging.error('%s non-finite loss at step %d: stopping; the last good checkpoint is kept', self.label, step)
      return False
    self.window_steps += 1
    completed, steps = step + 1, self.x.train.steps
    if completed % self.x.train.log_every == 0 or completed == steps:
      steps_per_sec = self.window_steps / max(time.perf_counter() - self.window_start, 1e-9)
      self.last = {'train/loss': float(step_metrics['loss']), 'train/error': metrics.error(step_metrics),
                   'train/lr': float(step_metrics['lr']), 'train/steps_per_sec': steps_per_sec,
                   **metrics.attention_stats(step_metrics, 'train')}
      self.writer.scalars(completed, self.last)
      eta = (steps - completed) / max(steps_per_sec, 1e-9)
      logging.info('%s step %d/%d loss %.4f err %.3f %.1f/s ETA %s', self.label, completed, steps,
                   self.last['train/loss'], self.last['train/error'], steps_per_sec, format_seconds(eta))
      self.window_start, self.window_steps = time.perf_counter(), 0
    return True

  def evaluated(self, step, evaluation):
    self.writer.scalars(step, evaluation)
    self.last.update(evaluation)


def _run(trainer, workdir, tb_dir, label):
  x = trainer.x
  steps = x.train.steps
  writer = SummaryWriter(tb_dir or os.path.join(workdir, 'tb'))
  writer.hparams_session(x.fields)
  manager = checkpoints.manager(x, workdir)
  state, start = checkpoints.restore_latest(manager, trainer.initial_state)
  logging.info('%s %s', label, os.path.basename(os.path.normpath(workdir)))
  if start:
    logging.info('%s resuming from step %d', label, start)

  t0 = time.perf_counter()
  compiled = trainer.train_step.lower(state, jnp.int32(start), trainer.train_set).compile()
  compile_seconds = time.perf_counter() - t0
  logging.info('%s compiled train step in %.1fs', label, compile_seconds)
  history = records.EvaluationHistory(workdir, start)

  progress = Progress(x, writer, label)
  pending = None  # (step, metrics) of the step dispatched last: read after dispatching the next
  train_start = time.perf_counter()
  evaluation_seconds = 0.0  # spent evaluating and checkpointing: left out of the training time the history keeps
  limit = x.train.time_limit_s
  for step in range(start, steps):
    state, step_metrics = compiled(state, jnp.int32(step), trainer.train_set)
    if pending is not None and not progress.finish_step(*pending):
      pending = None
      break
    pending = (step, step_metrics)
    completed = step + 1
    out_of_time = limit > 0 and time.perf_counter() - train_start > limit and completed < steps
    save = completed % x.train.checkpoint_every == 0 or completed == steps or out_of_time
    evaluate = completed % x.evaluation.every == 0 or completed == steps or out_of_time
    if save or evaluate:
      ok = progress.finish_step(*pending)  # checkpoint and evaluate only a state whose loss was finite
      pending = None
      if not ok:
        break
      paused = time.perf_counter()  # every step dispatched so far has finished (its loss was read)
      if save:
        checkpoints.save(manager, completed, state)
      if evaluate:
        progress.evaluated(completed, trainer.evaluate(state))
        history.add(completed, paused - train_start - evaluation_seconds, progress.last)
        logging.info('%s eval at step %d: error %.4f', label, completed, progress.last['eval/error'])
      evaluation_seconds += time.perf_counter() - paused
    if out_of_time:
      progress.status, steps = 'time_limit', completed
      logging.info('%s time limit (%.0f s) reached at step %d: checkpoint saved; the same command resumes',
                   label, limit, completed)
      break
  if pending is not None:
    progress.finish_step(*pending)
  if progress.status == 'done' and 'eval/error' not in progress.last:  # killed after its final checkpoint
    progress.evaluated(steps, trainer.evaluate(state))
  manager.close()
  train_seconds = time.perf_counter() - train_start
  writer.hparams_session_end(ok=progress.status == 'done')
  writer.close()
  info = dict(compile_seconds=round(compile_seconds, 3), train_seconds=round(train_seconds, 3), resumed_from=start,
              device=jax.devices()[0].device_kind, num_devices=trainer.mesh.size, microbatches=trainer.microbatches,
              **memory_info(compiled))
  return records.RunResult(os.path.basename(os.path.normpath(workdir)), progress.status, steps, dict(x.fields),
                           {k: (round(v, 6) if isinstance(v, float) else v) for k, v in progress.last.items()}, info)
