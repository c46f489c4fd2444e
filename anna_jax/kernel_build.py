"""Building and registering the C++ kernels of the CPU loop plan 'cpu_kernel' (kernels/anna_cpu.cc,
kernels/anna_softmax_cpu.cc): compiled on first use into one library, registered with XLA as FFI targets. The
ops and their custom VJPs are `anna_jax.cpu_kernel`.

Built once per machine with the system C++ compiler ($CXX, default c++) against jaxlib's bundled XLA FFI
headers, into $ANNA_JAX_CACHE (default ~/.cache/anna_jax), keyed by the source, the flags, the compiler, jaxlib
and the CPU, so a cluster's nodes sharing a home directory never load each other's -march=native builds. Without
a C++ compiler `available()` is False (and says why once): loop_plan 'auto' then runs 'cpu_xla', pure XLA with
the same outputs, only slower. That fallback is for a machine without a compiler only: a kernel source missing
from the installed package, or a compiler that fails on it, raises `KernelBuildError` (a broken install must
not silently run the slow plan).
"""

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile

import jax
import jaxlib
from absl import logging

TARGETS = {'anna_bucket_attend': 'AnnaBucketAttend', 'anna_hyperplane_codes': 'AnnaHyperplaneCodes',
           'anna_softmax_forward': 'AnnaSoftmaxForward', 'anna_softmax_backward': 'AnnaSoftmaxBackward'}
_KERNELS = os.path.join(os.path.dirname(__file__), 'kernels')
SOURCES = tuple(os.path.join(_KERNELS, name) for name in ('anna_cpu.cc', 'anna_softmax_cpu.cc'))
HEADERS = (os.path.join(_KERNELS, 'kernel_common.h'),)
_FLAGS = ('-O3', '-std=c++17', '-shared', '-fPIC')
_NATIVE = ('-march=native',)


def _cpu_signature():
  """What the compiled code may depend on: the CPU model and its flags (Linux), else the machine type."""
  try:
    with open('/proc/cpuinfo') as f:
      lines = [line for line in f if line.startswith(('model name', 'flags', 'Features'))]
    return ''.join(sorted(set(lines)))
  except OSError:
    return platform.processor() or platform.machine()


def _cache_dir():
  path = os.environ.get('ANNA_JAX_CACHE') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'anna_jax')
  try:
    os.makedirs(path, exist_ok=True)
    if os.access(path, os.W_OK):
      return path
  except OSError:
    pass
  return tempfile.mkdtemp(prefix='anna_jax_')


def _compile(compiler, flags, output):
  """Compiles SOURCES to `output` (atomically: a half-written library is never loaded); the error, or None."""
  partial = f'{output}.{os.getpid()}.tmp'
  command = [compiler, *flags, f'-I{jax.ffi.include_dir()}', *SOURCES, '-o', partial]
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
  except (OSError, subprocess.SubprocessError) as e:
    return f'{compiler}: {e}'
  if result.returncode != 0:
    errors = [line for line in result.stderr.splitlines() if 'error' in line] or [f'{compiler} failed']
    return errors[0].strip()
  os.replace(partial, output)
  return None


class NoCompiler(RuntimeError):
  """This machine has no C++ compiler: the kernels' callers fall back to the XLA plans."""


class KernelBuildError(RuntimeError):
  """A kernel source is missing or does not compile: an error, never a silent fallback."""


def _build():
  """Path of the built library (compiling it if this machine has none yet); raises NoCompiler or
  KernelBuildError if it cannot."""
  source = b''
  for path in SOURCES + HEADERS:
    try:
      with open(path, 'rb') as f:
        source += f.read()
    except OSError as e:
      raise KernelBuildError(f'the anna CPU kernel source {path} is missing from the installed package ({e}); '
                             f'reinstall anna-jax') from None
  compiler = os.environ.get('CXX', 'c++')
  try:
    version = subprocess.run([compiler, '--version'], capture_output=True, text=True, timeout=60).stdout
  except (OSError, subprocess.SubprocessError) as e:
    raise NoCompiler(f'no C++ compiler ({compiler}: {e})') from None
  errors, cache = [], _cache_dir()
  for flags in (_FLAGS + _NATIVE, _FLAGS):  # -march=native where the compiler knows it
    key = hashlib.sha256(repr((source, flags, version, jaxlib.__version__, _cpu_signature())).encode())
    output = os.path.join(cache, f'anna_cpu_{key.hexdigest()[:16]}.so')
    if os.path.exists(output):
      return output
    error = _compile(compiler, flags, output)
    if error is None:
      return output
    errors.append(error)
  raise KernelBuildError(f'could not compile the anna CPU kernels in {_KERNELS} with {compiler}: {errors[-1]} '
                         f"(loop_plan='cpu_xla' runs without them)")


@functools.cache
def available():
  """Builds and registers the kernel once per process; False (logged once) on a machine without a C++
  compiler; KernelBuildError where a source is missing or does not compile."""
  try:
    path = _build()
  except NoCompiler as e:
    logging.warning("anna: no CPU kernel (%s); loop_plan 'auto' runs 'cpu_xla' (the XLA loops), slower", e)
    return False
  try:
    library = ctypes.cdll.LoadLibrary(path)
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')
  except (RuntimeError, OSError) as e:
    logging.warning("anna: no CPU kernel (%s); loop_plan 'auto' runs 'cpu_xla' (the XLA loops), slower", e)
    return False
  return True


def require():
  """For loop_plan='cpu_kernel': an error naming why where the kernels are not available."""
  if not available():
    raise RuntimeError("loop_plan='cpu_kernel' needs the anna C++ kernels, which could not be built here (see the "
                       "warning above); use loop_plan='auto' or 'cpu_xla'")
