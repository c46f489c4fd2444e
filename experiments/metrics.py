"""Loss and metrics of one batch, and the result entries of summed metrics: one place for both training and
evaluation (the task adds its own counts, e.g. k-hop's errors per k; `anna_jax.tasks.SOLVED_ERROR` says what
"solved" means)."""

import numpy as np
import optax
import jax.numpy as jnp

from anna_jax import registry
from anna_jax.tasks import max_k_solved  # noqa: F401 -- "solved" is the task module's (one threshold)

def loss_and_metrics(model, batch, task=None):
  """(mean cross-entropy over loss_mask, metrics): errors and counted tokens over eval_mask, the attention's stats
  and, with `task`, the task's own counts (evaluation)."""
  logits, stats = model(batch['tokens'])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
  loss_mask, eval_mask = batch['loss_mask'], batch['eval_mask']
  loss = jnp.sum(ce * loss_mask) / jnp.maximum(jnp.sum(loss_mask), 1)
  wrong = (jnp.argmax(logits, -1) != batch['targets']) & eval_mask
  metrics = {'loss': loss, 'wrong': jnp.sum(wrong), 'counted': jnp.sum(eval_mask), **stats}
  if task is not None:
    metrics.update(task.counts(batch, wrong))
  return loss, metrics


def error(metrics):
  """Per-token error of (summed) metrics."""
  return int(metrics['wrong']) / max(int(metrics['counted']), 1)


def attention_stats(metrics, prefix):
  """{prefix/stat: value} of the attention stats (registered by the kinds) present in metrics."""
  return {f'{prefix}/{name}': float(metrics[name]) for name in registry.stat_names() if name in metrics}


def evaluation_result(per_batch, task):
  """The evaluation entries of a list of per-batch metrics (host arrays): the error over every counted token,
  the task's own results from its summed counts, and each attention stat's mean over the batches."""
  counts = [name for name, value in per_batch[0].items() if np.issubdtype(np.asarray(value).dtype, np.integer)]
  summed = {name: sum(np.asarray(m[name]) for m in per_batch) for name in counts}  # wrong, counted, the task's
  result = {'eval/error': error(summed), **task.results(summed)}
  for name in registry.stat_names():
    values = [float(m[name]) for m in per_batch if name in m]
    if values:
      result[f'eval/{name}'] = float(np.mean(values))
  return result


def errors_by_k(result):
  """{k: error} from a result's 'eval/error_k<k>' entries (k-hop)."""
  return {int(key.removeprefix('eval/error_k')): value for key, value in result.items()
          if key.startswith('eval/error_k')}
