import os
import shutil
import tempfile

# Multi-device tests need 8 CPU devices; the flag must be set before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# The suite compiles the same small programs again and again (every `experiments.main` process, a resumed sweep,
# a re-evaluated grid, both halves of a distributed run), and compiling was most of that time: the test processes
# and every process they start share one persistent compilation cache per test run, of programs that took >= 1 s
# to compile. Measured on the 2-core VM, one file set after the other: test_experiments + test_grid 230 s without
# it, 139 s with it (207 s with it in the started processes only); test_baselines + test_anna_softmax, whose
# programs are seldom compiled twice, 149 s without and 163 s with it (every compile computes its cache key).
# Fresh per run, removed when the run ends. JAX reads only a program whose key (program, flags, devices,
# versions) matches, so results are the same as without it; an entry read while another process writes it is a
# warning and a recompile, not an error.
if 'ANNA_JAX_TEST_COMPILE_CACHE' not in os.environ:
  os.environ['ANNA_JAX_TEST_COMPILE_CACHE'] = tempfile.mkdtemp(prefix='anna-jax-test-compile-cache-')
  _OWNS_CACHE = True  # the process that made it removes it: the xdist controller (the workers inherit it), or -n 0
else:
  _OWNS_CACHE = False
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.environ['ANNA_JAX_TEST_COMPILE_CACHE'])
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')


def pytest_unconfigure(config):
  if _OWNS_CACHE:
    shutil.rmtree(os.environ['ANNA_JAX_TEST_COMPILE_CACHE'], ignore_errors=True)
