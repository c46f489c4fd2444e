"""One registration per attention kind: a toy kind registered here reaches the config, the runner and the
benchmark with nothing else edited; the `local` kind (anna_jax/kinds/local.py) is the README's worked example."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import anna_jax
from anna_jax import registry
from benchmarks import kinds as benchmark_kinds, measure
from experiments import experiment, khop_table, train
from experiments.configs import default


@dataclasses.dataclass(frozen=True)
class UniformConfig:
  scale: float = 1.0  # output = scale * the mean of the values of every allowed key


class UniformAttention(nnx.Module):
  def __init__(self, config, num_heads, head_dim, *, rngs):
    self.config = config

  def __call__(self, q, k, v, mask=None, causal=False):
    n = q.shape[1]
    allowed = jnp.tril(jnp.ones((n, n), bool)) if causal else jnp.ones((n, n), bool)
    if mask is not None:
      allowed = allowed[None] & mask[:, None, :]
    weights = allowed / jnp.maximum(allowed.sum(-1, keepdims=True), 1)
    out = jnp.einsum('...ij,bjhd->bihd', weights.astype(v.dtype), v) * self.config.scale
    return out, {'toy_stat': jnp.float32(1.0)}


@pytest.fixture
def toy_kind():
  kind = registry.register(registry.Kind(
      name='toy_uniform', config=UniformConfig, build=UniformAttention, summary='the mean of the allowed values',
      stats=('toy_stat',), setting=lambda c: f'scale={c.scale}',
      flops=lambda c, n, d, attended_pairs=None: 2.0 * n * n * d,
      theory='no position information: k = 0 at best'))
  yield kind
  registry.unregister(kind.name)


def test_a_registered_kind_reaches_the_config_the_runner_and_the_benchmark(tmp_path, toy_kind):
  c = default.get_config()
  assert dict(c.attention.toy_uniform) == {'scale': 1.0}  # its section, from the dataclass
  assert 'toy_uniform' in experiment.with_sweep_axes(c).sweep.attention  # sweepable like every field
  c.task.khop.n, c.task.khop.max_k, c.model.depth, c.model.width, c.model.num_heads = 8, 1, 1, 16, 2
  c.train.steps, c.train.batch_size, c.optim.warmup_steps, c.evaluation.batches = 4, 8, 1, 1
  c.sweep.model.depth, c.sweep.attention.kind = (), ()
  c.attention.kind, c.attention.toy_uniform.scale = 'toy_uniform', 0.5
  x = experiment.build(c)
  assert x.model.attention.settings == UniformConfig(scale=0.5) and x.fields['attention.toy_uniform.scale'] == 0.5
  result = train.train_and_evaluate(c, str(tmp_path / 'run'))  # trains, evaluates, reports its stat
  assert result['status'] == 'done' and result['eval/toy_stat'] == 1.0
  assert 'toy_uniform' in benchmark_kinds.kinds() and 'toy_uniform' in benchmark_kinds.default_kinds('cpu')
  s = benchmark_kinds.Settings(heads=2, head_dim=8, repeats=1, quality_queries=4)
  record = measure.measure(s, 'toy_uniform', 'forward', 16, 2**30, 100.0)
  assert record.status == 'ok' and record.setting == 'scale=1.0' and record.analytic_flops == 2 * 2.0 * 16 * 16 * 8
  assert khop_table.kind_of('toy_uniform-depth=1') == 'toy_uniform'
  with pytest.raises(ValueError, match='toy_uniform'):
    experiment.build(c).model.attention.replace(kind='nope')


def test_registration_checks_its_config_and_name():
  @dataclasses.dataclass(frozen=True)
  class NoDefault:
    width: int

  with pytest.raises(ValueError, match='needs a default'):
    registry.Kind(name='bad', config=NoDefault, build=None, summary='')
  with pytest.raises(ValueError, match='identifier'):
    registry.Kind(name='not-a-name', config=UniformConfig, build=None, summary='')
  with pytest.raises(ValueError, match='field of the attention section'):
    registry.register(registry.Kind(name='per_layer', config=UniformConfig, build=None, summary=''))


def test_local_kind_with_a_window_past_the_sequence_is_full_attention():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 12, 2, 8))
  local = anna_jax.AttentionConfig(kind='local', local=registry.get('local').config(window=12))
  for causal in (False, True):
    out, _ = anna_jax.make_attention(local, 2, 8, rngs=nnx.Rngs(0))(q, k, v, causal=causal)
    assert jnp.allclose(out, anna_jax.full_attention(q, k, v, causal=causal), atol=1e-5)
