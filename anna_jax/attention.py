"""What every attention kind shares: `AttentionConfig` (the kind and one settings section per registered kind), the
non-trained state of the hashing and random-feature kinds, and `make_attention`. The kinds themselves live one file
each in anna_jax/kinds/ (the built-in ones: full, full_blockwise, unit_softmax, anna, anna_softmax, reformer,
lowrank, local), each registering itself (`anna_jax.registry`).

Every core maps q, k, v of shape (batch, n, heads, head_dim), a (batch, n) padding mask (True = real
token) and a causal flag to (output of the same shape, stats dict of scalars).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from anna_jax import registry
from anna_jax.anna import ANNAConfig, draw_projections
from anna_jax.sequence_parallel import SEQUENCE_AXIS


class AttentionConfig:
  """The kind, and one section of settings per registered kind, named like the kind (only the chosen kind's is
  read): AttentionConfig(kind='anna', anna=ANNAConfig(num_tables=8)); sections not given are their defaults.
  Frozen and hashable, like the dataclasses it holds; `replace` makes a changed copy."""

  __slots__ = ('kind', '_sections')

  def __init__(self, kind='full', **sections):
    registry.get(kind)  # ValueError naming the registered kinds
    unknown = sorted(set(sections) - set(registry.names()))
    if unknown:
      raise ValueError(f'attention has no kind {unknown[0]!r}; registered kinds: {registry.names()}')
    filled = {}
    for spec in registry.kinds():
      value = sections.get(spec.name, spec.config())
      if not isinstance(value, spec.config):
        raise TypeError(f'attention section {spec.name!r} must be a {spec.config.__name__}, '
                        f'got {type(value).__name__}')
      filled[spec.name] = value
    object.__setattr__(self, 'kind', kind)
    object.__setattr__(self, '_sections', filled)

  def __getattr__(self, name):  # a kind's section: config.anna
    try:
      return object.__getattribute__(self, '_sections')[name]
    except KeyError:
      raise AttributeError(f'AttentionConfig has no field or kind {name!r}') from None

  def __setattr__(self, name, value):
    raise dataclasses.FrozenInstanceError(f'cannot assign to field {name!r}')

  def _key(self):
    return self.kind, tuple(sorted(self._sections.items()))

  def __eq__(self, other):
    return isinstance(other, AttentionConfig) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def __repr__(self):
    return f'AttentionConfig(kind={self.kind!r}, {self.kind}={self.settings!r})'

  def __reduce__(self):  # copy and pickle through the constructor (the instance is frozen)
    return _attention_config, (self.kind, self._sections)

  def replace(self, **changes):
    """A copy with `kind` and / or sections replaced."""
    return AttentionConfig(**{'kind': self.kind, **self._sections, **changes})

  @property
  def settings(self):
    """The chosen kind's section."""
    return self._sections[self.kind]


def _attention_config(kind, sections):
  return AttentionConfig(kind, **sections)


class HashProjections(nnx.Variable):
  """Hash functions of ANNA, anna_softmax and Reformer: state that is checkpointed but never trained."""


class HashDraws(nnx.Variable):
  """Seed and call count of resampled hash projections (plain integers, so checkpoints stay portable)."""


class RandomFeatures(nnx.Variable):
  """The low-rank baseline's random feature directions: checkpointed, never trained."""


class HashFunctions(nnx.Module):
  """A layer's hash functions, drawn by `draw(key)`: fixed (checkpointed, never trained) or, with `resample`,
  redrawn on every call from fold_in(seed, call): a stream of its own."""

  def __init__(self, draw, resample, *, rngs):
    self.draw, self.resample = draw, resample
    self.projections = HashProjections(draw(rngs.params()))
    if resample:
      self.hash_seed = HashDraws(jax.random.key_data(rngs.params()))
      self.hash_calls = HashDraws(jnp.zeros((), jnp.uint32))

  def __call__(self):
    if not self.resample:
      return self.projections[...]
    key = jax.random.fold_in(jax.random.wrap_key_data(self.hash_seed[...]), self.hash_calls[...])
    self.hash_calls[...] = self.hash_calls[...] + 1
    return self.draw(key)


def sequence_mesh():
  """The mesh set by `jax.set_mesh` when it splits sequences (an axis SEQUENCE_AXIS of size > 1), else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if SEQUENCE_AXIS in mesh.axis_names and mesh.shape[SEQUENCE_AXIS] > 1:
    return mesh
  return None


def softmax_flops(settings, n, d, attended_pairs=None):
  return 4.0 * n * n * d  # q.k and p.v


def hashing_flops(settings, n, d):
  return 4.0 * n * d * settings.num_hashes * settings.num_tables  # hashing q and k: z hashes per table


class HashingAttention(nnx.Module):
  """What `anna` and `anna_softmax` share: the layer's hash functions (ANNA's LSH family)."""

  def __init__(self, config: ANNAConfig, num_heads, head_dim, *, rngs):
    self.config = config
    draw = functools.partial(draw_projections, num_heads=num_heads, head_dim=head_dim, config=config)
    self.hashes = HashFunctions(draw, config.resample_hashes, rngs=rngs)


def make_attention(config: AttentionConfig, num_heads, head_dim, *, rngs):
  """The attention core of `config.kind`, built from that kind's section."""
  return registry.get(config.kind).build(config.settings, num_heads, head_dim, rngs=rngs)
