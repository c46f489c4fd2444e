"""What the benchmark measures at one length: each kind's AttentionConfig, its analytic FLOPs and the pairs its
quality is judged on, all from the kind's registration (`anna_jax.registry`); this module adds the benchmark's
knobs (Settings) and one variant of its own.

Benchmark kinds are every registered kind, plus `full_cudnn` (kind 'full' with implementation 'cudnn', bfloat16,
GPU only); a run without --kinds measures those its registration marks `benchmarked` (and full_cudnn on a GPU).
"""

import dataclasses

from flax import nnx

from anna_jax import registry
from anna_jax.attention import AttentionConfig, make_attention
from anna_jax.baselines import FullConfig

# Benchmark-only variants of a registered kind: name -> (kind, settings). GPU only: default off CPU only.
VARIANTS = {'full_cudnn': ('full', FullConfig(implementation='cudnn'))}


def kinds():
  """Every kind the benchmark can run: the registered ones, then the variants."""
  return registry.names() + tuple(VARIANTS)


def default_kinds(backend):
  """The kinds a run measures unless --kinds names others: the registered kinds marked `benchmarked`, and on an
  accelerator the variants too (they need a GPU)."""
  benchmarked = tuple(k.name for k in registry.kinds() if k.benchmarked)
  return benchmarked if backend == 'cpu' else benchmarked + tuple(VARIANTS)


def exact_kinds():
  """The kinds that compute exact softmax attention: the baselines every speed-up is measured against."""
  return tuple(name for name in kinds() if registration(name).exact)


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


def attention_config(kind, n, s):
  """The AttentionConfig a benchmark kind runs at length n."""
  if kind in VARIANTS:
    base, settings = VARIANTS[kind]
    return AttentionConfig(kind=base, **{base: settings})
  spec = registry.get(kind)
  return AttentionConfig(kind=kind, **{kind: spec.at_length(n, s)})


def describe(config):
  """One line of a kind's setting, e.g. 'l=8 z=9'."""
  return registry.get(config.kind).setting(config.settings)


def analytic_flops(config, n, batch, heads, d, attended_pairs=None):
  """Forward FLOPs (multiply-add = 2) of the kind's registration (`Kind.flops`), per the algorithm, not per XLA's
  lowering; attended_pairs: the pairs a measured run scored, over every (batch, head) row. NaN if uncounted."""
  flops = registry.get(config.kind).flops
  if flops is None:
    return float('nan')
  rows = batch * heads
  return rows * flops(config.settings, n, d, None if attended_pairs is None else attended_pairs / rows)


def registration(kind):
  """The registry's Kind behind a benchmark kind (a variant's: its base kind's)."""
  return registry.get(VARIANTS.get(kind, (kind,))[0])


@dataclasses.dataclass
class KindAtLength:
  """One kind at one length: fn(q, k, v) -> (out, stats dict); the pairs its quality is judged on."""
  fn: callable
  setting: str
  flops: float  # analytic forward FLOPs
  allowed: callable = None  # (sampled positions, q, k) -> (batch, heads, samples, n) bool
  config: object = None  # its AttentionConfig


def make_kind(kind, n, key, s):
  """The attention module of `kind` at length n (hash functions drawn from `key`), as a pure function."""
  config = attention_config(kind, n, s)
  spec = registry.get(config.kind)
  module = make_attention(config, s.heads, s.head_dim, rngs=nnx.Rngs(key))
  graphdef, state = nnx.split(module)

  def fn(q, k, v):
    return nnx.merge(graphdef, state)(q, k, v, causal=s.causal)

  def allowed(positions, q, k):
    return spec.allowed(module, positions, q, k, s.causal)

  return KindAtLength(fn, describe(config), analytic_flops(config, n, s.batch, s.heads, s.head_dim),
              allowed if spec.allowed else None, config)


def keys_of(kind, q, k):
  """The keys a kind's quality reference scores against (Reformer's are its unit-normalised queries)."""
  reference_keys = registration(kind).reference_keys
  return reference_keys(q, k) if reference_keys else k
