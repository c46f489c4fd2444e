"""anna-jax: ANNA (Approximate Nearest Neighbor Attention) and its baselines in JAX/Flax."""

from anna_jax.anna import ANNAConfig, ANNAStats, anna_attention, draw_projections
from anna_jax.anna_softmax import ANNASoftmaxConfig, anna_softmax_attention
from anna_jax.attention import AttentionConfig, make_attention
from anna_jax.baselines import full_attention, full_blockwise_attention, lowrank_attention, unit_softmax_attention
from anna_jax.lsh import hash_codes
from anna_jax.model import Transformer, TransformerConfig
from anna_jax.reformer import ReformerConfig, reformer_attention
from anna_jax.registry import Kind, register
from anna_jax.registry import names as kind_names
import anna_jax.kinds  # noqa: E402,F401 -- registers every kind in anna_jax/kinds/

__all__ = ['ANNAConfig', 'ANNAStats', 'anna_attention', 'draw_projections', 'ANNASoftmaxConfig',
           'anna_softmax_attention', 'kind_names', 'AttentionConfig', 'make_attention', 'Kind', 'register',
           'full_attention',
           'full_blockwise_attention', 'lowrank_attention', 'ReformerConfig', 'reformer_attention',
           'unit_softmax_attention', 'hash_codes', 'Transformer', 'TransformerConfig']
