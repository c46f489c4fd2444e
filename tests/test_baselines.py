"""full_blockwise and Reformer against dense references; loop plans by backend; the accelerator structure."""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from anna_jax import cpu_kernel
from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.anna_softmax import ANNASoftmaxConfig, anna_softmax_attention
from anna_jax.baselines import (causal_linear, full_attention, full_blockwise_attention, unit_norm,
                                unit_softmax_attention)
from anna_jax.lsh import hash_codes
from anna_jax.reformer import ReformerConfig, draw_rotations, reformer_attention


def qkv(n, batch=2, heads=2, dim=8, seed=0, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, (batch, n, heads, dim), dtype) for key in keys)


def padding_mask(n, valid_lengths):
  return jnp.arange(n)[None, :] < jnp.asarray(valid_lengths)[:, None]


@pytest.mark.parametrize('causal, masked', [(False, False), (True, False), (False, True), (True, True)])
def test_full_blockwise_equals_full_outputs_and_gradients(causal, masked):
  n = 100  # not a multiple of the block: padding exercised
  q, k, v = qkv(n)
  mask = padding_mask(n, [100, 37]) if masked else None
  blockwise = lambda q, k, v: full_blockwise_attention(q, k, v, mask=mask, causal=causal, block=16)
  full = lambda q, k, v: full_attention(q, k, v, mask=mask, causal=causal)
  np.testing.assert_allclose(blockwise(q, k, v), full(q, k, v), atol=2e-6)
  probe = jax.random.normal(jax.random.key(3), q.shape)
  grads = jax.grad(lambda *x: jnp.sum(blockwise(*x) * probe), argnums=(0, 1, 2))(q, k, v)
  expected = jax.grad(lambda *x: jnp.sum(full(*x) * probe), argnums=(0, 1, 2))(q, k, v)
  for g, e in zip(grads, expected):
    np.testing.assert_allclose(g, e, atol=2e-5)


def test_full_blockwise_bfloat16_accumulates_in_float32():
  q, k, v = qkv(256, dtype=jnp.bfloat16)
  out = full_blockwise_attention(q, k, v, causal=True, block=32)
  assert out.dtype == jnp.bfloat16
  exact = full_attention(*(x.astype(jnp.float32) for x in (q, k, v)), causal=True)
  np.testing.assert_allclose(out.astype(jnp.float32), exact, atol=3e-2)  # bf16 output rounding only


def reformer_dense(q, v, rotations, *, causal, mask=None):
  """One chunk holding every token: each token attends to all (allowed) others, itself only when alone."""
  n, d = q.shape[1], q.shape[-1]
  keys = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, keys) / math.sqrt(d)
  allowed = jnp.ones((n, n), bool)
  if causal:
    allowed &= jnp.tril(jnp.ones((n, n), bool))
  if mask is not None:
    allowed = allowed & mask[:, None, None, :]
  scores = jnp.where(jnp.eye(n, dtype=bool), -1e5, scores)
  scores = jnp.where(allowed, scores, -1e9)
  out = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, axis=-1), v)
  return out if mask is None else out * mask[:, :, None, None]


@pytest.mark.parametrize('causal, masked', [(False, False), (True, True)])
def test_reformer_with_one_chunk_is_dense_shared_qk_attention(causal, masked):
  n = 32
  q, k, v = qkv(n)
  mask = padding_mask(n, [32, 20]) if masked else None
  for rounds in (1, 3):  # every round sees every key, so merging rounds changes nothing
    config = ReformerConfig(num_rounds=rounds, num_buckets=4, chunk_size=n)
    rotations = draw_rotations(jax.random.key(1), 2, 8, config)
    out, stats = reformer_attention(q, k, v, rotations, config, mask=mask, causal=causal)
    np.testing.assert_allclose(out, reformer_dense(q, v, rotations, causal=causal, mask=mask), atol=2e-5)
    assert float(stats.dropped_fraction) == 0.0 and float(stats.collisions) > 0


@pytest.mark.parametrize('causal', [False, True])
def test_reformer_with_several_chunks_equals_a_dense_reference_of_its_pairs(causal):
  # 5 chunks of 8, 3 rounds: per round, sort by (bucket, position), a chunk sees itself and the chunk before it
  # (the first: the last), a token itself only when alone; rounds merged by their log-sum-exp. Plain numpy.
  n, chunk, rounds = 40, 8, 3
  config = ReformerConfig(num_rounds=rounds, num_buckets=4, chunk_size=chunk)
  q, k, v = qkv(n, seed=5)
  rotations = draw_rotations(jax.random.key(2), 2, 8, config)
  out, stats = reformer_attention(q, k, v, rotations, config, causal=causal)
  assert float(stats.dropped_fraction) > 0  # same-bucket pairs beyond the chunk window exist
  codes = np.asarray(hash_codes(q, rotations, 'crosspolytope'))  # (batch, heads, rounds, n)
  keys = np.asarray(q / jnp.linalg.norm(q, axis=-1, keepdims=True))
  expected = np.zeros(out.shape)
  position = np.arange(n)
  for b in range(2):
    for h in range(2):
      scores = np.asarray(q[b, :, h]) @ keys[b, :, h].T / np.sqrt(8)
      np.fill_diagonal(scores, -1e5)
      lse, outs = [], []
      for r in range(rounds):
        chunk_of = np.empty(n, int)
        chunk_of[np.argsort(codes[b, h, r] * n + position, kind='stable')] = position // chunk
        seen = (chunk_of[None, :] == chunk_of[:, None]) | (chunk_of[None, :] == (chunk_of[:, None] - 1) % (n // chunk))
        if causal:
          seen &= position[None, :] <= position[:, None]
        s_r = np.where(seen, scores, -np.inf)
        top = s_r.max(-1, keepdims=True)
        w = np.exp(s_r - top)
        lse.append(top[:, 0] + np.log(w.sum(-1)))
        outs.append(w @ np.asarray(v[b, :, h]) / w.sum(-1, keepdims=True))
      share = np.exp(np.array(lse) - np.logaddexp.reduce(np.array(lse), axis=0))  # (rounds, n)
      expected[b, :, h] = np.einsum('rn,rnd->nd', share, np.array(outs))
  np.testing.assert_allclose(out, expected, atol=2e-5)


def test_reformer_small_chunks_drop_same_bucket_pairs_and_keep_causality():
  n, cut = 128, 50
  q, k, v = qkv(n)
  config = ReformerConfig(num_rounds=2, num_buckets=2, chunk_size=8)  # buckets of ~64 tokens, windows of 16
  rotations = draw_rotations(jax.random.key(2), 2, 8, config)
  out, stats = reformer_attention(q, k, v, rotations, config, causal=True)
  assert 0.5 < float(stats.dropped_fraction) < 1.0
  future = qkv(n, seed=9)
  changed = [jnp.where(jnp.arange(n)[None, :, None, None] > cut, f, x) for x, f in zip((q, k, v), future)]
  # Future tokens may move earlier tokens between chunks (as in Reformer), but never put a future value into
  # an earlier output: with future VALUES alone changed, earlier outputs are identical.
  only_v = reformer_attention(q, k, changed[2], rotations, config, causal=True)[0]
  np.testing.assert_allclose(only_v[:, : cut + 1], out[:, : cut + 1], atol=1e-6)


PLANS = [  # 'dense': anna_softmax's dense layout of the same windows (padded length <= dense_up_to)
    ('anna_softmax', lambda plan: ANNASoftmaxConfig(num_tables=3, num_hashes=2, chunk_size=8, window=16,
                                                    loop_plan='cpu_xla' if plan == 'dense' else plan,
                                                    dense_up_to=64 if plan == 'dense' else 0)),
    ('reformer', lambda plan: ReformerConfig(num_rounds=3, num_buckets=8, chunk_size=8, loop_plan=plan)),
]


@pytest.mark.parametrize('kind, make_config', PLANS)
@pytest.mark.parametrize('causal', [False, True])
def test_cpu_and_accelerator_loop_plans_agree(kind, make_config, causal, monkeypatch):
  q, k, v = qkv(61)  # not a multiple of the chunk: the sorted layouts pad, the dense one need not
  mask = padding_mask(61, [61, 45])

  def attend(plan, q, k, v):
    # 'cpu_kernel' is anna_softmax's C++ kernel (reformer has none: its XLA loops); 'cpu_xla' the XLA loops.
    config = make_config(plan)
    if kind == 'reformer':
      out, stats = reformer_attention(q, k, v, draw_rotations(jax.random.key(0), 2, 8, config), config,
                                      mask=mask, causal=causal)
    else:
      out, stats = anna_softmax_attention(q, k, v, draw_projections(jax.random.key(0), 2, 8, config), config,
                                          mask=mask, causal=causal)
    return out, stats.dropped

  def outputs_and_grads(plan):  # one compiled call per layout
    def loss(q, v):
      out, dropped = attend(plan, q, k, v)
      return jnp.sum(jnp.sin(out)), (out, dropped)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(q, v)

  (_, (cpu, dropped)), cpu_grads = outputs_and_grads('cpu_kernel' if cpu_kernel.available() else 'cpu_xla')
  assert float(dropped) > 0  # windows overflow: every layout must place the same windows
  for plan in ('accelerator', 'dense', 'cpu_xla') if kind == 'anna_softmax' else ('accelerator',):
    (_, (out, dropped_too)), grads = outputs_and_grads(plan)
    np.testing.assert_allclose(out, cpu, atol=1e-6)
    assert float(dropped) == float(dropped_too)
    for a, b in zip(grads, cpu_grads):
      np.testing.assert_allclose(a, b, atol=1e-5)


def exported_loops(fn, n=65536):
  x = jax.ShapeDtypeStruct((1, n, 8, 64), jnp.bfloat16)
  module = export.export(jax.jit(fn), platforms=['cuda'])(x, x, x).mlir_module()
  return len(re.findall(r'stablehlo\.while', module)), module


def test_accelerator_plans_export_for_cuda_with_one_loop_over_tables():
  # On this CPU-only machine: export each hashing kind's forward at n = 64K for CUDA and check its structure:
  # the only loop is the scan over tables (rounds); heads and chunks are batched into large kernels.
  hashing = ANNASoftmaxConfig(num_tables=8, num_hashes=11, chunk_size=64, window=64, loop_plan='accelerator')
  projections = draw_projections(jax.random.key(0), 8, 64, hashing)
  reformer = ReformerConfig(num_rounds=8, num_buckets=1024, chunk_size=64, loop_plan='accelerator')
  rotations = draw_rotations(jax.random.key(0), 8, 64, reformer)
  kinds = {
      'anna': lambda q, k, v: anna_attention(q, k, v, projections, hashing)[0],
      'anna causal': lambda q, k, v: anna_attention(q, k, v, projections, hashing, causal=True)[0],
      'anna_softmax': lambda q, k, v: anna_softmax_attention(q, k, v, projections, hashing)[0],
      'reformer': lambda q, k, v: reformer_attention(q, k, v, rotations, reformer)[0],
  }
  for name, fn in kinds.items():
    loops, module = exported_loops(fn)
    assert loops == 1, (name, loops)
    assert 'bf16' in module and 'f32' in module  # bfloat16 inputs, float32 accumulation
  cpu_plan = dataclasses.replace(hashing, loop_plan='cpu_xla')  # the XLA loops, as 'auto' runs without a compiler
  loops, _ = exported_loops(lambda q, k, v: anna_softmax_attention(q, k, v, projections, cpu_plan)[0])
  assert loops > 1  # the CPU plan's cache-sized loops: the check above can fail


@pytest.mark.parametrize('kind', ['anna', 'anna_softmax', 'reformer'])
def test_bfloat16_inputs_give_bfloat16_outputs_close_to_float32(kind):
  q, k, v = qkv(64)
  hashing = ANNASoftmaxConfig(num_tables=4, num_hashes=2, chunk_size=16, window=64)
  projections = draw_projections(jax.random.key(0), 2, 8, hashing)
  reformer = ReformerConfig(num_rounds=2, num_buckets=4, chunk_size=32)
  rotations = draw_rotations(jax.random.key(0), 2, 8, reformer)
  attend = {
      'anna': lambda q, k, v: anna_attention(q, k, v, projections, ANNAConfig(num_tables=4, num_hashes=2))[0],
      'anna_softmax': lambda q, k, v: anna_softmax_attention(q, k, v, projections, hashing)[0],
      'reformer': lambda q, k, v: reformer_attention(q, k, v, rotations, reformer)[0],
  }[kind]
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  out = attend(*low)
  assert out.dtype == jnp.bfloat16
  # The same bf16-rounded inputs in float32: only the output rounding and bf16 products may differ.
  reference = attend(*(x.astype(jnp.float32) for x in low))
  np.testing.assert_allclose(out.astype(jnp.float32), reference, atol=5e-2)


def test_blockwise_causal_linear_attention_equals_the_masked_product():
  # Several blocks, a length that is not a multiple of the block: the prefix states between blocks and the
  # masked product inside them must give exactly sum_{j <= i} phi_q(i).phi_k(j) v_j and its normaliser.
  phi_q, phi_k = (jnp.exp(x[..., :6]) for x in qkv(21, dim=6, seed=3)[:2])
  v = qkv(21, seed=4)[2]
  weights = jnp.einsum('bqhm,bkhm->bhqk', phi_q, phi_k) * jnp.tril(jnp.ones((21, 21)))
  out, norm = causal_linear(phi_q, phi_k, v, block=8)
  np.testing.assert_allclose(out, jnp.einsum('bhqk,bkhd->bqhd', weights, v), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(norm, jnp.sum(weights, -1).transpose(0, 2, 1), rtol=1e-5)


@pytest.mark.parametrize('causal', [False, True])
def test_collision_kernel_is_what_algorithm_1_tends_to_as_its_tables_grow(causal):
  # E[c_ij] = l p_ij^z: with many tables anna's weights c_ij / sum c_ij' approach p^z / sum p^z; with few they
  # do not (the check can fail).
  q, k, v = (unit_norm(x) for x in qkv(24, batch=1, heads=1, dim=8, seed=3))
  kernel = unit_softmax_attention(q, k, v, beta=1.0, collision_hashes=3, causal=causal)
  errors = {}
  for tables in (2, 20_000):
    config = ANNAConfig(num_tables=tables, num_hashes=3)
    out, _ = anna_attention(q, k, v, draw_projections(jax.random.key(1), 1, 8, config), config, causal=causal)
    errors[tables] = float(jnp.max(jnp.abs(out - kernel)))
  assert errors[20_000] < 0.03 < errors[2], errors
