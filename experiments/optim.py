"""The optimiser: AdamW after a linear warm-up, with a global-norm clip (experiments.experiment.OptimConfig)."""

import jax
import optax

VALUE_GAIN = 'value_log_gain'  # anna_jax.model.MultiHeadAttention's parameter name


def make_schedule(x):
  """Linear warm-up, then a linear decay to 0 at train.steps or a constant rate (a run cut short and resumed with
  more steps then follows the same trajectory)."""
  optim, steps = x.optim, x.train.steps
  after = (optax.linear_schedule(optim.learning_rate, 0.0, steps - optim.warmup_steps)
           if optim.schedule == 'linear_decay' else optax.constant_schedule(optim.learning_rate))
  return optax.join_schedules([optax.linear_schedule(0.0, optim.learning_rate, optim.warmup_steps), after],
                              [optim.warmup_steps])


def make_optimizer(x, schedule):
  """AdamW (weight_decay 0: Adam) at `schedule`, after clipping the gradients' global norm (0: no clip); the
  value gains' updates scaled by optim.value_gain_lr_scale."""
  tx = optax.adamw(schedule, weight_decay=x.optim.weight_decay)
  if x.optim.value_gain_lr_scale != 1.0:
    tx = optax.chain(tx, optax.masked(optax.scale(x.optim.value_gain_lr_scale), _value_gains))
  if x.optim.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(x.optim.grad_clip), tx)
  return tx


def _value_gains(params):
  """True at the value gains' leaves of `params`, False elsewhere."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(getattr(key, 'key', getattr(key, 'name', None)) == VALUE_GAIN for key in path), params)
