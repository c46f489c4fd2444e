"""The optimiser: AdamW after a linear warm-up, with a global-norm clip (experiments.experiment.OptimConfig)."""

import optax


def make_schedule(x):
  """Linear warm-up, then a linear decay to 0 at train.steps or a constant rate (a run cut short and resumed with
  more steps then follows the same trajectory)."""
  optim, steps = x.optim, x.train.steps
  after = (optax.linear_schedule(optim.learning_rate, 0.0, steps - optim.warmup_steps)
           if optim.schedule == 'linear_decay' else optax.constant_schedule(optim.learning_rate))
  return optax.join_schedules([optax.linear_schedule(0.0, optim.learning_rate, optim.warmup_steps), after],
                              [optim.warmup_steps])


def make_optimizer(x, schedule):
  """AdamW (weight_decay 0: Adam) at `schedule`, after clipping the gradients' global norm (0: no clip)."""
  tx = optax.adamw(schedule, weight_decay=x.optim.weight_decay)
  if x.optim.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(x.optim.grad_clip), tx)
  return tx
