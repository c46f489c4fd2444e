"""`full`: exact softmax attention, softmax(q.k / sqrt(d)) (jax.nn.dot_product_attention): the baseline."""

from flax import nnx

from anna_jax import registry
from anna_jax.attention import softmax_flops
from anna_jax.baselines import FullConfig, full_attention


class FullAttention(nnx.Module):
  def __init__(self, config: FullConfig, num_heads=None, head_dim=None, *, rngs=None):
    self.config = config

  def __call__(self, q, k, v, mask=None, causal=False):
    return full_attention(q, k, v, mask=mask, causal=causal, implementation=self.config.implementation), {}


registry.register(registry.Kind(
    name='full', config=FullConfig, build=FullAttention, exact=True, loop_free=True, flops=softmax_flops,
    summary='softmax(q.k / sqrt(d)) (jax.nn.dot_product_attention)', setting=lambda c: c.implementation,
    theory='depth O(log k): k solved can double per layer (Sanford et al.)'))
