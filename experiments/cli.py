"""What every command line of ours shares: bad input is one line on stderr and exit code 2 (never a
traceback), and the console shows short progress lines without library noise."""

import functools
import logging as std_logging
import os
import sys
import tempfile
import time

from absl import flags, logging


def fail(message, program='anna-jax'):
  print(f'{program}: error: {message}', file=sys.stderr)
  sys.exit(2)


def first_line(error):
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def parse_flags(argv, program='anna-jax'):
  """absl's flag parsing, with every parse error (bad value, unknown flag) as one line and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, TypeError, AttributeError, KeyError) as e:
    fail(first_line(e), program)


def flags_parser(program):
  return functools.partial(parse_flags, program=program)


def writable_dir(path, program='anna-jax'):
  """Creates `path` if needed and checks that a file can be written there, before any work starts."""
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix='.write-check-'):
      pass
  except OSError as e:
    fail(f'cannot write to {path}: {e.strerror or first_line(e)}', program)


class _ShortFormatter(std_logging.Formatter):
  """'HH:MM:SS message' (absl's default prefix alone is 45 columns)."""

  def format(self, record):
    stamp = time.strftime('%H:%M:%S', time.localtime(record.created))
    level = '' if record.levelno < std_logging.WARNING else f'{record.levelname}: '
    return f'{stamp} {level}{record.getMessage()}'


def quiet_console():
  """Short log lines; no backend probing ('Unable to initialize backend tpu') or per-save Orbax INFO lines."""
  for name in ('jax._src.xla_bridge', 'absl.orbax', 'orbax'):
    std_logging.getLogger(name).setLevel(std_logging.WARNING)
  handler = logging.get_absl_handler()
  handler.setFormatter(_ShortFormatter())
  handler.python_handler.addFilter(lambda r: r.levelno >= std_logging.WARNING or 'orbax' not in r.pathname)
