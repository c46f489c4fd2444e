"""`local`: sliding-window softmax attention, each query over the `window` keys before it (and, not causal, the
`window` after it). The README's worked example of adding a kind: a settings dataclass, an nnx module, one
registration."""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from anna_jax import registry


@dataclasses.dataclass(frozen=True)
class LocalConfig:
  window: int = 16  # keys on each side of a query (causal: before it only)

  def __post_init__(self):
    if self.window < 0:
      raise ValueError(f'local.window must be >= 0, got {self.window}')


class LocalAttention(nnx.Module):
  def __init__(self, config: LocalConfig, num_heads, head_dim, *, rngs):
    self.config = config

  def __call__(self, q, k, v, mask=None, causal=False):
    w = self.config.window
    key_mask = None if mask is None else mask[:, None, None, :]  # (batch, heads, queries, keys)
    out = jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=causal,
                                       local_window_size=(w, 0 if causal else w))
    return out, {}


def local_pairs(window, positions, shape, causal):
  """(batch, heads, positions, n) bool: the keys within `window` of each sampled query (and not after it, causal)."""
  batch, n, heads, _ = shape
  offset = jnp.arange(n)[None, :] - positions[:, None]
  allowed = (offset >= -window) & (offset <= (0 if causal else window))
  return jnp.broadcast_to(allowed, (batch, heads, positions.shape[0], n))


registry.register(registry.Kind(
    name='local', config=LocalConfig, build=LocalAttention,
    summary='softmax over the window keys on either side of each query (causal: before it)',
    setting=lambda c: f'window={c.window}', judged=True,
    benchmarked=False,  # an example, not one of the paper's comparisons: measure it with --kinds=local
    flops=lambda c, n, d, attended_pairs=None: 4.0 * n * (2 * c.window + 1) * d,
    allowed=lambda module, positions, q, k, causal: local_pairs(module.config.window, positions, q.shape, causal)))
