"""The registry of attention kinds: each kind is registered once, beside its implementation, and everything that
lists kinds reads it: `AttentionConfig` (one section per kind), the experiment config's sections and its default
config, the benchmark's kinds and its report's columns, the k-hop table's columns and theory lines.

A kind is its settings dataclass (frozen, every field with a default: the config section attention.<name>), a
module builder and what the suite reports about it. Adding one (README, "Adding an attention kind"):

  register(Kind(name='mine', config=MineConfig, build=MineAttention, summary='what it computes'))

where `MineAttention(settings, num_heads, head_dim, *, rngs)` is an nnx.Module whose
`__call__(q, k, v, mask=None, causal=False)` returns (output, {stat name: scalar}).
"""

import dataclasses
from typing import Callable


def no_setting(settings):
  return ''


@dataclasses.dataclass(frozen=True)
class Kind:
  """One attention kind and what the suite needs to know about it."""
  name: str
  config: type  # frozen dataclass of its settings, every field defaulted: the section attention.<name>
  # build(settings, num_heads, head_dim, *, rngs) -> nnx.Module: (q, k, v, mask, causal) -> (out, stats)
  build: Callable
  summary: str  # one line: what it computes (the docs' table of kinds)
  stats: tuple = ()  # names of the scalar stats its module returns, reported by training and the benchmark
  setting: Callable = no_setting  # settings -> a short description of them, e.g. 'l=8 z=9'
  # (settings, n, head_dim, attended_pairs) -> forward FLOPs of one (batch, head) row, multiply-add = 2, per the
  # algorithm (not per XLA's lowering); attended_pairs: the pairs scored in a measured run, where it counts them.
  # None: not counted.
  flops: Callable | None = None
  exact: bool = False  # computes exact softmax attention: the benchmark's speed baselines
  loop_free: bool = False  # no loops in its graph, so XLA's cost analysis counts its FLOPs right
  # The benchmark judges its output against exact softmax over the pairs it may attend: `allowed(module,
  # positions, q, k, causal)` -> (batch, heads, positions, n) bool (None: every pair, or every past one);
  # `reference_keys(q, k)`: the keys of that reference (Reformer's are its unit-normalised queries).
  judged: bool = False
  allowed: Callable | None = None
  reference_keys: Callable | None = None
  # The benchmark's settings at length n: benchmark_settings(n, s) from its Settings `s` (None: the defaults).
  benchmark_settings: Callable | None = None
  benchmarked: bool = True  # whether a benchmark run without --kinds measures it
  theory: str = ''  # what theory predicts for k-hop (depth needed for k hops), for the k-hop table

  def __post_init__(self):
    if not self.name.isidentifier():
      raise ValueError(f'an attention kind is named by an identifier (it names a config section), got {self.name!r}')
    missing = [f.name for f in dataclasses.fields(self.config) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
      raise ValueError(f'kind {self.name!r}: every field of {self.config.__name__} needs a default, {missing} has none')

  def at_length(self, n, s):
    """The settings the benchmark runs at length n."""
    return self.benchmark_settings(n, s) if self.benchmark_settings else self.config()


_KINDS = {}


def register(kind):
  """Adds `kind` (a Kind); registering a name again replaces it (a module reloaded)."""
  if kind.name in ('kind', 'per_layer', 'settings', 'replace'):
    raise ValueError(f'{kind.name!r} is a field of the attention section, not a name for a kind')
  _KINDS[kind.name] = kind
  return kind


def unregister(name):
  """Removes a kind (tests that register a toy kind take it out again)."""
  _KINDS.pop(name, None)


def names():
  """Every registered kind's name, in registration order (the built-in kinds first)."""
  return tuple(_KINDS)



def get(name):
  if name not in _KINDS:
    raise ValueError(f'attention kind must be one of {names()}, got {name!r}')
  return _KINDS[name]


def kinds():
  return tuple(_KINDS.values())


def stat_names():
  """Every stat some kind reports, in a fixed order."""
  return tuple(dict.fromkeys(stat for kind in _KINDS.values() for stat in kind.stats))
