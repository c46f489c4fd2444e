"""Attention cores behind one interface, chosen by AttentionConfig.kind; the built-in kinds, each registered
(`anna_jax.registry`) beside its module.

Every core maps q, k, v of shape (batch, n, heads, head_dim), a (batch, n) padding mask (True = real
token) and a causal flag to (output of the same shape, stats dict of scalars).

| kind         | what                                                              | paper's?            |
| full         | softmax(q.k / sqrt(d)) (jax.nn.dot_product_attention)             | baseline            |
| full_blockwise | the same, block by block with an online softmax: O(n) memory    | baseline            |
| unit_softmax | softmax(beta * q.k) over unit-norm q, k                           | the training surrogate |
| anna         | Algorithm 1: bucket sums / counts over l tables (no gradient to q, k) | ANNA itself      |
| anna_softmax | softmax over ANNA's collision set, sorted windows (drops overflow) | ours, trainable     |
| lowrank      | Performer (FAVOR+) random features                                | baseline            |
| reformer     | Reformer LSH attention: shared QK, sorted chunks + previous chunk | baseline            |
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from anna_jax import checks, collision_gradient, oracle, plans, registry
from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.anna_softmax import ANNASoftmaxConfig, anna_softmax_attention
from anna_jax.baselines import (BlockwiseConfig, FullConfig, LowRankConfig, UnitSoftmaxConfig, draw_random_features,
                                full_attention, full_blockwise_attention, lowrank_attention, unit_norm,
                                unit_softmax_attention)
from anna_jax.reformer import ReformerConfig, draw_rotations, reformer_attention
from anna_jax.sequence_parallel import SEQUENCE_AXIS, sequence_parallel_anna, sequence_parallel_anna_softmax

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


# --- exact softmax: the baselines ----------------------------------------------------------------------------


class FullAttention(nnx.Module):
  def __init__(self, config: FullConfig, num_heads=None, head_dim=None, *, rngs=None):
    self.config = config

  def __call__(self, q, k, v, mask=None, causal=False):
    return full_attention(q, k, v, mask=mask, causal=causal, implementation=self.config.implementation), {}


registry.register(registry.Kind(
    name='full', config=FullConfig, build=FullAttention, exact=True, loop_free=True, flops=softmax_flops,
    summary='softmax(q.k / sqrt(d)) (jax.nn.dot_product_attention)', setting=lambda c: c.implementation,
    theory='depth O(log k): k solved can double per layer (Sanford et al.)'))


class BlockwiseAttention(nnx.Module):
  def __init__(self, config: BlockwiseConfig, num_heads=None, head_dim=None, *, rngs=None):
    self.config = config

  def __call__(self, q, k, v, mask=None, causal=False):
    return full_blockwise_attention(q, k, v, mask=mask, causal=causal, block=self.config.block), {}


registry.register(registry.Kind(
    name='full_blockwise', config=BlockwiseConfig, build=BlockwiseAttention, exact=True, judged=True,
    flops=softmax_flops, summary='full attention block by block with an online softmax: O(n) memory',
    setting=lambda c: f'block={c.block}', benchmark_settings=lambda n, s: BlockwiseConfig(block=s.block)))


class UnitSoftmaxAttention(nnx.Module):
  def __init__(self, config: UnitSoftmaxConfig, num_heads=None, head_dim=None, *, rngs=None):
    self.config = config

  def __call__(self, q, k, v, mask=None, causal=False):
    return unit_softmax_attention(q, k, v, beta=self.config.beta, mask=mask, causal=causal,
                                  collision_hashes=self.config.collision_hashes), {}


registry.register(registry.Kind(
    name='unit_softmax', config=UnitSoftmaxConfig, build=UnitSoftmaxAttention, benchmarked=False,
    flops=softmax_flops, summary="softmax(beta * q.k) over unit-norm q, k: the paper's training surrogate",
    setting=lambda c: f'beta={c.beta:g}' + (f' collision z={c.collision_hashes}' if c.collision_hashes else ''),
    theory='as full attention (a softmax attention over unit-norm q, k)'))


# --- ANNA: Algorithm 1 and our trainable sibling ----------------------------------------------------------------


def with_kernel_gradient(out, q, k, v, hashes, mask, causal):
  """`out` (Algorithm 1's output) in the forward; in the backward, q and k also get the gradient of the collision
  kernel with `hashes` hashes per table (ANNAConfig.straight_through): the unit_softmax surrogate with
  collision_hashes. v is held fixed in the kernel, so its gradient stays Algorithm 1's own. The kernel is O(n^2)
  and needs every key: a sequence split over devices is gathered for it (a training aid for short sequences)."""
  whole = [None if x is None else checks.replicated(x) for x in (q, k, jax.lax.stop_gradient(v), mask)]
  kernel = unit_softmax_attention(*whole[:3], beta=1.0, mask=whole[3], causal=causal, collision_hashes=hashes)
  kernel = checks.laid_out_like(kernel.astype(out.dtype), out)
  return out + (kernel - jax.lax.stop_gradient(kernel))  # exactly `out` forward


class HashingAttention(nnx.Module):
  """What `anna` and `anna_softmax` share: the layer's hash functions (ANNA's LSH family)."""

  def __init__(self, config: ANNAConfig, num_heads, head_dim, *, rngs):
    self.config = config
    draw = functools.partial(draw_projections, num_heads=num_heads, head_dim=head_dim, config=config)
    self.hashes = HashFunctions(draw, config.resample_hashes, rngs=rngs)


class ANNAAttention(HashingAttention):
  """Algorithm 1; sequence-parallel (`anna_jax.sequence_parallel`) under a mesh that splits sequences. Other
  kinds under such a mesh are partitioned by XLA as it sees fit."""

  def __call__(self, q, k, v, mask=None, causal=False):
    projections = self.hashes()
    # Hash the unit-normalised q and k, as the unit_softmax surrogate sees them (angular LSH is
    # scale-invariant, so this only makes the correspondence explicit).
    q, k = unit_norm(q), unit_norm(k)
    counts = None
    if mesh := sequence_mesh():
      out, stats = sequence_parallel_anna(q, k, v, projections, self.config, mesh, mask=mask, causal=causal)
    else:
      out, stats = anna_attention(q, k, v, projections, self.config, mask=mask, causal=causal)
      stats, counts = stats._asdict(), stats.counts
    if self.config.straight_through and self.config.straight_through_pairs == 'colliding' and counts is not None:
      valid = jnp.ones(q.shape[:2]) if mask is None else mask.astype(jnp.float32)
      out = collision_gradient.straight_through(
          out, q, k, jax.lax.stop_gradient(v), counts.astype(jnp.float32), projections, valid, causal,
          self.config.straight_through_tables, self.config.straight_through_window,
          plans.resolve(self.config.loop_plan, 'anna straight-through'))
    elif self.config.straight_through:  # the dense kernel, on one device and sequence-parallel alike
      out = with_kernel_gradient(out, q, k, v, self.config.num_hashes, mask, causal)
    return out, {name: stats[name] for name in ('no_collision_fraction', 'mean_collisions')}


def anna_hashes(n, s):
  """The benchmark's anna: z = log2(n / 32), buckets of about 32 keys (or Settings.anna_hashes)."""
  return s.anna_hashes or max(1, round(math.log2(max(n / 32, 2))))


registry.register(registry.Kind(
    name='anna', config=ANNAConfig, build=ANNAAttention, stats=('no_collision_fraction', 'mean_collisions'),
    summary='Algorithm 1: bucket sums / counts over l tables (no gradient to q, k)',
    setting=lambda c: f'l={c.num_tables} z={c.num_hashes}',
    # hashing, then a scatter-add and a gather per table
    flops=lambda c, n, d, attended_pairs=None: hashing_flops(c, n, d) + 2.0 * n * d * c.num_tables,
    benchmark_settings=lambda n, s: ANNAConfig(num_tables=s.num_tables, num_hashes=anna_hashes(n, s)),
    theory='depth O(log k) (Theorem 5.6): as full attention'))


class ANNASoftmaxAttention(HashingAttention):
  """Softmax over ANNA's collision set; sequence-parallel under a mesh that splits sequences."""

  def __call__(self, q, k, v, mask=None, causal=False):
    projections = self.hashes()
    if mesh := sequence_mesh():
      out, stats = sequence_parallel_anna_softmax(q, k, v, projections, self.config, mesh, mask=mask, causal=causal)
      return out, {'dropped_fraction': stats['dropped_fraction']}
    out, stats = anna_softmax_attention(q, k, v, projections, self.config, mask=mask, causal=causal)
    # attended_pairs: (query, key, table) collisions inside the windows, the pairs the kernels score
    return out, {'dropped_fraction': stats.dropped_fraction, 'attended_pairs': stats.collisions - stats.dropped}


def anna_softmax_hashes(n, s):
  """The benchmark's anna_softmax: buckets of about 8 keys, never past the int32 sort key limit."""
  if s.num_hashes:
    return s.num_hashes
  n_pad = -(-n // s.chunk_size) * s.chunk_size
  z = max(1, round(math.log2(max(n / 8, 2))))
  while (2**z + 1) * n_pad >= 2**31:
    z -= 1
  return z


def anna_softmax_flops(c, n, d, attended_pairs=None):
  """Hashing, then q.k and p.v over the pairs scored: the (query, key, table) collisions inside the windows,
  counted in a run (`attended_pairs`, per row); without it the windows' bound n W l, which counts window slots
  that hold no collision (at 1K that bound came to 134% of the measured matmul peak)."""
  pairs = n * c.window * c.num_tables if attended_pairs is None else attended_pairs
  return hashing_flops(c, n, d) + 4.0 * d * pairs


def collision_allowed(module, positions, q, k, causal):
  """The pairs anna_softmax may attend: those colliding in some table."""
  return oracle.collision_counts(q, k, module.hashes.projections[...], module.config.family, causal=causal,
                                 positions=positions) > 0


registry.register(registry.Kind(
    name='anna_softmax', config=ANNASoftmaxConfig, build=ANNASoftmaxAttention, stats=('dropped_fraction',),
    summary="softmax over ANNA's collision set, sorted windows (drops overflow): ours, trainable",
    setting=lambda c: f'l={c.num_tables} z={c.num_hashes} chunk={c.chunk_size} window={c.window}',
    flops=anna_softmax_flops, judged=True, allowed=collision_allowed,
    benchmark_settings=lambda n, s: ANNASoftmaxConfig(
        num_tables=s.num_tables, num_hashes=anna_softmax_hashes(n, s), chunk_size=s.chunk_size, window=s.window,
        dense_up_to=s.dense_up_to),
    theory='no theorem; ANNA-like sparsity, so O(log k) is the hope'))


# --- the other sub-quadratic baselines ------------------------------------------------------------------------


class ReformerAttention(nnx.Module):
  def __init__(self, config: ReformerConfig, num_heads, head_dim, *, rngs):
    self.config = config
    draw = functools.partial(draw_rotations, num_heads=num_heads, head_dim=head_dim, config=config)
    self.hashes = HashFunctions(draw, config.resample_hashes, rngs=rngs)

  def __call__(self, q, k, v, mask=None, causal=False):
    out, stats = reformer_attention(q, k, v, self.hashes(), self.config, mask=mask, causal=causal)
    return out, {'dropped_fraction': stats.dropped_fraction}


def reformer_benchmark_settings(n, s):
  """Buckets = n / chunk: a mean bucket of one chunk, as in the Reformer paper."""
  buckets = max(2, 2 * round(n / s.reformer_chunk / 2))
  return ReformerConfig(num_rounds=s.reformer_rounds, num_buckets=buckets, chunk_size=s.reformer_chunk)


registry.register(registry.Kind(
    name='reformer', config=ReformerConfig, build=ReformerAttention, stats=('dropped_fraction',),
    summary='Reformer LSH attention: shared QK, sorted chunks + previous chunk',
    setting=lambda c: f'rounds={c.num_rounds} buckets={c.num_buckets} chunk={c.chunk_size}',
    # hashing (B / 2 rotations a round), then chunks of c against 2c keys
    flops=lambda c, n, d, attended_pairs=None: (2.0 * n * d * c.num_buckets / 2 * c.num_rounds
                                                + 8.0 * n * c.chunk_size * d * c.num_rounds),
    judged=True, benchmark_settings=reformer_benchmark_settings,
    allowed=lambda module, positions, q, k, causal: oracle.reformer_allowed(
        q, module.hashes.projections[...], positions, causal=causal),
    reference_keys=lambda q, k: unit_norm(q),  # shared QK: the keys are the queries
    theory='O(1) bucket size needs Omega(log N) layers (Appendix E)'))


class LowRankAttention(nnx.Module):
  def __init__(self, config: LowRankConfig, num_heads, head_dim, *, rngs):
    self.config = config
    self.features = RandomFeatures(draw_random_features(rngs.params(), num_heads, head_dim, config.num_features))

  def __call__(self, q, k, v, mask=None, causal=False):
    return lowrank_attention(q, k, v, self.features[...], mask=mask, causal=causal), {}


registry.register(registry.Kind(
    name='lowrank', config=LowRankConfig, build=LowRankAttention, loop_free=True, judged=True,
    summary='Performer (FAVOR+) random features', setting=lambda c: f'features={c.num_features}',
    # features of q and k, k^T v, q (k^T v)
    flops=lambda c, n, d, attended_pairs=None: 8.0 * n * c.num_features * d,
    benchmark_settings=lambda n, s: LowRankConfig(num_features=s.lowrank_features),
    theory='depth Omega(k) unless width Omega(N / k^6) (Sanford et al.)'))


def make_attention(config: AttentionConfig, num_heads, head_dim, *, rngs):
  """The attention core of `config.kind`, built from that kind's section."""
  return registry.get(config.kind).build(config.settings, num_heads, head_dim, rngs=rngs)
