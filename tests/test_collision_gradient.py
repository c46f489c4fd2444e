"""Straight-through anna's 'colliding' gradient (anna_jax.collision_gradient): its dense definition, its limit
(the dense collision kernel's gradient), its plans, and the module that trains with it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from anna_jax import plans
from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.attention import AttentionConfig, make_attention
from anna_jax.baselines import unit_norm
from anna_jax.collision_gradient import colliding_gradient
from anna_jax.oracle import colliding_gradient_reference


def unit_qkvg(n, batch=2, heads=2, dim=8, seed=0):
  q, k, v, g = (jax.random.normal(key, (batch, n, heads, dim)) for key in jax.random.split(jax.random.key(seed), 4))
  return unit_norm(q), unit_norm(k), v, g


def sampled(q, k, v, g, projections, mask, causal, tables=0, window=1024, path='cpu_xla', dense_up_to=0):
  """The 'colliding' gradient; dense_up_to=0: the sorted layout (long rows'), else the dense one."""
  valid = jnp.ones(q.shape[:2], bool) if mask is None else mask
  out, stats = anna_attention(q, k, v, projections, ANNAConfig(num_tables=projections.shape[1],
                                                               num_hashes=projections.shape[-1]),
                              mask=mask, causal=causal)
  return jax.jit(lambda *a: colliding_gradient(*a, causal=causal, tables=tables, window=window,
                                               plan=plans.Plan(path), dense_up_to=dense_up_to))(q, k, v, out, stats.counts, g, projections,
                                                                       valid)


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('tables', [0, 3])
@pytest.mark.parametrize('dense_up_to', [0, 512])
def test_colliding_gradient_is_its_dense_definition_when_windows_hold_every_bucket(causal, tables, dense_up_to):
  q, k, v, g = unit_qkvg(40)
  mask = jnp.arange(40)[None, :] < jnp.asarray([40, 31])[:, None]
  projections = draw_projections(jax.random.key(1), 2, 8, ANNAConfig(num_tables=5, num_hashes=2))
  dq, dk = sampled(q, k, v, g, projections, mask, causal, tables=tables, dense_up_to=dense_up_to)
  want_dq, want_dk = colliding_gradient_reference(q, k, v, g, projections, tables=tables, mask=mask, causal=causal)
  assert float(jnp.max(jnp.abs(want_dq))) > 1e-2 and float(jnp.max(jnp.abs(want_dk))) > 1e-2
  np.testing.assert_allclose(dq, want_dq, atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(dk, want_dk, atol=2e-5, rtol=1e-4)
  assert not np.any(np.asarray(dq)[1, 31:]) and not np.any(np.asarray(dk)[1, 31:])  # padding gets nothing


@pytest.mark.parametrize('causal', [True, False])
def test_colliding_gradient_layouts_and_plans_agree_where_narrow_windows_leave_pairs_out(causal):
  q, k, v, g = unit_qkvg(130, batch=1)
  projections = draw_projections(jax.random.key(2), 2, 8, ANNAConfig(num_tables=4, num_hashes=1))
  wide = sampled(q, k, v, g, projections, None, causal)
  narrow = [sampled(q, k, v, g, projections, None, causal, window=8, path=path, dense_up_to=dense)
            for path, dense in (('cpu_xla', 0), ('accelerator', 0), ('cpu_xla', 512))]
  for other in narrow[1:]:  # the sorted layout on both plans, and the dense layout: the same pairs
    np.testing.assert_allclose(other[0], narrow[0][0], atol=1e-5)
    np.testing.assert_allclose(other[1], narrow[0][1], atol=1e-5)
  # Buckets of about 65 keys: a window of 8 drops most pairs, so the gradient changes (and stays finite).
  assert np.all(np.isfinite(narrow[0][0])) and not np.allclose(narrow[0][0], wide[0], atol=1e-3)


def test_colliding_gradient_tends_to_the_dense_kernels_as_tables_grow():
  q, k, v, g = unit_qkvg(10, batch=1, heads=1)

  def kernel_gradient(q, k):  # the dense collision kernel's (z = 2), straight_through_pairs='all'
    from anna_jax.baselines import collision_kernel_attention
    return jnp.sum(collision_kernel_attention(q, k, v, 2, None, True) * g)

  want = jax.grad(kernel_gradient, argnums=(0, 1))(q, k)
  errors = []
  for tables in (16, 4096):
    projections = draw_projections(jax.random.key(3), 1, 8, ANNAConfig(num_tables=tables, num_hashes=2))
    got = sampled(q, k, v, g, projections, None, True)
    errors.append(max(float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) for a, b in zip(got, want)))
  assert errors[1] < 0.1 and errors[1] < errors[0] / 3, errors


def test_straight_through_module_with_colliding_pairs_runs_algorithm_1_forward_and_trains_q_and_k():
  q, k, v = (jax.random.normal(key, (1, 24, 2, 8)) for key in jax.random.split(jax.random.key(4), 3))
  mask = jnp.arange(24)[None, :] < 20
  config = ANNAConfig(num_tables=1024, num_hashes=2, straight_through=True)
  modules = {pairs: make_attention(AttentionConfig(kind='anna', anna=dataclasses.replace(
      config, straight_through_pairs=pairs)), 2, 8, rngs=nnx.Rngs(0)) for pairs in ('all', 'colliding')}
  probe = jax.random.normal(jax.random.key(5), q.shape)
  outputs, grads = {}, {}
  for pairs, module in modules.items():
    outputs[pairs] = jax.jit(lambda q, k, v: module(q, k, v, mask=mask, causal=True)[0])(q, k, v)
    grads[pairs] = jax.jit(jax.grad(lambda q, k, v: jnp.sum(module(q, k, v, mask=mask, causal=True)[0] * probe),
                                    argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_array_equal(outputs['all'], outputs['colliding'])  # Algorithm 1 forward either way
  np.testing.assert_allclose(grads['colliding'][2], grads['all'][2], atol=1e-6)  # v: Algorithm 1's own gradient
  for got, want in zip(grads['colliding'][:2], grads['all'][:2]):  # q, k: close to the kernel's at 1,024 tables
    assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 0.2
  assert not np.any(np.asarray(grads['colliding'][0])[:, 20:])


def test_straight_through_pairs_are_checked():
  with pytest.raises(ValueError, match='straight_through_pairs'):
    ANNAConfig(straight_through_pairs='some')
  with pytest.raises(ValueError, match='straight_through_tables'):
    ANNAConfig(num_tables=4, straight_through_tables=5)
