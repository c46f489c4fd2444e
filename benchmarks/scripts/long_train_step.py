"""Whole-model train steps as N grows: the k-hop length table's model (depth 4, width 64, 4 heads) with every
attention kind, at N in {2K, 8K, 32K}, its batches of 1,024 tokens (one sequence a step from N = 1024 on).

  python benchmarks/scripts/long_train_step.py --lengths=2048,8192,32768 \
      --out=benchmarks/results/long_train_step/cpu.md

Per (N, variant): the median step time, the compiled step's memory (arguments + outputs + temporaries, as XLA
plans them) and the peak resident memory of the process that ran it, XLA's FLOPs of the step and its share of the
FLOP bound (those FLOPs at the matmul peak measured in the same run; the C++ kernels' custom calls count no FLOPs,
so for anna and anna_softmax on CPU the share is a floor), and the ratio to the fastest exact variant at that N.
Every (N, variant) runs in its own process, one after another (the peak resident memory is then its own); run it
with nothing else running on the machine. A variant whose compiled step would need more than --memory_gb is not
run, nor one whose step estimated from its previous length (x (N / N')^2 for the quadratic variants, x N / N' for
the others) exceeds --max_step_seconds: its row says so, with that estimate marked as one.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from anna_jax.tooling import compiled_bytes  # noqa: E402
from benchmarks.measure import (compiled_flops, compiled_train_step, device_name, matmul_peak,  # noqa: E402
                                print_report)

# label -> (kind, overrides of the length table's config): the exact kinds first.
VARIANTS = {
    'full': ('full', {}),
    'full_blockwise': ('full_blockwise', {}),
    'anna (colliding ST)': ('anna', {}),
    'anna (dense ST)': ('anna', {'attention.anna.straight_through_pairs': 'all'}),
    # The N = 32 recipe's 256 tables at long N, against 32 of them:
    'anna (colliding ST; l=32)': ('anna', {'attention.anna.num_tables': 32}),
    'anna_softmax': ('anna_softmax', {}),
    'local': ('local', {}),
    'reformer': ('reformer', {}),
    'lowrank': ('lowrank', {}),
}
EXACT = ('full', 'full_blockwise')
QUADRATIC = EXACT + ('local',)  # local runs XLA's masked dense attention: its step grows as N^2 here too

LENGTHS = flags.DEFINE_list('lengths', ['2048', '8192', '32768'], 'sequence lengths N')
ONLY = flags.DEFINE_list('variants', [v for v in VARIANTS if 'l=32' not in v],
                         'variants to run (labels of VARIANTS; default: all but the l = 32 one)')
REPS = flags.DEFINE_integer('reps', 2, 'steps per timing')
ROUNDS = flags.DEFINE_integer('rounds', 3, 'timings per (N, variant); the median is reported')
MEMORY_GB = flags.DEFINE_float('memory_gb', 16.0, 'skip a step whose compiled memory exceeds this')
MAX_STEP_SECONDS = flags.DEFINE_float('max_step_seconds', 60.0, 'skip a variant whose step, estimated from its '
                                      'previous length, would exceed this')
OUT = flags.DEFINE_string('out', '', 'markdown file to write (default: print only); raw rows go beside it (.jsonl)')
ONE = flags.DEFINE_string('one', '', 'internal: N:label, measure one point in this process and print it as JSON')


def config_for(n, label):
  from experiments import experiment  # noqa: PLC0415
  from experiments.configs import khop_length_table  # noqa: PLC0415
  kind, overrides = VARIANTS[label]
  c = khop_length_table.get_config(f'{n},grow')  # batches of 1,024 tokens: one sequence from N = 1024 on
  c.attention.kind = kind
  for path, value in overrides.items():
    experiment.set_field(c, path, value)
  return c


def measure_one(n, label):
  """One point, in this process: {'n', 'variant', 'seconds', 'step_memory_mib', 'peak_rss_mib', 'flops', ...}."""
  row = {'n': n, 'variant': label}
  trainer, step, args = compiled_train_step(config_for(n, label), num_devices=1, microbatches=1)
  row['step_memory_mib'] = round(compiled_bytes(step) / 2**20, 1)
  row['flops'] = compiled_flops(step)
  if row['step_memory_mib'] > MEMORY_GB.value * 1024:
    row['status'] = f'not run: its step needs {row["step_memory_mib"] / 1024:.1f} GiB > {MEMORY_GB.value:g}'
    return row
  with jax.set_mesh(trainer.mesh):
    jax.block_until_ready(step(*args))
    times = []
    for _ in range(ROUNDS.value):
      start = time.perf_counter()
      for _ in range(REPS.value):
        out = step(*args)
      jax.block_until_ready(out)
      times.append((time.perf_counter() - start) / REPS.value)
  row.update(status='ok', seconds=statistics.median(times),
             peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
  return row


def run_point(n, label):
  """measure_one in a fresh process (its own peak memory); a crash becomes the row's status."""
  command = [sys.executable, os.path.abspath(__file__), f'--one={n}:{label}', f'--reps={REPS.value}',
             f'--rounds={ROUNDS.value}', f'--memory_gb={MEMORY_GB.value}']
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  for line in reversed(done.stdout.splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  tail = (done.stderr.strip().splitlines() or ['no output'])[-1]
  return {'n': n, 'variant': label, 'status': f'failed (exit {done.returncode}): {tail[:160]}'}


def estimate(label, n, previous):
  """A variant's step seconds at n from its last measured (length, seconds), or None."""
  if label not in previous:
    return None
  m, seconds = previous[label]
  return seconds * (n / m) ** (2 if label in QUADRATIC else 1)


def table(rows, peak):
  lines = ['| N | variant | ms per step | vs fastest exact | compiled step memory (MiB) | peak RSS (MiB) | XLA GFLOP | '
           'share of the FLOP bound | status |', '|---|---|---|---|---|---|---|---|---|']
  previous = {}  # variant -> (n, seconds) of its last measured length, for the estimates
  for n in sorted({r['n'] for r in rows}):
    here = [r for r in rows if r['n'] == n]
    exact = [r['seconds'] for r in here if r['variant'] in EXACT and 'seconds' in r]
    fastest = min(exact) if exact else None
    for r in here:
      seconds = r.get('seconds')
      note = r['status']
      if seconds is None and r['variant'] in previous:
        m = previous[r['variant']][0]
        power = '^2' if r['variant'] in QUADRATIC else ''
        note += (f'; estimate {estimate(r["variant"], n, previous) * 1e3:.0f} ms (its N = {m} step x '
                 f'(N / {m}){power})')
      if seconds is not None:
        previous[r['variant']] = (n, seconds)
      ratio = f'{fastest / seconds:.2f}x' if seconds and fastest else ''
      flops = r.get('flops', float('nan'))
      share = f'{flops / peak / seconds:.0%}' if seconds and flops == flops else ''
      cell = lambda x, f: f.format(x) if x is not None else ''
      lines.append(f'| {n} | {r["variant"]} | {cell(seconds and seconds * 1e3, "{:.1f}")} | {ratio} | '
                   f'{cell(r.get("step_memory_mib"), "{:.0f}")} | {cell(r.get("peak_rss_mib"), "{:.0f}")} | '
                   f'{cell(flops / 1e9 if flops == flops else None, "{:.1f}")} | {share} | {note} |')
  return '\n'.join(lines)


def main(_):
  if ONE.value:
    n, label = ONE.value.split(':', 1)
    print(json.dumps(measure_one(int(n), label)))
    return
  peak = matmul_peak(jnp.float32) * 1e9
  rows, previous = [], {}
  for n in sorted(int(x) for x in LENGTHS.value):
    for label in ONLY.value:
      guess = estimate(label, n, previous)
      if guess is not None and guess > MAX_STEP_SECONDS.value:
        status = f'not run: estimated {guess:.0f} s > {MAX_STEP_SECONDS.value:g}'
        rows.append({'n': n, 'variant': label, 'status': status})
      else:
        rows.append(run_point(n, label))
      if 'seconds' in rows[-1]:
        previous[label] = (n, rows[-1]['seconds'])
      print(json.dumps(rows[-1]), flush=True)
  text = '\n'.join([
      '# Whole-model train steps as N grows (k-hop length-table model: depth 4, width 64, 4 heads, batches of 1,024 '
      'tokens or one sequence)', '',
      f'device: {device_name()}; jax {jax.__version__}; {len(os.sched_getaffinity(0))} core(s); each point in its own '
      f'process, one after another; median of {ROUNDS.value} timings of {REPS.value} steps; matmul peak (f32, '
      f'measured in this run) {peak / 1e9:.1f} GFLOP/s', '', table(rows, peak), ''])
  print_report(text, OUT.value)
  if OUT.value:
    with open(os.path.splitext(OUT.value)[0] + '.jsonl', 'w') as f:
      f.writelines(json.dumps(r, sort_keys=True) + '\n' for r in rows)


if __name__ == '__main__':
  app.run(main)
