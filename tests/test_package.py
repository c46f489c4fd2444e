"""The built wheel carries everything the C++ kernels need: installed outside the source tree, they compile from
the installed files and serve `anna` and `anna_softmax`; a kernel source missing there is an error."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVES = '''
import os, sys
import jax, jax.numpy as jnp, numpy as np
import anna_jax
from anna_jax import cpu_kernel, kernel_build
from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.anna_softmax import ANNASoftmaxConfig, anna_softmax_attention
site = sys.argv[1]
assert anna_jax.__file__.startswith(site), anna_jax.__file__
assert kernel_build.SOURCES[0].startswith(site) and cpu_kernel.available()
assert any(name.endswith('.so') for name in os.listdir(os.environ['ANNA_JAX_CACHE']))
q, k, v = (jax.random.normal(jax.random.key(i), (1, 32, 2, 8)) for i in range(3))
for fn, make in ((anna_attention, ANNAConfig), (anna_softmax_attention, ANNASoftmaxConfig)):
  outs = []
  for plan in ('cpu_kernel', 'accelerator'):
    config = make(num_tables=2, num_hashes=2, loop_plan=plan)
    outs.append(fn(q, k, v, draw_projections(jax.random.key(5), 2, 8, config), config, causal=True)[0])
  assert cpu_kernel.available()
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
print('served')
'''

MISSING = '''
import os, sys
from anna_jax import cpu_kernel, kernel_build
os.remove(kernel_build.HEADERS[0])
try:
  cpu_kernel.available()
except cpu_kernel.KernelBuildError as e:
  print('error:', e)
'''


@pytest.mark.slow
def test_the_wheel_installed_elsewhere_compiles_and_serves_the_kernels(tmp_path):
  wheels = tmp_path / 'wheels'
  # Built from a copy: an in-tree build would leave build/ in the checkout, whose stale files later wheels take.
  source = tmp_path / 'source'
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns('.venv', '.git', 'build', 'runs', '*.egg-info',
                                                               '__pycache__', 'results'))
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', '--no-build-isolation',
                  '--disable-pip-version-check', '-w', str(wheels), str(source)], check=True, capture_output=True)
  (wheel,) = wheels.glob('anna_jax-*.whl')
  names = zipfile.ZipFile(wheel).namelist()
  for name in ('anna_cpu.cc', 'anna_softmax_cpu.cc', 'kernel_common.h'):
    assert f'anna_jax/kernels/{name}' in names
  site = tmp_path / 'site'
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--disable-pip-version-check',
                  '--target', str(site), str(wheel)], check=True, capture_output=True)
  env = dict(os.environ, PYTHONPATH=str(site), ANNA_JAX_CACHE=str(tmp_path / 'cache'), JAX_PLATFORMS='cpu',
             XLA_FLAGS='')
  served = subprocess.run([sys.executable, '-c', SERVES, str(site)], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
  assert served.returncode == 0 and 'served' in served.stdout, served.stderr[-3000:]
  env['ANNA_JAX_CACHE'] = str(tmp_path / 'fresh-cache')  # nothing built yet: the sources are read
  missing = subprocess.run([sys.executable, '-c', MISSING], cwd=tmp_path, env=env, capture_output=True, text=True)
  assert 'error:' in missing.stdout and 'kernel_common.h is missing' in missing.stdout, missing.stderr[-3000:]
