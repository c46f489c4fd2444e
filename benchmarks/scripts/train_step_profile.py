"""Where a train step's time goes: steps/s of the compiled step, XLA's FLOP count, the share of the FLOP bound,
and the most expensive compiled ops (from a jax.profiler trace), for one experiment config.

  python benchmarks/scripts/train_step_profile.py --config=experiments/configs/induction_paper.py \
      --out=benchmarks/results/train_step_profile/induction.md [--config.x.y=...]

The FLOP bound is the step's FLOPs at the machine's matmul peak, measured in the same process
(benchmarks.measure.matmul_peak: one large float32 matmul): the time the step would take if every FLOP ran at
that rate and nothing else cost anything. Time it with nothing else running on the machine (or pin it with
`taskset -c 1` and say so).
"""

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from benchmarks.measure import (compiled_train_step, device_name, matmul_peak, plain_step_flops,  # noqa: E402
                                print_report)

CONFIG = config_flags.DEFINE_config_file('config', None, 'an experiment config (experiments/configs/*.py)')
OUT = flags.DEFINE_string('out', '', 'markdown file to write (default: print only)')
REPS = flags.DEFINE_integer('reps', 30, 'steps per timing (best of 3)')
TOP = flags.DEFINE_integer('top', 25, 'compiled ops listed')


def best_seconds(fn, *args, reps):
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(reps):
      out = fn(*args)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - start) / reps)
  return best


def op_descriptions(hlo_text):
  """{op name: 'shape kind (what jax op it came from)'} from compiled HLO text."""
  described = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w-]+)\(', line)
    if m:
      origin = re.search(r'op_name="([^"]*)"', line)
      # The origin without the scan's prefix (a microbatched step runs its model in a while loop).
      where = origin.group(1).replace('while/body/closed_call/', '') if origin else ''
      described.setdefault(m.group(1), f'{m.group(2)} {m.group(3)} {where}')
  return described


def shortened(description):
  """'shape kind origin' with the origin's last 60 characters."""
  head, _, origin = description.rpartition(' ')
  return f'{head} {origin[-60:]}' if head else description


def op_times(step, args, steps=10):
  """{op name: seconds per step} from a profiler trace of `steps` calls."""
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(steps):
        out = step(*args)
      jax.block_until_ready(out)
    events = json.load(gzip.open(glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)[0]))['traceEvents']
  totals = collections.Counter()
  for event in events:
    name = event.get('name', '')
    compiled_op = not name.startswith(('$', 'Thunk', 'Pjit')) and '::' not in name  # not waits, not Python
    if event.get('ph') == 'X' and 'dur' in event and compiled_op:
      totals[name] += event['dur'] * 1e-6 / steps
  return totals


def category(description):
  if 'jit(' not in description:  # XLA kept no jax origin for it (fusions it built, thread-pool events)
    return 'other, origin not recorded'
  backward = 'transpose(' in description
  if ' dot ' in description or 'dot_general' in description:
    if backward and ' dot ' in description:
      return 'matmul, backward (weight gradients, plain dot)'
    return 'matmul, backward' if backward else 'matmul, forward'
  return 'other, backward' if backward else 'other, forward'


def main(_):
  trainer, compiled, args = compiled_train_step(CONFIG.value)  # compiled once, timed and traced
  seconds = best_seconds(compiled, *args, reps=REPS.value)
  flops = plain_step_flops(CONFIG.value, [(trainer, compiled)])
  rate = matmul_peak(jnp.float32) * 1e9
  times = op_times(compiled, args)
  described = op_descriptions(compiled.as_text())
  by_category = collections.Counter()
  for name, t in times.items():
    by_category[category(described.get(name, ''))] += t
  traced = sum(times.values())
  lines = [f'# Train-step profile: {config_flags.get_config_filename(flags.FLAGS["config"])}', '',
           f'device: {device_name()}; {jax.device_count()} JAX device(s), jax {jax.__version__}; this process may run '
           f'on {len(os.sched_getaffinity(0))} core(s)', '',
           '| measure | value |', '|---|---|',
           f'| step time | {seconds * 1e3:.1f} ms ({1 / seconds:.2f} steps/s) |',
           f'| FLOPs per step (XLA cost analysis of the plain step) | {flops / 1e9:.2f} G |',
           f'| achieved | {flops / seconds / 1e9:.1f} GFLOP/s |',
           f'| matmul peak (f32, benchmarks.measure.matmul_peak, same process) | {rate / 1e9:.1f} GFLOP/s |',
           f'| FLOP bound (FLOPs at that rate) | {flops / rate * 1e3:.1f} ms |',
           f'| share of the FLOP bound | {flops / rate / seconds:.0%} |', '',
           f'Traced op time {traced * 1e3:.1f} ms per step (summed over devices), by kind:', '',
           '| kind | ms per step | share |', '|---|---|---|']
  lines += [f'| {name} | {t * 1e3:.1f} | {t / traced:.0%} |' for name, t in by_category.most_common()]
  lines += ['', f'The {TOP.value} most expensive compiled ops:', '', '| ms per step | op | shape, kind, origin |',
            '|---|---|---|']
  lines += [f'| {t * 1e3:.2f} | {name} | `{shortened(described.get(name, "?"))}` |'
            for name, t in times.most_common(TOP.value)]
  print_report('\n'.join(lines) + '\n', OUT.value)


if __name__ == '__main__':
  app.run(main)
