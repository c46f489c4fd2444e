"""The Evaluator of a built Experiment: its mesh, its test set (fixed, or fresh batches group by group as the
task defines them) and its compiled evaluation graph. The Trainer evaluates with it during training; the grid
evaluates checkpoints with it (and its test set), nothing else built.

Evaluation uses fresh sequences from their own stream (seed + 2), or a fixed test set of
`evaluation.test_size` sequences drawn once from seed + 4. With `evaluation.attention` set, the evaluated model is
the trained one with that kind swapped into every layer (its hash functions drawn from the run's seed).
"""

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from anna_jax.model import Transformer
from anna_jax.sequence_parallel import SEQUENCE_AXIS
from experiments import metrics


def make_mesh(x):
  """A (data, seq) mesh: batches split over 'data', each sequence over SEQUENCE_AXIS (train.sequence_devices)."""
  devices = np.array(jax.devices()[: x.train.num_devices or jax.device_count()])
  return jax.sharding.Mesh(devices.reshape(-1, x.train.sequence_devices), ('data', SEQUENCE_AXIS))


def shard(mesh, batch):
  """Constrains a batch (inside jit): the batch axis over 'data', the token axis (if any) over SEQUENCE_AXIS."""
  shardings = jax.tree.map(lambda a: NamedSharding(mesh, P('data', SEQUENCE_AXIS) if a.ndim > 1 else P('data')),
                           batch)
  return jax.lax.with_sharding_constraint(batch, shardings)


class Evaluator:
  """evaluate(params, rest): the evaluation entries ('eval/error', the task's own, the attention's stats) of a
  model with trained Params `params` and other state `rest` (its hash functions; unused when evaluation swaps in
  another attention)."""

  def __init__(self, x, mesh=None):
    self.x, self.task = x, x.task
    self.mesh = mesh or make_mesh(x)
    self.every_token = x.evaluation.error_over == 'all'
    self.key = jax.random.key(x.seed + 2)  # fresh sequences, never shared with training
    self.test_set = (self.task.test_set(x.seed + 4, x.evaluation.test_size, x.evaluation.k, self.every_token)
                     if x.evaluation.test_size else None)
    self.swapped = x.eval_model != x.model
    self.graphdef, _, self.swapped_rest = nnx.split(Transformer(x.eval_model, rngs=nnx.Rngs(x.seed)), nnx.Param, ...)
    self.on_batch = jax.jit(self._on_batch)
    self.on_fresh_batch = jax.jit(self._on_fresh_batch)

  def model(self, params, rest):
    return nnx.merge(self.graphdef, params, self.swapped_rest if self.swapped else rest)

  def _on_batch(self, params, rest, batch):
    return metrics.loss_and_metrics(self.model(params, rest), batch, self.task)[1]

  def _on_fresh_batch(self, params, rest, index, group):
    key = jax.random.fold_in(jax.random.fold_in(self.key, group), index)
    batch = self.task.eval_batch(key, self.x.train.batch_size, group, self.every_token)
    return self._on_batch(params, rest, shard(self.mesh, batch))

  def evaluate(self, params, rest):
    with jax.set_mesh(self.mesh):  # sequences split as in training (train.sequence_devices)
      if self.test_set is not None:
        per_batch = [self.on_batch(params, rest, self.test_set)]
      else:
        per_batch = [self.on_fresh_batch(params, rest, i, group) for group in self.task.eval_groups(self.x.evaluation.k)
                     for i in range(self.x.evaluation.batches)]
      return metrics.evaluation_result(jax.device_get(per_batch), self.task)
