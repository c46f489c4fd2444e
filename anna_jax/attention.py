"""Attention cores behind one interface, chosen by AttentionConfig.kind: the one registry of kinds.

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

import jax
import jax.numpy as jnp
from flax import nnx

from anna_jax import checks
from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.anna_softmax import ANNASoftmaxConfig, anna_softmax_attention
from anna_jax.baselines import (BlockwiseConfig, FullConfig, LowRankConfig, UnitSoftmaxConfig, draw_random_features,
                                full_attention, full_blockwise_attention, lowrank_attention, unit_norm,
                                unit_softmax_attention)
from anna_jax.reformer import ReformerConfig, draw_rotations, reformer_attention
from anna_jax.sequence_parallel import SEQUENCE_AXIS, sequence_parallel_anna, sequence_parallel_anna_softmax

KINDS = ('full', 'full_blockwise', 'unit_softmax', 'anna', 'anna_softmax', 'lowrank', 'reformer')
HASHING_KINDS = ('anna', 'anna_softmax')


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """The kind, and one section of settings per kind, named like the kind (only the chosen kind's is read)."""
  kind: str = 'full'  # one of KINDS
  full: FullConfig = FullConfig()
  full_blockwise: BlockwiseConfig = BlockwiseConfig()
  unit_softmax: UnitSoftmaxConfig = UnitSoftmaxConfig()
  anna: ANNAConfig = ANNAConfig()
  anna_softmax: ANNASoftmaxConfig = ANNASoftmaxConfig()
  lowrank: LowRankConfig = LowRankConfig()
  reformer: ReformerConfig = ReformerConfig()

  def __post_init__(self):  # each section validated itself when it was made
    if self.kind not in KINDS:
      raise ValueError(f'attention kind must be one of {KINDS}, got {self.kind!r}')

  @property
  def settings(self):
    """The chosen kind's section."""
    return getattr(self, self.kind)


class HashProjections(nnx.Variable):
  """Hash functions of ANNA, anna_softmax and Reformer: state that is checkpointed but never trained."""


class HashDraws(nnx.Variable):
  """Seed and call count of resampled hash projections (plain integers, so checkpoints stay portable)."""


class RandomFeatures(nnx.Variable):
  """The low-rank baseline's random feature directions: checkpointed, never trained."""


class FullAttention(nnx.Module):
  def __init__(self, config: FullConfig):
    self.config = config

  def __call__(self, q, k, v, mask=None, causal=False):
    return full_attention(q, k, v, mask=mask, causal=causal, implementation=self.config.implementation), {}


class BlockwiseAttention(nnx.Module):
  def __init__(self, config: BlockwiseConfig):
    self.config = config

  def __call__(self, q, k, v, mask=None, causal=False):
    return full_blockwise_attention(q, k, v, mask=mask, causal=causal, block=self.config.block), {}


class UnitSoftmaxAttention(nnx.Module):
  def __init__(self, config: UnitSoftmaxConfig):
    self.config = config

  def __call__(self, q, k, v, mask=None, causal=False):
    return unit_softmax_attention(q, k, v, beta=self.config.beta, mask=mask, causal=causal,
                                  collision_hashes=self.config.collision_hashes), {}


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
  """`anna` (Algorithm 1) or `anna_softmax`; sequence-parallel (`anna_jax.sequence_parallel`) under a mesh
  that splits sequences. Other kinds under such a mesh are partitioned by XLA as it sees fit."""

  def __init__(self, kind, config: ANNAConfig, num_heads, head_dim, *, rngs):
    self.kind, self.config = kind, config
    draw = functools.partial(draw_projections, num_heads=num_heads, head_dim=head_dim, config=config)
    self.hashes = HashFunctions(draw, config.resample_hashes, rngs=rngs)

  def __call__(self, q, k, v, mask=None, causal=False):
    projections = self.hashes()
    if self.kind == 'anna':
      # Hash the unit-normalised q and k, as the unit_softmax surrogate sees them (angular LSH is
      # scale-invariant, so this only makes the correspondence explicit).
      q, k = unit_norm(q), unit_norm(k)
      if mesh := sequence_mesh():
        out, stats = sequence_parallel_anna(q, k, v, projections, self.config, mesh, mask=mask, causal=causal)
        stats = {name: stats[name] for name in ('no_collision_fraction', 'mean_collisions')}
      else:
        out, stats = anna_attention(q, k, v, projections, self.config, mask=mask, causal=causal)
        stats = stats._asdict()
      if self.config.straight_through:  # on one device and sequence-parallel alike
        out = with_kernel_gradient(out, q, k, v, self.config.num_hashes, mask, causal)
      return out, stats
    if mesh := sequence_mesh():
      out, stats = sequence_parallel_anna_softmax(q, k, v, projections, self.config, mesh, mask=mask, causal=causal)
      return out, {'dropped_fraction': stats['dropped_fraction']}
    out, stats = anna_softmax_attention(q, k, v, projections, self.config, mask=mask, causal=causal)
    # attended_pairs: (query, key, table) collisions inside the windows, the pairs the kernels score
    return out, {'dropped_fraction': stats.dropped_fraction, 'attended_pairs': stats.collisions - stats.dropped}


class ReformerAttention(nnx.Module):
  def __init__(self, config: ReformerConfig, num_heads, head_dim, *, rngs):
    self.config = config
    draw = functools.partial(draw_rotations, num_heads=num_heads, head_dim=head_dim, config=config)
    self.hashes = HashFunctions(draw, config.resample_hashes, rngs=rngs)

  def __call__(self, q, k, v, mask=None, causal=False):
    out, stats = reformer_attention(q, k, v, self.hashes(), self.config, mask=mask, causal=causal)
    return out, {'dropped_fraction': stats.dropped_fraction}


class LowRankAttention(nnx.Module):
  def __init__(self, config: LowRankConfig, num_heads, head_dim, *, rngs):
    self.config = config
    self.features = RandomFeatures(draw_random_features(rngs.params(), num_heads, head_dim, config.num_features))

  def __call__(self, q, k, v, mask=None, causal=False):
    return lowrank_attention(q, k, v, self.features[...], mask=mask, causal=causal), {}


def make_attention(config: AttentionConfig, num_heads, head_dim, *, rngs):
  """The attention core of `config.kind`, built from that kind's section."""
  settings = config.settings
  if config.kind in HASHING_KINDS:
    return HashingAttention(config.kind, settings, num_heads, head_dim, rngs=rngs)
  if config.kind == 'reformer':
    return ReformerAttention(settings, num_heads, head_dim, rngs=rngs)
  if config.kind == 'lowrank':
    return LowRankAttention(settings, num_heads, head_dim, rngs=rngs)
  return {'full': FullAttention, 'full_blockwise': BlockwiseAttention, 'unit_softmax': UnitSoftmaxAttention}[
      config.kind](settings)
