"""TensorBoard event files without TensorFlow: scalars written as TF2 summaries (float32 tensors tagged
for the scalars plugin, what `tf.summary.scalar` writes) and read back, both through etils.epath so that
a gs:// workdir works. Built on the `tensorboard` package's protobufs and record framing only: nothing
here imports TensorFlow (`tensorboard.compat.tf` would, where it is installed)."""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator, Mapping

import numpy as np
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

_SCALAR_METADATA = scalar_metadata.create_summary_metadata(display_name='', description='')


class SummaryWriter:
  """Appends scalars to a new event file in `directory`
  (events.out.tfevents.<time>.<host>.<pid>.<id>.v2, the name TensorBoard looks for)."""

  def __init__(self, directory: str | os.PathLike):
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.v2'
    self._records = RecordWriter(directory.joinpath(name).open('wb'))
    self._tagged: set[str] = set()
    self._write(event_pb2.Event(file_version='brain.Event:2'))

  def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One event at `step` holding every scalar (tag -> value)."""
    summary = summary_pb2.Summary()
    for tag, value in scalars.items():
      entry = summary.value.add(tag=tag, tensor=tensor_util.make_tensor_proto(np.float32(value)))
      if tag not in self._tagged:  # as tf.summary does: the plugin's metadata comes with a tag's first value
        entry.metadata.CopyFrom(_SCALAR_METADATA)
        self._tagged.add(tag)
    self._write(event_pb2.Event(step=step, summary=summary))

  def _write(self, event: event_pb2.Event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()


def _records(path: epath.Path) -> Iterator[bytes]:
  """The records of one event file (TFRecord framing: length, its CRC, data, its CRC); a truncated last
  record (a writer still at work, or killed) ends the file."""
  data = path.read_bytes()
  pos = 0
  while pos + 12 <= len(data):
    length, length_crc = struct.unpack_from('<QI', data, pos)
    end = pos + 12 + length + 4
    if end > len(data):
      return
    body = data[pos + 12:end - 4]
    if (length_crc != masked_crc32c(data[pos:pos + 8])
        or struct.unpack_from('<I', data, end - 4)[0] != masked_crc32c(body)):
      raise ValueError(f'{path}: the record at byte {pos} fails its CRC check; the file is corrupt')
    yield body
    pos = end


def read_scalars(directory: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """Every TF2 scalar in the event files of `directory` as {tag: [(step, value), ...]}, sorted by step.
  Where a step was written more than once (a resumed run repeats the steps after its last checkpoint),
  the latest write wins."""
  events = sorted((event_pb2.Event.FromString(record) for path in epath.Path(directory).glob('*tfevents*')
                   for record in _records(path)), key=lambda e: e.wall_time)
  by_tag: dict[str, dict[int, float]] = {}
  for event in events:
    for value in event.summary.value:
      if value.HasField('tensor'):
        by_tag.setdefault(value.tag, {})[event.step] = float(tensor_util.make_ndarray(value.tensor))
  return {tag: sorted(steps.items()) for tag, steps in by_tag.items()}
