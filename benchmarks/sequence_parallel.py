"""Sequence-parallel Algorithm 1: what each device sends per layer, in how many rounds, beside the MPC bound.

  python -m benchmarks.sequence_parallel --outdir=benchmarks/results/sequence-parallel   # 64K .. 1M, 8 devices

One sequence (batch 1) sharded over --devices devices (on a CPU host: XLA's host devices, set here before jax
loads). Per length, both ways `sequence_parallel_anna` exchanges, causal and not:
  - dense: z = log2(n / 32) (the scaling benchmark's anna: buckets of about 32 keys); the code space is at most
    n / P buckets, so per-device bucket tables are summed across devices (psum; causal: an exclusive scan);
  - routed: z = log2(n) (buckets of about one key, the regime of exact matches at large n): one record per
    distinct bucket to the bucket's owner, requests after, answers back (all_to_all), more rounds on overflow.
Recorded per point: every collective the traced program contains (`sequence_parallel.traffic`: the array each
device puts in), the exchange rounds it ran (a run-time statistic), the bytes each device sends off-device (an
all_to_all sends (P - 1) / P of its buffer; a psum, as a ring all-reduce, 2 (P - 1) / P; a ppermute all of it),
the largest array a device exchanges, in words and against its own share of q, k and v (MPC's local memory, up
to a constant), the forward time, and beside them single-device
`anna_attention` on the same inputs: its time and the largest difference of the outputs (exactness).
Host devices share this machine's cores and memory: the times say nothing about a real multi-GPU run.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')  # before jax is imported

import json  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from anna_jax import sequence_parallel  # noqa: E402
from anna_jax.anna import ANNAConfig, anna_attention, draw_projections  # noqa: E402
from anna_jax import tooling  # noqa: E402
from benchmarks.measure import median_seconds  # noqa: E402

_LENGTHS = flags.DEFINE_list('lengths', [str(2**p) for p in range(16, 21)], 'Sequence lengths (64K .. 1M).')
_HEADS = flags.DEFINE_integer('heads', 1, 'Attention heads.')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'Dimension per head.')
_TABLES = flags.DEFINE_integer('num_tables', 8, 'Hash tables l.')
_PER_EXCHANGE = flags.DEFINE_integer('tables_per_exchange', 0, 'Tables exchanged at once (0: all); fewer hold less '
                                     'memory and take more rounds (a 24 GiB host needs 2 at 1M tokens).')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed calls per point (median).')
_OUTDIR = flags.DEFINE_string('outdir', 'results/sequence-parallel', 'Where report.md and traffic.jsonl go.')

PROGRAM = 'anna-jax sequence-parallel benchmark'
SENT_FRACTION = {'all_to_all': lambda p: (p - 1) / p, 'psum': lambda p: 2 * (p - 1) / p,
                 'ppermute': lambda p: 1.0, 'pmax': lambda p: 2 * (p - 1) / p}


def measure(n, way, causal, mesh, repeats):
  devices = mesh.shape['seq']
  z = max(1, round(math.log2(n / 32))) if way == 'dense' else round(math.log2(n))
  config = ANNAConfig(num_tables=_TABLES.value, num_hashes=z)
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (1, n, _HEADS.value, _HEAD_DIM.value)) for key in keys[:3])
  projections = draw_projections(keys[3], _HEADS.value, _HEAD_DIM.value, config)
  with sequence_parallel.traffic() as ledger:
    sharded = jax.jit(lambda q, k, v: sequence_parallel.sequence_parallel_anna(
        q, k, v, projections, config, mesh, causal=causal, tables_per_exchange=_PER_EXCHANGE.value))
    out, stats = jax.block_until_ready(sharded(q, k, v))  # compiles, recording the collectives
  single = jax.jit(lambda q, k, v: anna_attention(q, k, v, projections, config, causal=causal)[0])
  reference = single(q, k, v)
  rounds = int(stats['rounds'])  # summed over the table groups
  groups = config.num_tables // (_PER_EXCHANGE.value or config.num_tables)
  calls = [rounds if c.per_round else groups for c in ledger]  # a group's collectives run once per group
  sent = sum(c.bytes * SENT_FRACTION[c.name](devices) * times for c, times in zip(ledger, calls))
  record = dict(
      n=n, way=way, causal=causal, devices=devices, z=z, tables=config.num_tables, heads=_HEADS.value,
      head_dim=_HEAD_DIM.value, rounds=rounds,
      collectives=[c._asdict() for c in ledger],
      table_groups=groups, collective_calls=sum(calls),
      sent_bytes_per_device=sent,
      largest_buffer_words=max(c.bytes for c in ledger) // 4,
      local_tokens=n // devices,
      max_abs_difference=float(jnp.max(jnp.abs(out - reference))),
      mean_collisions=float(stats['mean_collisions']),
      sharded_seconds=median_seconds(sharded, q, k, v, repeats=repeats),
      single_device_seconds=median_seconds(single, q, k, v, repeats=repeats))
  logging.info('n=%d %s causal=%s: %d rounds, %.1f MiB sent per device, %.2fs (one device %.2fs), max diff %.1e',
               n, way, causal, rounds, sent / 2**20, record['sharded_seconds'], record['single_device_seconds'],
               record['max_abs_difference'])
  return record


def mib(x):
  return f'{x / 2**20:.1f}'


def report(records):
  lines = ['| n | way | causal | z | rounds | collectives run | sent per device (MiB) | per token (bytes) | '
           'largest exchanged array (words) | / local q, k, v | sharded time | one device | max diff |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in records:
    words = r['largest_buffer_words']
    lines.append(
        f"| {r['n']} | {r['way']} | {r['causal']} | {r['z']} | {r['rounds']} | {r['collective_calls']} | "
        f"{mib(r['sent_bytes_per_device'])} | {r['sent_bytes_per_device'] / r['local_tokens']:.0f} | {words} | "
        f"{words / (3 * r['local_tokens'] * r['heads'] * r['head_dim']):.2f} | {r['sharded_seconds']:.2f} s | "
        f"{r['single_device_seconds']:.2f} s | {r['max_abs_difference']:.1e} |")
  return '\n'.join(lines)


def main(argv):
  tooling.quiet_console()
  if len(argv) > 1:
    tooling.fail(f'unexpected arguments: {" ".join(argv[1:])}', PROGRAM)
  try:
    lengths = sorted(int(n) for n in _LENGTHS.value)
  except ValueError:
    tooling.fail(f'--lengths must be integers, got {_LENGTHS.value}', PROGRAM)
  devices = jax.device_count()
  bad = [n for n in lengths if n < 64 * devices or n % devices]
  if bad or min(_HEADS.value, _HEAD_DIM.value, _TABLES.value, _REPEATS.value) < 1:
    tooling.fail(f'lengths must be multiples of the {devices} devices and at least {64 * devices} (got {bad}); heads, '
             'head_dim, num_tables and repeats at least 1', PROGRAM)
  tooling.writable_dir(_OUTDIR.value, PROGRAM)
  mesh = jax.make_mesh((devices,), ('seq',))
  records = []
  with open(os.path.join(_OUTDIR.value, 'traffic.jsonl'), 'w') as f:
    for n in lengths:
      for way in ('dense', 'routed'):
        for causal in (False, True):
          records.append(measure(n, way, causal, mesh, _REPEATS.value))
          f.write(json.dumps(records[-1]) + '\n')
          f.flush()
  table = report(records)
  with open(os.path.join(_OUTDIR.value, 'report.md'), 'w') as f:
    f.write(f'{jax.devices()[0].device_kind} x {devices} ({jax.default_backend()}), jax {jax.__version__}, batch 1, '
            f'heads {_HEADS.value}, head_dim {_HEAD_DIM.value}, tables {_TABLES.value}\n\n{table}\n')
  print(table)


if __name__ == '__main__':
  app.run(main, flags_parser=tooling.flags_parser(PROGRAM))
