"""`full_blockwise`: exact softmax attention block by block with an online softmax, O(n) memory."""

from flax import nnx

from anna_jax import registry
from anna_jax.attention import softmax_flops
from anna_jax.baselines import BlockwiseConfig, full_blockwise_attention


class BlockwiseAttention(nnx.Module):
  def __init__(self, config: BlockwiseConfig, num_heads=None, head_dim=None, *, rngs=None):
    self.config = config

  def __call__(self, q, k, v, mask=None, causal=False):
    return full_blockwise_attention(q, k, v, mask=mask, causal=causal, block=self.config.block), {}


registry.register(registry.Kind(
    name='full_blockwise', config=BlockwiseConfig, build=BlockwiseAttention, exact=True, judged=True,
    flops=softmax_flops, summary='full attention block by block with an online softmax: O(n) memory',
    setting=lambda c: f'block={c.block}', benchmark_settings=lambda n, s: BlockwiseConfig(block=s.block)))
