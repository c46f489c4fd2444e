"""A pre-LayerNorm transformer encoder whose attention core is a config choice, with a per-token head."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from anna_jax.attention import AttentionConfig, make_attention


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab_size: int  # input tokens 0..vocab_size-1
  num_classes: int  # per-token output classes
  max_len: int  # longest input, for the positional encoding
  depth: int = 2  # transformer blocks
  width: int = 128  # residual stream width
  num_heads: int = 4
  mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * width
  positional: str = 'learned'  # 'learned', 'sinusoidal' or 'none' (for order-free tasks such as Match2)
  causal: bool = False  # token i sees only tokens j <= i
  # Built per config, not once at import: model.py is imported before anna_jax/kinds/ registers its kinds, and an
  # AttentionConfig holds a section for every kind registered when it is made.
  attention: AttentionConfig = dataclasses.field(default_factory=AttentionConfig)
  # Per-layer attention overriding `attention` (empty: every layer uses `attention`); e.g. ANNA with more
  # tables in layer 1 than in layer 2, as in the paper's induction-heads grid.
  layer_attention: tuple = ()
  # A learned log-gain per position and head on the attention values, v_q * exp(g_q), 0 at init (not in the
  # paper). Algorithm 1 weighs keys by collision counts alone, so angles are its only way to prefer recent keys,
  # and at z = 2 they barely can (experiments/induction_circuit.py); a value gain that grows with q lets any
  # averaging attention prefer them, and the swap from a surrogate keeps it, since values pass through unchanged.
  value_gain: bool = False

  def attention_of(self, layer):
    return self.layer_attention[layer] if self.layer_attention else self.attention

  def __post_init__(self):  # a config that exists is valid (its attention sections validated themselves)
    if self.depth < 1 or self.width < 1 or self.num_heads < 1:
      raise ValueError(f'depth, width and num_heads must be >= 1, got {self.depth}, {self.width}, {self.num_heads}')
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} is not divisible by num_heads {self.num_heads}')
    if self.positional not in ('learned', 'sinusoidal', 'none'):
      raise ValueError(f"positional must be 'learned', 'sinusoidal' or 'none', got {self.positional!r}")
    if self.layer_attention and len(self.layer_attention) != self.depth:
      raise ValueError(f'layer_attention has {len(self.layer_attention)} entries for depth {self.depth}')


def sinusoidal_encoding(max_len, width):
  pos = np.arange(max_len)[:, None]
  freq = np.exp(-np.log(10000.0) * np.arange(0, width, 2) / width)
  enc = np.zeros((max_len, width), np.float32)
  enc[:, 0::2] = np.sin(pos * freq)
  enc[:, 1::2] = np.cos(pos * freq)[:, : width // 2]
  return jnp.asarray(enc)


class MultiHeadAttention(nnx.Module):
  def __init__(self, config: TransformerConfig, attention: AttentionConfig, *, rngs):
    self.num_heads = config.num_heads
    self.head_dim = config.width // config.num_heads
    self.qkv = nnx.Linear(config.width, 3 * config.width, rngs=rngs)
    self.out = nnx.Linear(config.width, config.width, rngs=rngs)
    self.core = make_attention(attention, self.num_heads, self.head_dim, rngs=rngs)
    self.value_log_gain = nnx.Param(jnp.zeros((config.max_len, self.num_heads))) if config.value_gain else None

  def heads(self, x):
    """(q, k, v), each (batch, n, heads, head_dim), of the (normalised) residual stream x."""
    batch, n, _ = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(batch, n, 3 * self.num_heads, self.head_dim), 3, axis=2)
    if self.value_log_gain is not None:
      v = v * jnp.exp(self.value_log_gain[...][:n])[None, :, :, None].astype(v.dtype)
    return q, k, v

  def __call__(self, x, mask, causal):
    batch, n, _ = x.shape
    q, k, v = self.heads(x)
    y, stats = self.core(q, k, v, mask=mask, causal=causal)
    return self.out(y.reshape(batch, n, -1)), stats


class Block(nnx.Module):
  def __init__(self, config: TransformerConfig, attention: AttentionConfig, *, rngs):
    self.norm1 = nnx.LayerNorm(config.width, rngs=rngs)
    self.attention = MultiHeadAttention(config, attention, rngs=rngs)
    self.norm2 = nnx.LayerNorm(config.width, rngs=rngs)
    self.mlp_in = nnx.Linear(config.width, config.mlp_ratio * config.width, rngs=rngs)
    self.mlp_out = nnx.Linear(config.mlp_ratio * config.width, config.width, rngs=rngs)

  def __call__(self, x, mask, causal):
    y, stats = self.attention(self.norm1(x), mask, causal)
    x = x + y
    return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.norm2(x)))), stats


class Transformer(nnx.Module):
  """tokens (batch, n) int -> (logits (batch, n, num_classes), stats averaged over layers)."""

  def __init__(self, config: TransformerConfig, *, rngs):
    self.config = config
    self.embed = nnx.Embed(config.vocab_size, config.width, rngs=rngs)
    if config.positional == 'learned':
      self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (config.max_len, config.width)))
    elif config.positional == 'sinusoidal':
      self.position = nnx.Variable(sinusoidal_encoding(config.max_len, config.width))
    else:
      self.position = nnx.Variable(jnp.zeros((config.max_len, config.width)))
    self.blocks = nnx.List([Block(config, config.attention_of(layer), rngs=rngs) for layer in range(config.depth)])
    self.norm = nnx.LayerNorm(config.width, rngs=rngs)
    self.head = nnx.Linear(config.width, config.num_classes, rngs=rngs)

  def __call__(self, tokens, mask=None, attention_inputs=None):
    """attention_inputs: a list that receives each layer's (q, k, v) (for diagnostics), or None."""
    n = tokens.shape[1]
    if n > self.config.max_len:
      raise ValueError(f'sequence length {n} exceeds max_len {self.config.max_len}')
    if mask is None:
      mask = jnp.ones(tokens.shape, bool)
    x = self.embed(tokens) + self.position[...][:n]
    layer_stats = []
    for block in self.blocks:
      if attention_inputs is not None:
        attention_inputs.append(block.attention.heads(block.norm1(x)))
      x, stats = block(x, mask, self.config.causal)
      layer_stats.append(stats)
    names = {name for s in layer_stats for name in s}
    stats = {name: jnp.mean(jnp.stack([s[name] for s in layer_stats if name in s])) for name in names}
    return self.head(self.norm(x)), stats
