"""What every command line of experiments, benchmarks and launch shares: bad input is one line on stderr and exit
code 2 (never a traceback), short console lines without library noise, atomic file writes (a reader or a killed
run sees the old file or the new one, never half of one), and TensorBoard event files written with the
tensorboard package alone (no TensorFlow: scalars, PNG images, the HParams dashboard; only process 0 writes)."""

import functools
import logging as std_logging
import os
import sys
import tempfile
import time

import jax
from absl import flags, logging
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2
from tensorboard.plugins.hparams import api_pb2, metadata as hparams_metadata, plugin_data_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


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


def write_atomic(path, data):
  """Writes str or bytes to `path` through a temporary file and a rename."""
  tmp = f'{path}.tmp'
  with open(tmp, 'wb' if isinstance(data, bytes) else 'w') as f:
    f.write(data)
  os.replace(tmp, path)

def compiled_bytes(compiled):
  """Memory of a compiled program as XLA plans it: arguments + outputs - what they alias + temporaries (the same
  on every run of the program); None where the backend gives no analysis."""
  memory = compiled.memory_analysis()
  if memory is None:
    return None
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
             + memory.temp_size_in_bytes)


def format_seconds(seconds):
  """'1h02m' or '3m05s'."""
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


class SummaryWriter:
  def __init__(self, logdir):
    self._writer = EventFileWriter(str(logdir)) if jax.process_index() == 0 else None

  def _write(self, step, *values):
    if self._writer is not None:
      summary = summary_pb2.Summary(value=list(values))
      self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def scalars(self, step, scalars):
    self._write(step, *(summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
                        for tag, value in scalars.items()))

  def image(self, step, tag, png_bytes, height, width):
    image = summary_pb2.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png_bytes)
    self._write(step, summary_pb2.Summary.Value(tag=tag, image=image))

  def _hparams_value(self, tag, plugin_data):
    return summary_pb2.Summary.Value(
        tag=tag, metadata=hparams_metadata.create_summary_metadata(plugin_data),
        tensor=tensor_pb2.TensorProto(dtype=1))  # the payload lives in the metadata; DT_FLOAT, empty

  def hparams_experiment(self, hparam_names, metric_tags):
    """The sweep's experiment: which hparams and metrics the HParams dashboard shows."""
    experiment = api_pb2.Experiment(
        hparam_infos=[api_pb2.HParamInfo(name=name) for name in hparam_names],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags])
    self._write(0, self._hparams_value(hparams_metadata.EXPERIMENT_TAG,
                                       plugin_data_pb2.HParamsPluginData(experiment=experiment)))

  def hparams_session(self, hparams):
    """Marks this run as one session of the experiment, with its hparam values."""
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams.items():
      if isinstance(value, bool):
        start.hparams[name].bool_value = value
      elif isinstance(value, (int, float)):
        start.hparams[name].number_value = value
      else:
        start.hparams[name].string_value = str(value)
    self._write(0, self._hparams_value(hparams_metadata.SESSION_START_INFO_TAG,
                                       plugin_data_pb2.HParamsPluginData(session_start_info=start)))

  def hparams_session_end(self, ok=True):
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS if ok else api_pb2.STATUS_FAILURE,
                                         end_time_secs=time.time())
    self._write(0, self._hparams_value(hparams_metadata.SESSION_END_INFO_TAG,
                                       plugin_data_pb2.HParamsPluginData(session_end_info=end)))

  def flush(self):
    if self._writer is not None:
      self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()
