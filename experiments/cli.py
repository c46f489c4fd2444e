"""What every command line of ours does with bad input: one line on stderr, exit code 2."""

import sys


def fail(message, program='anna-jax'):
  print(f'{program}: error: {message}', file=sys.stderr)
  sys.exit(2)
