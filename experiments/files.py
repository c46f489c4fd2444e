"""Atomic file writes: a reader (or a killed run) sees the old file or the new one, never half of one."""

import os


def write_atomic(path, data):
  """Writes str or bytes to `path` through a temporary file and a rename."""
  tmp = f'{path}.tmp'
  with open(tmp, 'wb' if isinstance(data, bytes) else 'w') as f:
    f.write(data)
  os.replace(tmp, path)
