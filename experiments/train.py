"""One run: train_and_evaluate(config, workdir) trains one config, checkpoints with Orbax, returns its result.

The data stream is a pure function of (seed, step): batches are sampled inside the jitted step (fresh
sequences, or rows of a fixed training set when `train_size` > 0), so a run resumed from a checkpoint sees
exactly the batches it would have seen, and gives the same numbers. Evaluation uses fresh sequences, or a fixed
test set of `test_size` sequences drawn once from its own seed.
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

from anna_jax.anna_softmax import ANNASoftmaxConfig
from anna_jax.attention import AttentionConfig
from anna_jax.model import Transformer, TransformerConfig
from anna_jax.tasks import make_task
from experiments.summaries import SummaryWriter

HPARAMS = ('task', 'attention', 'eval_attention', 'depth', 'width', 'n', 'max_k', 'num_tables', 'num_hashes',
           'beta', 'seed')
METRICS = ('eval/error', 'eval/max_k_solved', 'train/loss')
SOLVED_ERROR = 0.05  # "solved" k: error below 5%, as in the paper
STAT_NAMES = ('dropped_fraction', 'no_collision_fraction', 'mean_collisions')  # attention stats we report


def make_task_from_config(c):
  if c.task == 'khop':
    return make_task('khop', n=c.n, alphabet=c.alphabet, max_k=c.max_k)
  if c.task == 'match2':
    return make_task('match2', n=c.n, modulus=c.modulus)
  return make_task(c.task)  # raises the unknown-task error


def hashing_config(c, num_tables=None, num_hashes=None):
  return ANNASoftmaxConfig(num_tables=num_tables or c.num_tables,
                           num_hashes=c.num_hashes if num_hashes is None else num_hashes, family=c.family,
                           crosspolytope_dim=c.crosspolytope_dim, resample_hashes=c.resample_hashes,
                           chunk_size=c.chunk_size, window=c.window, weighting=c.weighting)


def attention_config(c, kind, num_tables=None, num_hashes=None):
  return AttentionConfig(kind=kind, anna=hashing_config(c, num_tables, num_hashes), beta=c.beta,
                         lowrank_features=c.lowrank_features)


def make_model_config(c, task, attention_kind, layer_attention=()):
  return TransformerConfig(vocab_size=task.vocab_size, num_classes=task.num_classes, max_len=task.length,
                           depth=c.depth, width=c.width, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
                           positional=c.positional, causal=c.causal, attention=attention_config(c, attention_kind),
                           layer_attention=tuple(layer_attention))


def validate(c):
  """Raises ValueError with a one-line message for anything that cannot run."""
  task = make_task_from_config(c)
  hashing_config(c).validate()  # also when only a grid or eval_attention will hash
  make_model_config(c, task, c.attention).validate()
  if c.eval_attention:
    make_model_config(c, task, c.eval_attention).validate()
  for name in ('steps', 'batch_size', 'log_every', 'eval_every', 'eval_batches', 'checkpoint_every',
               'keep_checkpoints'):
    if c[name] < 1:
      raise ValueError(f'{name} must be >= 1, got {c[name]}')
  if c.schedule not in ('linear_decay', 'constant'):
    raise ValueError(f"schedule must be 'linear_decay' or 'constant', got {c.schedule!r}")
  if c.error_over not in ('answers', 'all'):
    raise ValueError(f"error_over must be 'answers' or 'all', got {c.error_over!r}")
  if c.train_size < 0 or c.test_size < 0:
    raise ValueError(f'train_size and test_size must be >= 0, got {c.train_size}, {c.test_size}')
  if c.train_size and task.name != 'match2':
    raise ValueError('a fixed training set (train_size > 0) is only defined for match2')
  if task.name == 'khop' and not -1 <= c.eval_k <= c.max_k:
    raise ValueError(f'eval_k must be -1 (every k) or in 0..max_k={c.max_k}, got {c.eval_k}')
  if not c.learning_rate > 0 or c.warmup_steps < 0 or c.warmup_steps > c.steps:
    raise ValueError(f'need learning_rate > 0 and 0 <= warmup_steps <= steps, got {c.learning_rate}, '
                     f'{c.warmup_steps}, {c.steps}')
  devices = c.num_devices or jax.device_count()
  if devices > jax.device_count() or c.batch_size % devices:
    raise ValueError(f'batch_size {c.batch_size} must split evenly over {devices} devices '
                     f'({jax.device_count()} available)')
  return task


def make_schedule(c):
  """Linear warm-up, then a linear decay to 0 at `steps` or a constant rate (a run cut short and resumed with
  more steps then follows the same trajectory)."""
  after = (optax.linear_schedule(c.learning_rate, 0.0, c.steps - c.warmup_steps) if c.schedule == 'linear_decay'
           else optax.constant_schedule(c.learning_rate))
  return optax.join_schedules([optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps), after],
                              [c.warmup_steps])


def loss_and_metrics(model, batch):
  logits, stats = model(batch['tokens'])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
  loss_mask, eval_mask = batch['loss_mask'], batch['eval_mask']
  loss = jnp.sum(ce * loss_mask) / jnp.maximum(jnp.sum(loss_mask), 1)
  wrong = (jnp.argmax(logits, -1) != batch['targets']) & eval_mask
  metrics = {'loss': loss, 'wrong': jnp.sum(wrong), 'counted': jnp.sum(eval_mask), **stats}
  return loss, metrics


def make_mesh(c):
  devices = jax.devices()[: c.num_devices or jax.device_count()]
  return jax.sharding.Mesh(np.array(devices), ('data',))


class Trainer:
  """Holds the jitted train and eval steps of one config, and its fixed data sets (if any)."""

  def __init__(self, c):
    self.c = c
    self.task = validate(c)
    self.mesh = make_mesh(c)
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharded = NamedSharding(self.mesh, P('data'))
    self.schedule = make_schedule(c)
    if c.attention == 'anna':
      logging.warning('attention=anna (Algorithm 1) passes no gradient to queries and keys, so they cannot '
                      'learn; the paper trains unit_softmax and evaluates with anna (eval_attention / the grid)')
    model = Transformer(make_model_config(c, self.task, c.attention), rngs=nnx.Rngs(c.seed))
    tx = optax.adamw(self.schedule, weight_decay=c.weight_decay)
    if c.grad_clip:
      tx = optax.chain(optax.clip_by_global_norm(c.grad_clip), tx)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    self.graphdef, state = nnx.split((model, optimizer))
    self.initial_state = jax.device_put(state, self.replicated)
    # Evaluation may swap in another attention (the paper's recipe); it reuses the trained Params.
    eval_model = Transformer(make_model_config(c, self.task, c.eval_attention or c.attention),
                             rngs=nnx.Rngs(c.seed))
    self.eval_graphdef, _, self.eval_rest = nnx.split(eval_model, nnx.Param, ...)
    self.data_key = jax.random.key(c.seed + 1)  # training stream
    self.eval_key = jax.random.key(c.seed + 2)  # fresh sequences, never shared with training
    # Fixed sets (the paper's Match2: 10,000 training and 256 test sequences), drawn once from their own seeds.
    self.train_set = self.task.balanced_set(c.seed + 3, c.train_size) if c.train_size else None
    self.test_set = self.fixed_test_set() if c.test_size else None
    self.train_step = jax.jit(self._train_step, donate_argnums=0)
    self.eval_step = jax.jit(self._eval_step)
    self.eval_fixed = jax.jit(self._eval_fixed)

  def fixed_test_set(self):
    key = jax.random.key(self.c.seed + 4)
    if self.task.name == 'match2':
      return self.task.balanced_set(self.c.seed + 4, self.c.test_size)
    k = None if self.c.eval_k < 0 else self.c.eval_k
    return self.task.sample(key, self.c.test_size, k=k, every_token=self.c.error_over == 'all')

  def _sample(self, key, k=None):
    if k is None:
      batch = self.task.sample(key, self.c.batch_size)
    else:
      batch = self.task.sample(key, self.c.batch_size, k=k, every_token=self.c.error_over == 'all')
    return jax.lax.with_sharding_constraint(batch, self.data_sharded)

  def _train_batch(self, step, train_set):
    key = jax.random.fold_in(self.data_key, step)
    if train_set is None:
      return self._sample(key)
    rows = jax.random.randint(key, (self.c.batch_size,), 0, self.c.train_size)  # with replacement
    return jax.lax.with_sharding_constraint(jax.tree.map(lambda x: x[rows], train_set), self.data_sharded)

  def _train_step(self, state, step, train_set):
    model, optimizer = nnx.merge(self.graphdef, state)
    batch = self._train_batch(step, train_set)
    (_, metrics), grads = nnx.value_and_grad(loss_and_metrics, has_aux=True)(model, batch)
    optimizer.update(model, grads)
    metrics['lr'] = self.schedule(step)
    return nnx.state((model, optimizer)), metrics

  def eval_model(self, state):
    model, _ = nnx.merge(self.graphdef, state)
    params = nnx.state(model, nnx.Param)
    rest = self.eval_rest if self.c.eval_attention else nnx.state(model, nnx.Not(nnx.Param))
    return nnx.merge(self.eval_graphdef, params, rest)

  def _eval_step(self, state, index, k):
    key = jax.random.fold_in(jax.random.fold_in(self.eval_key, k), index)
    _, metrics = loss_and_metrics(self.eval_model(state), self._sample(key, k if self.task.name == 'khop' else None))
    return metrics

  def _eval_fixed(self, state, test_set):
    _, metrics = loss_and_metrics(self.eval_model(state), test_set)
    return metrics

  def evaluate(self, state):
    """Per-token error on the fixed test set, or on fresh sequences (k-hop: per k)."""
    if self.test_set is not None:
      metrics = jax.device_get(self.eval_fixed(state, self.test_set))
      result = {'eval/error': int(metrics['wrong']) / max(int(metrics['counted']), 1)}
      result.update({f'eval/{name}': float(metrics[name]) for name in STAT_NAMES if name in metrics})
      return result
    ks = range(self.c.max_k + 1) if self.task.name == 'khop' else [0]
    if self.task.name == 'khop' and self.c.eval_k >= 0:
      ks = [self.c.eval_k]
    per_k, wrong_total, counted_total, stats = {}, 0, 0, {}
    for k in ks:
      metrics = [self.eval_step(state, i, k) for i in range(self.c.eval_batches)]
      metrics = jax.device_get(metrics)
      wrong = sum(int(m['wrong']) for m in metrics)
      counted = sum(int(m['counted']) for m in metrics)
      per_k[k] = wrong / max(counted, 1)
      wrong_total, counted_total = wrong_total + wrong, counted_total + counted
      for name in STAT_NAMES:
        stats.setdefault(name, []).extend(float(m[name]) for m in metrics if name in m)
    result = {'eval/error': wrong_total / max(counted_total, 1)}
    if self.task.name == 'khop':
      solved = -1
      while solved + 1 in per_k and per_k[solved + 1] < SOLVED_ERROR:
        solved += 1
      result['eval/max_k_solved'] = solved  # largest k with every k' <= k below 5% error; -1 if none
      result.update({f'eval/error_k{k}': e for k, e in per_k.items()})
    result.update({f'eval/{name}': float(np.mean(values)) for name, values in stats.items() if values})
    return result


def checkpoint_manager(c, workdir):
  options = ocp.CheckpointManagerOptions(max_to_keep=c.keep_checkpoints, create=True,
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


def train_and_evaluate(c, workdir, tb_dir=None, label=''):
  """Trains config `c` in `workdir` (resuming from its latest checkpoint) and returns the result dict.

  result['status'] is 'done', or 'nan' when a non-finite loss stopped the run (the last good checkpoint
  is kept). `label` prefixes console progress lines.
  """
  os.makedirs(workdir, exist_ok=True)
  trainer = Trainer(c)
  writer = SummaryWriter(tb_dir or os.path.join(workdir, 'tb'))
  writer.hparams_session({name: c[name] for name in HPARAMS})
  manager = checkpoint_manager(c, workdir)
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
    if completed % c.log_every == 0 or completed == c.steps:
      elapsed = time.perf_counter() - window_start
      steps_per_sec = window_steps / max(elapsed, 1e-9)
      last = {'train/loss': float(metrics['loss']), 'train/error': float(metrics['wrong']) / max(int(metrics['counted']), 1),
              'train/lr': float(metrics['lr']), 'train/steps_per_sec': steps_per_sec}
      last.update({f'train/{name}': float(metrics[name]) for name in STAT_NAMES if name in metrics})
      writer.scalars(completed, last)
      eta = (c.steps - completed) / max(steps_per_sec, 1e-9)
      logging.info('%s step %d/%d loss %.4f err %.3f %.1f/s ETA %s', label, completed, c.steps,
                   last['train/loss'], last['train/error'], steps_per_sec, format_seconds(eta))
      window_start, window_steps = time.perf_counter(), 0
    return True

  train_start = time.perf_counter()
  for step in range(start, c.steps):
    state, metrics = compiled(state, jnp.int32(step), trainer.train_set)
    if pending is not None and not finish_step(*pending):
      pending = None
      break
    pending = (step, metrics)
    completed = step + 1
    if completed % c.checkpoint_every == 0 or completed == c.steps or completed % c.eval_every == 0:
      ok = finish_step(*pending)  # checkpoint and evaluate only a state whose loss was finite
      pending = None
      if not ok:
        break
      if completed % c.checkpoint_every == 0 or completed == c.steps:
        manager.save(completed, args=ocp.args.StandardSave(nnx.to_pure_dict(state)))
      if completed % c.eval_every == 0 or completed == c.steps:
        evaluation = trainer.evaluate(state)
        writer.scalars(completed, evaluation)
        logging.info('%s eval at step %d: error %.4f', label, completed, evaluation['eval/error'])
        last.update(evaluation)
  if pending is not None:
    finish_step(*pending)
  if status == 'done' and 'eval/error' not in last:  # killed after its final checkpoint: evaluate that
    last.update(trainer.evaluate(state))
    writer.scalars(c.steps, last)
  manager.close()
  train_seconds = time.perf_counter() - train_start
  writer.hparams_session_end(ok=status == 'done')
  writer.close()
  result = {name: c[name] for name in HPARAMS}
  result.update(status=status, steps=c.steps, compile_seconds=round(compile_seconds, 3),
                train_seconds=round(train_seconds, 3), resumed_from=start,
                device=jax.devices()[0].device_kind, num_devices=trainer.mesh.size)
  result.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in last.items()})
  return result


def format_seconds(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'
