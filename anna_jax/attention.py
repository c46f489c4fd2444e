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
    # Resampling draws from a stream of its own, so it never disturbs the parameter rng.
    self.hash_rngs = nnx.Rngs(hash=rngs.params()) if config.resample_hashes else None

  def __call__(self, q, k, v, mask=None, causal=False):
    if self.hash_rngs is not None:
      projections = draw_projections(self.hash_rngs.hash(), self.num_heads, self.head_dim, self.config)
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
