"""How fast one config's train step runs under several ways of running it, timed in turns in one process (this VM
is shared: only ratios measured in the same run are compared), with the share of the FLOP bound.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/scripts/train_step_speed.py \
      --config=experiments/configs/induction_paper.py --settings=1:1,1:0,2:1,2:0 \
      --out=benchmarks/results/train_step_profile/induction_speed.md

A setting is `num_devices:microbatches` (train.num_devices, train.microbatches; 0 is automatic). The first is the
baseline of the ratios. The FLOP bound is the plain step's FLOPs (benchmarks.measure.plain_step_flops) at the
matmul peak measured in the same process (benchmarks.measure.matmul_peak). Run it with nothing else running on
the machine.
"""

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from benchmarks.measure import (compiled_train_step, device_name, matmul_peak, plain_step_flops,  # noqa: E402
                                print_report)

CONFIG = config_flags.DEFINE_config_file('config', None, 'an experiment config (experiments/configs/*.py)')
SETTINGS = flags.DEFINE_list('settings', ['1:1', '1:0'], 'num_devices:microbatches per setting; the first is the '
                             'baseline')
REPS = flags.DEFINE_integer('reps', 10, 'steps per timing')
ROUNDS = flags.DEFINE_integer('rounds', 5, 'timings per setting, in turns with the others')
OUT = flags.DEFINE_string('out', '', 'markdown file to write (default: print only)')


def step_seconds(step, args, reps):
  jax.block_until_ready(step(*args))
  start = time.perf_counter()
  for _ in range(reps):
    out = step(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / reps


def main(_):
  config = CONFIG.value
  runs = {}
  for setting in SETTINGS.value:
    num_devices, microbatches = (int(part) for part in setting.split(':'))
    runs[setting] = compiled_train_step(config, num_devices, microbatches)
  flops = plain_step_flops(config, [(trainer, step) for trainer, step, _ in runs.values()])
  times = {setting: [] for setting in runs}
  for _ in range(ROUNDS.value):
    for setting, (_, step, args) in runs.items():
      times[setting].append(step_seconds(step, args, REPS.value))
  rate = matmul_peak(jnp.float32) * 1e9
  baseline = SETTINGS.value[0]
  lines = [f'# Train-step speed: {config_flags.get_config_filename(flags.FLAGS["config"])}', '',
           f'device: {device_name()}; {jax.device_count()} JAX device(s), jax {jax.__version__}; this process may run '
           f'on {len(os.sched_getaffinity(0))} core(s); {ROUNDS.value} timings of {REPS.value} steps per setting, '
           'in turns', '',
           f'FLOPs per step (XLA cost analysis of the plain step): {flops / 1e9:.2f} G; matmul peak (f32, same '
           f'process): {rate / 1e9:.1f} GFLOP/s; FLOP bound {flops / rate * 1e3:.1f} ms', '',
           '| devices | microbatches | ms per step (median) | steps/s | share of the FLOP bound | speed-up over '
           f'{baseline} (median of the per-round ratios) |', '|---|---|---|---|---|---|']
  for setting, (trainer, _, _) in runs.items():
    seconds = statistics.median(times[setting])
    ratio = statistics.median(b / t for b, t in zip(times[baseline], times[setting]))
    lines.append(f'| {trainer.mesh.size} | {trainer.microbatches} | {seconds * 1e3:.1f} | {1 / seconds:.2f} | '
                 f'{flops / rate / seconds:.0%} | {ratio:.2f}x |')
  print_report('\n'.join(lines) + '\n', OUT.value)


if __name__ == '__main__':
  app.run(main)
