"""`lowrank`: the low-rank baseline, Performer (FAVOR+) random features."""

from flax import nnx

from anna_jax import registry
from anna_jax.attention import RandomFeatures
from anna_jax.baselines import LowRankConfig, draw_random_features, lowrank_attention


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
