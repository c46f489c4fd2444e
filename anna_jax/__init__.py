"""anna-jax: ANNA (Approximate Nearest Neighbor Attention) and its baselines in JAX/Flax."""

from anna_jax.anna import ANNAConfig, ANNAStats, anna_attention, draw_projections, hash_buckets
from anna_jax.attention import KINDS, AttentionConfig, make_attention
from anna_jax.baselines import full_attention, lowrank_attention
from anna_jax.model import Transformer, TransformerConfig

__all__ = ['ANNAConfig', 'ANNAStats', 'anna_attention', 'draw_projections', 'hash_buckets', 'KINDS',
           'AttentionConfig', 'make_attention', 'full_attention', 'lowrank_attention', 'Transformer',
           'TransformerConfig']
