"""`anna_softmax`: ours, a trainable sibling of ANNA: softmax over ANNA's collision set by sorted windows
(anna_jax/anna_softmax.py), sequence-parallel under a mesh that splits sequences."""

import math

from anna_jax import oracle, registry
from anna_jax.anna_softmax import ANNASoftmaxConfig, anna_softmax_attention
from anna_jax.attention import HashingAttention, hashing_flops, sequence_mesh
from anna_jax.sequence_parallel import sequence_parallel_anna_softmax


class ANNASoftmaxAttention(HashingAttention):
  """Softmax over ANNA's collision set; sequence-parallel under a mesh that splits sequences."""

  def __call__(self, q, k, v, mask=None, causal=False):
    projections = self.hashes()
    if mesh := sequence_mesh():
      out, stats = sequence_parallel_anna_softmax(q, k, v, projections, self.config, mesh, mask=mask, causal=causal)
      return out, {'dropped_fraction': stats['dropped_fraction']}
    out, stats = anna_softmax_attention(q, k, v, projections, self.config, mask=mask, causal=causal)
    # attended_pairs: (query, key, table) collisions inside the windows, the pairs the kernels score
    return out, {'dropped_fraction': stats.dropped_fraction, 'attended_pairs': stats.collisions - stats.dropped}


def anna_softmax_hashes(n, s):
  """The benchmark's anna_softmax: buckets of about 8 keys, never past the int32 sort key limit."""
  if s.num_hashes:
    return s.num_hashes
  n_pad = -(-n // s.chunk_size) * s.chunk_size
  z = max(1, round(math.log2(max(n / 8, 2))))
  while (2**z + 1) * n_pad >= 2**31:
    z -= 1
  return z


def anna_softmax_flops(c, n, d, attended_pairs=None):
  """Hashing, then q.k and p.v over the pairs scored: the (query, key, table) collisions inside the windows,
  counted in a run (`attended_pairs`, per row); without it the windows' bound n W l, which counts window slots
  that hold no collision (at 1K that bound came to 134% of the measured matmul peak)."""
  pairs = n * c.window * c.num_tables if attended_pairs is None else attended_pairs
  return hashing_flops(c, n, d) + 4.0 * d * pairs


def collision_allowed(module, positions, q, k, causal):
  """The pairs anna_softmax may attend: those colliding in some table."""
  return oracle.collision_counts(q, k, module.hashes.projections[...], module.config.family, causal=causal,
                                 positions=positions) > 0


registry.register(registry.Kind(
    name='anna_softmax', config=ANNASoftmaxConfig, build=ANNASoftmaxAttention, stats=('dropped_fraction',),
    summary="softmax over ANNA's collision set, sorted windows (drops overflow): ours, trainable",
    setting=lambda c: f'l={c.num_tables} z={c.num_hashes} chunk={c.chunk_size} window={c.window}',
    flops=anna_softmax_flops, judged=True, allowed=collision_allowed,
    benchmark_settings=lambda n, s: ANNASoftmaxConfig(
        num_tables=s.num_tables, num_hashes=anna_softmax_hashes(n, s), chunk_size=s.chunk_size, window=s.window,
        dense_up_to=s.dense_up_to),
    theory='no theorem; ANNA-like sparsity, so O(log k) is the hope'))
