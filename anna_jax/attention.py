"""Attention cores behind one interface, chosen by AttentionConfig.kind.

Every core maps q, k, v of shape (batch, n, heads, head_dim), a (batch, n) padding mask (True = real
token) and a causal flag to (output of the same shape, stats dict of scalars).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.baselines import draw_random_features, full_attention, lowrank_attention

KINDS = ('full', 'anna', 'lowrank')


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  kind: str = 'full'  # one of KINDS
  anna: ANNAConfig = ANNAConfig()
  lowrank_features: int = 64  # random features of the low-rank (Performer) baseline

  def validate(self):
    if self.kind not in KINDS:
      raise ValueError(f'attention kind must be one of {KINDS}, got {self.kind!r}')
    if self.kind == 'anna':
      self.anna.validate()
    if self.lowrank_features < 1:
      raise ValueError(f'lowrank_features must be >= 1, got {self.lowrank_features}')


class HashProjections(nnx.Variable):
  """ANNA's random hyperplanes: state that is checkpointed but never trained."""


class HashDraws(nnx.Variable):
  """Seed and call count of resampled hash projections (plain integers, so checkpoints stay portable)."""


class RandomFeatures(nnx.Variable):
  """The low-rank baseline's random feature directions: checkpointed, never trained."""


class FullAttention(nnx.Module):
  def __init__(self, num_heads, head_dim, *, rngs):
    del num_heads, head_dim, rngs

  def __call__(self, q, k, v, mask=None, causal=False):
    return full_attention(q, k, v, mask=mask, causal=causal), {}


class ANNAAttention(nnx.Module):
  def __init__(self, config: ANNAConfig, num_heads, head_dim, *, rngs):
    config.validate()
    self.config = config
    self.num_heads, self.head_dim = num_heads, head_dim
    self.projections = HashProjections(draw_projections(rngs.params(), num_heads, head_dim, config))
    if config.resample_hashes:  # call t draws its projections from fold_in(seed, t): a stream of its own
      self.hash_seed = HashDraws(jax.random.key_data(rngs.params()))
      self.hash_calls = HashDraws(jnp.zeros((), jnp.uint32))

  def __call__(self, q, k, v, mask=None, causal=False):
    if self.config.resample_hashes:
      key = jax.random.fold_in(jax.random.wrap_key_data(self.hash_seed[...]), self.hash_calls[...])
      self.hash_calls[...] = self.hash_calls[...] + 1
      projections = draw_projections(key, self.num_heads, self.head_dim, self.config)
    else:
      projections = self.projections[...]
    out, stats = anna_attention(q, k, v, projections, self.config, mask=mask, causal=causal)
    return out, {'dropped_fraction': stats.dropped_fraction}


class LowRankAttention(nnx.Module):
  def __init__(self, num_features, num_heads, head_dim, *, rngs):
    self.features = RandomFeatures(draw_random_features(rngs.params(), num_heads, head_dim, num_features))

  def __call__(self, q, k, v, mask=None, causal=False):
    return lowrank_attention(q, k, v, self.features[...], mask=mask, causal=causal), {}


def make_attention(config: AttentionConfig, num_heads, head_dim, *, rngs):
  config.validate()
  if config.kind == 'anna':
    return ANNAAttention(config.anna, num_heads, head_dim, rngs=rngs)
  if config.kind == 'lowrank':
    return LowRankAttention(config.lowrank_features, num_heads, head_dim, rngs=rngs)
  return FullAttention(num_heads, head_dim, rngs=rngs)
