"""`anna`: the paper's ANNA, Algorithm 1 (anna_jax/anna.py): bucket sums and counts over l hash tables; its
straight-through training aid (ANNAConfig.straight_through) and its sequence-parallel path under a mesh that splits
sequences."""

import math

import jax
import jax.numpy as jnp

from anna_jax import checks, collision_gradient, plans, registry
from anna_jax.anna import ANNAConfig, anna_attention
from anna_jax.attention import HashingAttention, hashing_flops, sequence_mesh
from anna_jax.baselines import unit_norm, unit_softmax_attention
from anna_jax.sequence_parallel import sequence_parallel_anna


def with_kernel_gradient(out, q, k, v, hashes, mask, causal):
  """`out` (Algorithm 1's output) in the forward; in the backward, q and k also get the gradient of the collision
  kernel with `hashes` hashes per table (ANNAConfig.straight_through): the unit_softmax surrogate with
  collision_hashes. v is held fixed in the kernel, so its gradient stays Algorithm 1's own. The kernel is O(n^2)
  and needs every key: a sequence split over devices is gathered for it (a training aid for short sequences)."""
  whole = [None if x is None else checks.replicated(x) for x in (q, k, jax.lax.stop_gradient(v), mask)]
  kernel = unit_softmax_attention(*whole[:3], beta=1.0, mask=whole[3], causal=causal, collision_hashes=hashes)
  kernel = checks.laid_out_like(kernel.astype(out.dtype), out)
  return out + (kernel - jax.lax.stop_gradient(kernel))  # exactly `out` forward


class ANNAAttention(HashingAttention):
  """Algorithm 1; sequence-parallel (`anna_jax.sequence_parallel`) under a mesh that splits sequences. Other
  kinds under such a mesh are partitioned by XLA as it sees fit."""

  def __call__(self, q, k, v, mask=None, causal=False):
    projections = self.hashes()
    # Hash the unit-normalised q and k, as the unit_softmax surrogate sees them (angular LSH is
    # scale-invariant, so this only makes the correspondence explicit).
    q, k = unit_norm(q), unit_norm(k)
    counts = None
    if mesh := sequence_mesh():
      out, stats = sequence_parallel_anna(q, k, v, projections, self.config, mesh, mask=mask, causal=causal)
    else:
      out, stats = anna_attention(q, k, v, projections, self.config, mask=mask, causal=causal)
      stats, counts = stats._asdict(), stats.counts
    if self.config.straight_through and self.config.straight_through_pairs == 'colliding' and counts is not None:
      valid = jnp.ones(q.shape[:2]) if mask is None else mask.astype(jnp.float32)
      out = collision_gradient.straight_through(
          out, q, k, jax.lax.stop_gradient(v), counts.astype(jnp.float32), projections, valid, causal,
          self.config.straight_through_tables, self.config.straight_through_window,
          plans.resolve(self.config.loop_plan, 'anna straight-through', self.config.tuning))
    elif self.config.straight_through:  # the dense kernel, on one device and sequence-parallel alike
      out = with_kernel_gradient(out, q, k, v, self.config.num_hashes, mask, causal)
    return out, {name: stats[name] for name in ('no_collision_fraction', 'mean_collisions')}


def anna_hashes(n, s):
  """The benchmark's anna: z = log2(n / 32), buckets of about 32 keys (or Settings.anna_hashes)."""
  return s.anna_hashes or max(1, round(math.log2(max(n / 32, 2))))


registry.register(registry.Kind(
    name='anna', config=ANNAConfig, build=ANNAAttention, stats=('no_collision_fraction', 'mean_collisions'),
    summary='Algorithm 1: bucket sums / counts over l tables (no gradient to q, k)',
    setting=lambda c: f'l={c.num_tables} z={c.num_hashes}',
    # hashing, then a scatter-add and a gather per table
    flops=lambda c, n, d, attended_pairs=None: hashing_flops(c, n, d) + 2.0 * n * d * c.num_tables,
    benchmark_settings=lambda n, s: ANNAConfig(num_tables=s.num_tables, num_hashes=anna_hashes(n, s)),
    theory='depth O(log k) (Theorem 5.6): as full attention'))
