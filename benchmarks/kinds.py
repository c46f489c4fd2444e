"""What the benchmark measures at one length: each kind's AttentionConfig (built by `anna_jax.attention`, the one
registry), its analytic FLOPs, and the pairs its quality is judged on (from `anna_jax.oracle`).

Benchmark kinds are the library's kinds, plus `full_cudnn` (kind 'full' with implementation 'cudnn', GPU only).
"""

import dataclasses
import math

from flax import nnx

from anna_jax import oracle
from anna_jax.anna import ANNAConfig
from anna_jax.anna_softmax import ANNASoftmaxConfig
from anna_jax.attention import AttentionConfig, make_attention
from anna_jax.baselines import BlockwiseConfig, FullConfig, LowRankConfig, unit_norm
from anna_jax.reformer import ReformerConfig

KINDS = ('anna', 'anna_softmax', 'reformer', 'lowrank', 'full', 'full_blockwise', 'full_cudnn')
EXACT = ('full', 'full_blockwise', 'full_cudnn')
CPU_KINDS = ('anna', 'anna_softmax', 'reformer', 'lowrank', 'full', 'full_blockwise')


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every knob of one benchmark run (the command line's flags, or a test's values)."""
  batch: int = 1
  heads: int = 8
  head_dim: int = 64
  dtype: str = 'float32'  # q, k, v dtype (full_cudnn always bfloat16); accumulation is float32 either way
  num_tables: int = 8  # anna / anna_softmax
  anna_hashes: int = 0  # anna: 0 = log2(n / 32), buckets of about 32 keys
  num_hashes: int = 0  # anna_softmax: 0 = log2(n / 8), capped so the int32 sort key fits
  chunk_size: int = 32  # anna_softmax
  window: int = 64  # anna_softmax
  dense_up_to: int = 512  # anna_softmax: padded lengths up to this take the dense layout; 0: never
  reformer_rounds: int = 8
  reformer_chunk: int = 64  # buckets = n / chunk (mean bucket one chunk, as in the Reformer paper)
  block: int = 512  # full_blockwise
  lowrank_features: int = 256
  quality_queries: int = 128  # sampled queries for the relative errors
  repeats: int = 5
  warmup: int = 1
  max_call_seconds: float = 60.0
  seed: int = 0
  causal: bool = False

  def __post_init__(self):
    small = {name: getattr(self, name) for name in (
        'batch', 'heads', 'head_dim', 'num_tables', 'chunk_size', 'window', 'reformer_rounds', 'reformer_chunk',
        'block', 'lowrank_features', 'quality_queries', 'repeats') if getattr(self, name) < 1}
    if small:
      raise ValueError(f'lengths, batch, heads, head_dim, repeats, chunk sizes, window, tables, rounds, block, '
                       f'features and quality_queries must be >= 1, got {small}')


def anna_hashes(s, n):
  """anna (Algorithm 1): z = log2(n / 32), buckets of about 32 keys."""
  return s.anna_hashes or max(1, round(math.log2(max(n / 32, 2))))


def anna_softmax_hashes(s, n):
  """anna_softmax: buckets of about 8 keys, never past the int32 sort key limit."""
  if s.num_hashes:
    return s.num_hashes
  n_pad = -(-n // s.chunk_size) * s.chunk_size
  z = max(1, round(math.log2(max(n / 8, 2))))
  while (2**z + 1) * n_pad >= 2**31:
    z -= 1
  return z


def attention_config(kind, n, s):
  """The AttentionConfig a benchmark kind runs at length n."""
  if kind == 'anna':
    return AttentionConfig(kind='anna', anna=ANNAConfig(num_tables=s.num_tables, num_hashes=anna_hashes(s, n)))
  if kind == 'anna_softmax':
    return AttentionConfig(kind='anna_softmax', anna_softmax=ANNASoftmaxConfig(
        num_tables=s.num_tables, num_hashes=anna_softmax_hashes(s, n), chunk_size=s.chunk_size, window=s.window,
        dense_up_to=s.dense_up_to))
  if kind == 'reformer':
    buckets = max(2, 2 * round(n / s.reformer_chunk / 2))
    return AttentionConfig(kind='reformer', reformer=ReformerConfig(
        num_rounds=s.reformer_rounds, num_buckets=buckets, chunk_size=s.reformer_chunk))
  if kind == 'lowrank':
    return AttentionConfig(kind='lowrank', lowrank=LowRankConfig(num_features=s.lowrank_features))
  if kind == 'full_blockwise':
    return AttentionConfig(kind='full_blockwise', full_blockwise=BlockwiseConfig(block=s.block))
  return AttentionConfig(kind='full', full=FullConfig(implementation='cudnn' if kind == 'full_cudnn' else ''))


def describe(config):
  """One line of a kind's setting, e.g. 'l=8 z=9'."""
  c = config.settings
  return {'anna': lambda: f'l={c.num_tables} z={c.num_hashes}',
          'anna_softmax': lambda: f'l={c.num_tables} z={c.num_hashes} chunk={c.chunk_size} window={c.window}',
          'reformer': lambda: f'rounds={c.num_rounds} buckets={c.num_buckets} chunk={c.chunk_size}',
          'lowrank': lambda: f'features={c.num_features}',
          'full_blockwise': lambda: f'block={c.block}',
          'full': lambda: c.implementation}[config.kind]()


def analytic_flops(config, n, batch, heads, d, attended_pairs=None):
  """Forward FLOPs (multiply-add = 2), per the algorithm, not per XLA's lowering.

  full*: 4 n^2 d (q.k and p.v); lowrank: 8 n m d (features of q and k, k^T v, q (k^T v)); anna: 4 n d z l
  (hashing q and k) + 2 n d l (scatter-add and gather); anna_softmax: 4 n d z l + 4 d P (q.k and p.v over the P
  pairs scored: the (query, key, table) collisions inside the windows, counted in the run, `attended_pairs`;
  without it the windows' bound P = n W l, which counts window slots that hold no collision: at 1K that bound
  came to 134% of the measured matmul peak); reformer: 2 n d (B / 2) r (hashing) + 8 n c d r (chunks of c
  against 2c keys).
  """
  rows, c = batch * heads, config.settings
  if config.kind in ('full', 'full_blockwise'):
    return rows * 4.0 * n * n * d
  if config.kind == 'lowrank':
    return rows * 8.0 * n * c.num_features * d
  if config.kind == 'anna':
    return rows * (4.0 * n * d * c.num_hashes * c.num_tables + 2.0 * n * d * c.num_tables)
  if config.kind == 'anna_softmax':
    pairs = rows * n * c.window * c.num_tables if attended_pairs is None else attended_pairs
    return rows * 4.0 * n * d * c.num_hashes * c.num_tables + 4.0 * d * pairs
  return rows * (2.0 * n * d * c.num_buckets / 2 * c.num_rounds + 8.0 * n * c.chunk_size * d * c.num_rounds)


@dataclasses.dataclass
class Kind:
  """One kind at one length: fn(q, k, v) -> (out, stats dict); the pairs its quality is judged on."""
  fn: callable
  setting: str
  flops: float  # analytic forward FLOPs
  allowed: callable = None  # (sampled positions, q, k) -> (batch, heads, samples, n) bool
  config: object = None  # its AttentionConfig


def make_kind(kind, n, key, s):
  """The attention module of `kind` at length n (hash functions drawn from `key`), as a pure function."""
  config = attention_config(kind, n, s)
  module = make_attention(config, s.heads, s.head_dim, rngs=nnx.Rngs(key))
  graphdef, state = nnx.split(module)

  def fn(q, k, v):
    return nnx.merge(graphdef, state)(q, k, v, causal=s.causal)

  allowed = None
  if config.kind in ('anna_softmax', 'reformer'):
    projections = module.hashes.projections[...]

    def allowed(positions, q, k):
      if config.kind == 'reformer':  # shared QK: the keys are the queries
        return oracle.reformer_allowed(q, projections, positions, causal=s.causal)
      return oracle.collision_counts(q, k, projections, config.anna_softmax.family, causal=s.causal,
                                     positions=positions) > 0
  return Kind(fn, describe(config), analytic_flops(config, n, s.batch, s.heads, s.head_dim), allowed, config)


def keys_of(kind, q, k):
  """The keys a kind's quality reference scores against: Reformer's are its unit-normalised queries."""
  return unit_norm(q) if kind == 'reformer' else k
