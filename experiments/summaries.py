"""TensorBoard event files written with the tensorboard package alone (no TensorFlow).

Scalars, PNG images and the HParams dashboard's protos. Only process 0 writes: elsewhere it is a no-op.
"""

import time

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2
from tensorboard.plugins.hparams import api_pb2, metadata as hparams_metadata, plugin_data_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


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
