import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from anna_jax import ANNAConfig, ANNASoftmaxConfig, AttentionConfig, Transformer, TransformerConfig
from anna_jax.baselines import UnitSoftmaxConfig

HASHING = ANNAConfig(num_tables=2, num_hashes=2)
ANNA = AttentionConfig(kind='anna', anna=HASHING)
ANNA_SOFTMAX = AttentionConfig(kind='anna_softmax', anna_softmax=ANNASoftmaxConfig(num_tables=2, num_hashes=2,
                                                                                  chunk_size=8, window=16))


def config(**overrides):
  base = TransformerConfig(vocab_size=10, num_classes=3, max_len=32, depth=2, width=16, num_heads=2)
  return dataclasses.replace(base, **overrides)


@pytest.mark.parametrize('attention, positional', [
    (AttentionConfig(kind='full'), 'learned'), (ANNA_SOFTMAX, 'sinusoidal'), (ANNA, 'learned'),
    (AttentionConfig(kind='unit_softmax', unit_softmax=UnitSoftmaxConfig(beta=10.0)), 'learned'), (AttentionConfig(kind='lowrank'), 'learned')])
def test_forward_and_gradients(attention, positional):
  model = Transformer(config(attention=attention, positional=positional, causal=True), rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 20), 0, 10)
  # One compiled call each (eager dispatch compiles every op on its own: 25 s for this test before)
  logits, stats = nnx.jit(lambda m, t, mask: m(t, mask))(model, tokens, jnp.arange(20)[None, :] < jnp.array([[20], [13]]))
  assert logits.shape == (2, 20, 3) and bool(jnp.all(jnp.isfinite(logits)))
  assert ('dropped_fraction' in stats) == (attention.kind == 'anna_softmax')
  assert ('no_collision_fraction' in stats) == (attention.kind == 'anna')

  def loss(model):
    return jnp.mean(model(tokens)[0] ** 2)

  grads = nnx.jit(nnx.grad(loss))(model)
  leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)


def test_value_gain_starts_as_the_plain_model_scales_values_by_position_and_learns():
  tokens = jax.random.randint(jax.random.key(1), (2, 20), 0, 10)
  plain = Transformer(config(causal=True), rngs=nnx.Rngs(0))
  gained = Transformer(config(causal=True, value_gain=True), rngs=nnx.Rngs(0))
  logits = nnx.jit(lambda m, t: m(t)[0])
  np.testing.assert_array_equal(logits(plain, tokens), logits(gained, tokens))  # gain 0 at init: nothing moves
  attention = gained.blocks[0].attention
  attention.value_log_gain[...] = jnp.broadcast_to(0.1 * jnp.arange(32.0)[:, None], (32, 2))
  x = jax.random.normal(jax.random.key(2), (2, 20, 16))
  v_plain, v_gained = plain.blocks[0].attention.heads(x)[2], attention.heads(x)[2]
  np.testing.assert_allclose(v_gained, v_plain * jnp.exp(0.1 * jnp.arange(20.0))[None, :, None, None], rtol=1e-5)
  grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m(tokens)[0] ** 2)))(gained)
  assert float(jnp.abs(grads.blocks[1].attention.value_log_gain[...][:20]).sum()) > 0
  assert float(jnp.abs(grads.blocks[1].attention.value_log_gain[...][20:]).sum()) == 0  # positions never seen


def test_same_seed_same_model_and_hash_projections_are_not_trained():
  a = Transformer(config(attention=ANNA), rngs=nnx.Rngs(3))
  b = Transformer(config(attention=ANNA), rngs=nnx.Rngs(3))
  for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
    np.testing.assert_array_equal(x, y)
  params = nnx.state(a, nnx.Param)
  assert not any('projections' in str(path) for path, _ in nnx.to_flat_state(params))


def test_resampled_hashes_change_between_calls_fixed_ones_do_not():
  tokens = jax.random.randint(jax.random.key(1), (1, 32), 0, 10)
  resampling = ANNA.replace(anna=dataclasses.replace(ANNA.anna, resample_hashes=True))
  for attention, should_change in ((ANNA, False), (resampling, True)):
    model = Transformer(config(attention=attention), rngs=nnx.Rngs(0))
    first, second = model(tokens)[0], model(tokens)[0]
    assert bool(jnp.any(first != second)) == should_change


def test_full_attention_weights_load_into_anna_model():
  # The paper's recipe: train with softmax attention, evaluate with ANNA swapped in.
  full = Transformer(config(), rngs=nnx.Rngs(0))
  anna = Transformer(config(attention=ANNA), rngs=nnx.Rngs(1))
  nnx.update(anna, nnx.state(full, nnx.Param))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 10)
  wide = ANNA_SOFTMAX.replace(anna_softmax=ANNASoftmaxConfig(num_tables=1, num_hashes=0, chunk_size=8, window=16))
  exact = Transformer(config(attention=wide), rngs=nnx.Rngs(2))
  nnx.update(exact, nnx.state(full, nnx.Param))
  np.testing.assert_allclose(exact(tokens)[0], full(tokens)[0], atol=1e-5)
  assert anna(tokens)[0].shape == (2, 16, 3)


@pytest.mark.parametrize('overrides, message', [
    (lambda: dict(width=10, num_heads=3), 'divisible'),
    (lambda: dict(depth=0), 'depth'),
    (lambda: dict(attention=AttentionConfig(kind='sparse')), 'attention kind'),
    (lambda: dict(positional='rope'), 'positional'),
    (lambda: dict(attention=AttentionConfig(kind='anna', anna=ANNAConfig(num_tables=0))), 'num_tables'),
])
def test_bad_config_is_a_clear_error(overrides, message):
  with pytest.raises(ValueError, match=message):  # configs validate when made: a bad one never reaches a model
    Transformer(config(**overrides()), rngs=nnx.Rngs(0))


def test_unit_softmax_is_softmax_of_beta_times_cosine():
  from anna_jax.baselines import unit_softmax_attention
  q, k, v = (jax.random.normal(key, (2, 12, 2, 8)) for key in jax.random.split(jax.random.key(0), 3))
  for beta, causal in ((0.1, False), (10.0, True)):
    cos = jnp.einsum('bqhd,bkhd->bhqk', q / jnp.linalg.norm(q, axis=-1, keepdims=True),
                     k / jnp.linalg.norm(k, axis=-1, keepdims=True))
    scores = jnp.where(jnp.tril(jnp.ones((12, 12), bool)) | (not causal), beta * cos, -jnp.inf)
    expected = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, axis=-1), v)
    np.testing.assert_allclose(unit_softmax_attention(q, k, v, beta=beta, causal=causal), expected, atol=1e-5)
    # Only directions matter: the surrogate sees what angular LSH sees.
    np.testing.assert_allclose(unit_softmax_attention(3 * q, 0.2 * k, v, beta=beta, causal=causal), expected,
                               atol=1e-5)


def test_per_layer_attention_and_surrogate_weights_load_into_anna():
  surrogate = Transformer(config(attention=AttentionConfig(kind='unit_softmax', unit_softmax=UnitSoftmaxConfig(beta=1.0))), rngs=nnx.Rngs(0))
  layers = tuple(ANNA.replace(anna=dataclasses.replace(HASHING, num_tables=t)) for t in (6, 2))
  anna = Transformer(config(layer_attention=layers), rngs=nnx.Rngs(1))
  assert [b.attention.core.hashes.projections[...].shape[1] for b in anna.blocks] == [6, 2]
  nnx.update(anna, nnx.state(surrogate, nnx.Param))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 10)
  logits, stats = anna(tokens)
  assert logits.shape == (2, 16, 3) and 0.0 <= float(stats['no_collision_fraction']) <= 1.0
  with pytest.raises(ValueError, match='layer_attention'):
    Transformer(config(layer_attention=layers[:1]), rngs=nnx.Rngs(0))


def test_default_attention_config_holds_every_registered_kind():
  # The default was once built when model.py was imported, before anna_jax/kinds/ registered `local`.
  from anna_jax import registry
  config = TransformerConfig(vocab_size=4, num_classes=2, max_len=8)
  assert config.attention == AttentionConfig()
  assert config.attention.local == registry.get('local').config()
