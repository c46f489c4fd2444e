"""Orbax checkpoints of a run (`<run>/checkpoints`): the manager, restoring the latest, and warm starts."""

import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from anna_jax.model import Transformer


def manager(x, run_dir):
  """The checkpoint manager of the run in run_dir (keeps x.train.keep_checkpoints)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=x.train.keep_checkpoints, create=True,
                                         enable_async_checkpointing=False)  # the next step donates the state
  return ocp.CheckpointManager(os.path.abspath(os.path.join(run_dir, 'checkpoints')), options=options)


def save(checkpoints, step, state):
  checkpoints.save(step, args=ocp.args.StandardSave(nnx.to_pure_dict(state)))


def restore_latest(checkpoints, state):
  """(state, completed steps) from the latest checkpoint, or the given state and 0."""
  step = checkpoints.latest_step()
  if step is None:
    return state, 0
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
  restored = checkpoints.restore(step, args=ocp.args.StandardRestore(target))
  nnx.replace_by_pure_dict(state, restored)
  return state, step


def latest_model_state(run_dir, what):
  """(pure dict of the model's state, step) of the latest checkpoint in run_dir; ValueError if there is none."""
  directory = os.path.abspath(os.path.join(run_dir, 'checkpoints'))
  checkpoints = ocp.CheckpointManager(directory) if os.path.isdir(directory) else None
  step = checkpoints.latest_step() if checkpoints else None
  if step is None:
    raise ValueError(f'{what}: {run_dir} has no checkpoint')
  saved = checkpoints.restore(step, args=ocp.args.StandardRestore())['0']  # (model, optimizer): the model's state
  checkpoints.close()
  return saved, step


# Parameters a warm start may add to a checkpoint's model: they start at their init (the value gain's 0 leaves the
# model computing what the checkpoint's did).
ADDABLE = ('value_log_gain',)


def fill(template, stored, path, what, run_dir, addable=()):
  """`template` (a pure dict) with the values of `stored` (the same tree, string keys); ValueError naming the
  first leaf `stored` lacks (unless its name is in `addable`: it keeps the template's value) or holds in another
  shape."""
  if isinstance(template, dict):
    if not isinstance(stored, dict):
      raise ValueError(f'{what}: {run_dir} has no parameter {path}')
    return {key: fill(value, stored.get(str(key)), f'{path}/{key}', what, run_dir, addable)
            for key, value in template.items()}
  if stored is None and path.rsplit('/', 1)[-1] in addable:
    logging.info('%s: %s has no %s; it starts at its init', what, run_dir, path)
    return template
  if stored is None or tuple(stored.shape) != tuple(template.shape):
    found = 'none' if stored is None else tuple(stored.shape)
    raise ValueError(f'{what}: parameter {path} of {run_dir} has shape {found}, the model needs '
                     f'{tuple(template.shape)}')
  return jnp.asarray(stored, template.dtype)


def load(model, run_dir, filters=(nnx.Param,), what='train.init_from', addable=()):
  """Sets the state of `model` selected by `filters` (its trained Params; `...`: everything, hash functions
  included) to the latest checkpoint's in run_dir, a run of the same architecture (but for `addable` parameters);
  returns that step."""
  saved, step = latest_model_state(run_dir, what)
  state = nnx.state(model, *filters)
  nnx.replace_by_pure_dict(state, fill(nnx.to_pure_dict(state), saved, '', what, run_dir, addable))
  nnx.update(model, state)
  return step


def warm_start(model, run_dir):
  """Sets model's Params to those of the latest checkpoint in run_dir (train.init_from)."""
  step = load(model, run_dir, addable=ADDABLE)
  logging.info('initialised from %s (step %d)', run_dir, step)


def trained_model(x, run_dir):
  """(the trained Transformer of the run in run_dir, its step): the latest checkpoint's Params and hash functions
  in x.model's architecture; ValueError if it has no checkpoint."""
  model = Transformer(x.model, rngs=nnx.Rngs(x.seed))
  step = load(model, run_dir, filters=(...,), what='the grid')
  return model, step
