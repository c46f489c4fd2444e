"""`unit_softmax`: softmax(beta * q.k) over unit-norm q, k, the paper's training surrogate for ANNA (or, with
collision_hashes, the collision kernel Algorithm 1 tends to)."""

from flax import nnx

from anna_jax import registry
from anna_jax.attention import softmax_flops
from anna_jax.baselines import UnitSoftmaxConfig, unit_softmax_attention


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
