"""The one input check and the one NaN policy of every attention kind and loop plan.

Every public attention function is decorated with `guarded`: its inputs are checked (shapes, dtypes) and their
non-finite entries zeroed, so no kernel or plan sees them, and its output gets NaN exactly where the policy below
puts it (`propagate_nonfinite`), so a plan never answers bad input differently from another (a C++ kernel
reading past a buffer, an XLA plan broadcasting a batch of one), and a non-finite input never comes out as a
finite number, nor as a NaN where exact attention has none.

Inputs: q, k, v of shape (batch, n, heads, head_dim), equal in every axis (self-attention), except that `anna`
(Algorithm 1 averages values, whatever their width) takes values of any head width; floating dtypes, n >= 1; mask None or (batch, n) of bool or integers. Hash functions: one
per head (axis 0), at least one table (axis 1), the head width where the family reads it.

NaN policy: a non-finite value reaches exactly the outputs it reaches in exact softmax attention over the same
tokens, whatever the hashing does with it (a NaN projects to a 0 bit, so without this it would land in some
bucket and vanish):
- a non-finite query coordinate makes its own output NaN;
- a non-finite key or value coordinate of a real token makes NaN the output of every real query that sees it
  (every one; causal: queries i >= j);
- non-finite hash functions make every real output NaN;
- padded tokens (mask False) reach nothing, and padded queries output zeros, NaN or not.
"""

import functools
import inspect

import jax
import jax.numpy as jnp

from anna_jax import lsh


def _shape_line(q, k, v, mask):
  shapes = f'q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}'
  return shapes + ('' if mask is None else f', mask {tuple(jnp.shape(mask))}')


def check_inputs(name, q, k, v, mask=None, projections=None, family='hyperplane', any_value_width=False):
  """ValueError (one line naming the shapes) unless q, k, v, mask and the hash functions (if given, of LSH
  `family`) are as the module docstring says; any_value_width: v's head width may differ from q's."""
  shapes = _shape_line(q, k, v, mask)
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f'{name}: q, k, v must have shape (batch, n, heads, head_dim); got {shapes}')
  if q.shape != k.shape or v.shape[:3] != q.shape[:3]:
    raise ValueError(f'{name}: q, k, v must agree in (batch, n, heads) and q, k in head_dim; got {shapes}')
  if v.shape != q.shape and not any_value_width:
    raise ValueError(f'{name}: v must have the head width of q and k; got {shapes}')
  if q.shape[1] < 1:
    raise ValueError(f'{name}: sequences must have at least one token; got {shapes}')
  for label, x in (('q', q), ('k', k), ('v', v)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f'{name}: {label} must have a floating dtype, got {x.dtype}')
  if mask is not None:
    if tuple(jnp.shape(mask)) != q.shape[:2]:
      raise ValueError(f'{name}: mask must have shape (batch, n) = {q.shape[:2]}; got {shapes}')
    if not (jnp.issubdtype(mask.dtype, jnp.bool_) or jnp.issubdtype(mask.dtype, jnp.integer)):
      raise ValueError(f'{name}: mask must be bool or integer, got {mask.dtype}')
  if projections is not None:
    _check_projections(name, projections, q, family)


def finite_or_zero(x):
  return jnp.where(jnp.isfinite(x), x, jnp.zeros((), x.dtype))


def guarded(name, hashes=None, shared_qk=False, any_value_width=False):
  """Decorates an attention function fn(q, k, v, *rest, mask=None, causal=False, **kwargs) -> out or (out, stats)
  with the checks and the NaN policy of this module.

  hashes: None (rest holds no hash functions), an LSH family (rest[0] are hash functions of that family), or
  'config' (rest[0] are hash functions of the family rest[1].family). shared_qk: k is ignored and every query is
  also a key (Reformer), so a query poisons as a key does. any_value_width: as in check_inputs.
  """
  def decorate(fn):
    # The hash functions and the config are fn's 4th and 5th parameters, passed by position or by name.
    signature = inspect.signature(fn)
    names = list(signature.parameters)

    @functools.wraps(fn)
    def wrapped(q, k, v, *rest, mask=None, causal=False, **kwargs):
      arguments = signature.bind(q, k, v, *rest, mask=mask, causal=causal, **kwargs).arguments
      projections = arguments[names[3]] if hashes else None
      family = arguments[names[4]].family if hashes == 'config' else hashes
      check_inputs(name, q, k, v, mask, projections, family or 'hyperplane', any_value_width)
      for argument in names[:3]:
        arguments[argument] = finite_or_zero(arguments[argument])
      if hashes:
        arguments[names[3]] = finite_or_zero(projections)
      result = fn(**arguments)
      out, stats = result if isinstance(result, tuple) else (result, None)
      out = propagate_nonfinite(out, q, q if shared_qk else k, v, mask=mask, causal=causal, projections=projections)
      return out if stats is None else (out, stats)
    return wrapped
  return decorate


def _check_projections(name, projections, q, family):
  """Hyperplane: (heads, tables, head_dim, hashes); cross-polytope: (heads, tables, hashes, head_dim, d')."""
  lsh.validate_family(family)
  ndim, dim_axis = (4, 2) if family == 'hyperplane' else (5, 3)
  heads, dim = q.shape[2], q.shape[3]
  shape = tuple(projections.shape)
  if (projections.ndim != ndim or shape[0] != heads or shape[1] < 1 or shape[dim_axis] != dim
      or not jnp.issubdtype(projections.dtype, jnp.floating)):
    raise ValueError(f'{name}: {family} hash functions of shape {shape} ({projections.dtype}) do not fit q '
                     f'{tuple(q.shape)}: need floats with heads={heads} on axis 0, tables >= 1 on axis 1 and '
                     f'head_dim={dim} on axis {dim_axis} of {ndim}')


def _bad_rows(x):
  """(batch, n, heads) True where a token's vector has a non-finite coordinate."""
  return ~jnp.all(jnp.isfinite(x), axis=-1)


def replicated(x):
  """x with no axis sharded over an explicit mesh axis (a sequence split over devices, sequence_parallel), for
  computations that need the whole sequence (the reductions below; straight-through anna's O(n^2) kernel)."""
  sharding = getattr(jax.typeof(x), 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  if spec is not None and any(axis is not None for axis in spec):
    return jax.sharding.reshard(x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
  return x


def laid_out_like(x, target):
  """x laid out as target's leading axes are (explicit meshes do not broadcast between layouts)."""
  sharding = getattr(jax.typeof(target), 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  if spec is not None and any(axis is not None for axis in spec):
    return jax.sharding.reshard(x, jax.sharding.NamedSharding(sharding.mesh,
                                                              jax.sharding.PartitionSpec(*tuple(spec)[: x.ndim])))
  return x


def propagate_nonfinite(out, q, k, v, *, mask=None, causal=False, projections=None):
  """`out` with the NaN policy of the module docstring applied (padded queries zeroed)."""
  valid = jnp.ones(q.shape[:2], bool) if mask is None else jnp.asarray(mask).astype(bool)
  valid = replicated(valid[:, :, None])
  seen = replicated(_bad_rows(k) | _bad_rows(v)) & valid  # (batch, n, heads): a poisoned key of a real token
  if causal:
    poisoned = jax.lax.cummax(seen.astype(jnp.int32), axis=1).astype(bool)
  else:
    poisoned = jnp.broadcast_to(jnp.any(seen, axis=1, keepdims=True), seen.shape)
  poisoned = poisoned | replicated(_bad_rows(q))
  if projections is not None:
    poisoned = poisoned | ~jnp.all(jnp.isfinite(projections))
  poisoned, valid = laid_out_like(poisoned, out), laid_out_like(valid, out)
  out = jnp.where(poisoned[..., None], jnp.asarray(jnp.nan, out.dtype), out)
  return jnp.where(valid[..., None], out, jnp.zeros((), out.dtype))
