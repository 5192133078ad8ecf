"""TensorBoard event files without TensorFlow: what the writer writes reads back (the latest write of a
step wins), TensorBoard's own loader sees scalars-plugin tensors, a corrupt record is named, and the
train path leaves TensorFlow unimported. (tests/train/test_loop.py reads a run's files with TensorFlow.)"""

import pathlib
import subprocess
import sys
import textwrap

import pytest
from tensorboard.backend.event_processing import event_accumulator

from merlot_jax.train import summary

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_scalars_read_back_by_step_with_the_latest_write_winning(tmp_path):
  first = summary.SummaryWriter(tmp_path)
  first.scalars(1, {'loss': 3.0, 'mfu': 0.25})
  first.scalars(2, {'loss': 2.5})
  first.close()
  resumed = summary.SummaryWriter(tmp_path)  # a run resumed from step 1 logs step 2 again
  resumed.scalars(2, {'loss': 2.0})
  resumed.scalars(3, {'loss': 1.5})
  resumed.close()
  assert len(list(tmp_path.glob('events.out.tfevents.*.v2'))) == 2
  assert summary.read_scalars(tmp_path) == {'loss': [(1, 3.0), (2, 2.0), (3, 1.5)], 'mfu': [(1, 0.25)]}


def test_tensorboard_loads_them_as_scalars(tmp_path):
  writer = summary.SummaryWriter(tmp_path)
  writer.scalars(5, {'eval/loss': 0.5})
  writer.close()
  loader = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={event_accumulator.TENSORS: 0})
  loader.Reload()
  assert loader.Tags()['tensors'] == ['eval/loss']
  assert loader.SummaryMetadata('eval/loss').plugin_data.plugin_name == 'scalars'
  (event,) = loader.Tensors('eval/loss')
  assert event.step == 5 and event.tensor_proto.float_val == [0.5]


def test_a_truncated_last_record_ends_the_file_and_a_corrupt_one_is_named(tmp_path):
  writer = summary.SummaryWriter(tmp_path)
  writer.scalars(1, {'loss': 1.0})
  writer.scalars(2, {'loss': 0.5})
  writer.close()
  (path,) = tmp_path.iterdir()
  data = path.read_bytes()
  path.write_bytes(data[:-3])  # a writer killed mid-record
  assert summary.read_scalars(tmp_path) == {'loss': [(1, 1.0)]}
  corrupt = bytearray(data)
  corrupt[-6] ^= 0xFF
  path.write_bytes(bytes(corrupt))
  with pytest.raises(ValueError, match=f'{path.name}: the record at byte .* fails its CRC check'):
    summary.read_scalars(tmp_path)


NO_TENSORFLOW = textwrap.dedent('''
    import sys
    from merlot_jax.pretraining import report
    from merlot_jax.train import loop, metrics  # loop: everything a training run imports
    from tests.train.batches import micro_config

    logger = metrics.MetricsLogger(micro_config(), {workdir!r}, total_steps=2, start_step=0, progress=False)
    logger.log_compile(1, 2.0)
    logger.write(2, {{'loss': 1.5}})
    logger.close()
    print(report.read_scalars({workdir!r} + '/train'))
    print('tensorflow' in sys.modules)
''')


def test_the_train_path_imports_no_tensorflow(tmp_path):
  code = NO_TENSORFLOW.format(workdir=str(tmp_path))
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  scalars, imported = proc.stdout.strip().splitlines()[-2:]
  assert scalars == str({'compile_seconds': [(1, 2.0)], 'loss': [(2, 1.5)]})
  assert imported == 'False', 'TensorFlow was imported on the train path'
