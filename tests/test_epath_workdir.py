"""A gs:// workdir works end to end: every file a run writes goes through etils.epath, so with gs:// served
by a fake bucket on local disk, a training run, a params checkpoint and the reports land in the bucket and
nothing in the working directory (pathlib would have made a folder named 'gs:').

The fake: epath's local backend with gs://BUCKET/PATH kept at ROOT/BUCKET/PATH (and epath's TensorFlow
backend, its default for gs:// where TensorFlow is installed, switched off), and Orbax's TensorStore arrays
pointed at the same folder (Orbax hands gs:// arrays to TensorStore's own GCS driver, which would go to
the network)."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from etils.epath import backend, gpath
from orbax.checkpoint._src.path import gcs_utils

from merlot_jax.pretrained import load_pretrained
from merlot_jax.pretraining import report
from merlot_jax.pretraining.task import PRETRAINING
from merlot_jax.tasks import features, leaderboard, msrvtt_qa
from merlot_jax.tasks import finetune as ft
from merlot_jax.train import logs, loop
from merlot_jax.workdir import save_params
from tests.train.batches import micro_config, synthetic_batches


class _FakeGcs(backend._OsPathBackend):
  """epath's local-disk backend with gs://BUCKET/PATH stored at ROOT/BUCKET/PATH."""

  def __init__(self, root: pathlib.Path):
    self.root = root

  def local(self, path) -> str:
    text = os.fspath(path)
    return os.path.join(self.root, text.removeprefix('gs://')) if text.startswith('gs://') else text

  def remote(self, path) -> str:
    return 'gs://' + os.path.relpath(path, self.root)

  def open(self, path, mode):
    if mode[0] in 'wa':  # a bucket has no folders to create first
      os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)
    return super().open(self.local(path), mode)

  def exists(self, path):
    return super().exists(self.local(path))

  def isdir(self, path):
    return super().isdir(self.local(path))

  def listdir(self, path):
    return super().listdir(self.local(path))

  def glob(self, path):
    return [self.remote(p) for p in super().glob(self.local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for root, dirs, files in super().walk(self.local(top), top_down=top_down, on_error=on_error):
      yield self.remote(root), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=None):
    super().makedirs(self.local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=None):
    super().mkdir(self.local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path):
    super().rmtree(self.local(path))

  def remove(self, path):
    super().remove(self.local(path))

  def rename(self, path, dst):
    super().rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    super().replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite):
    super().copy(self.local(path), self.local(dst), overwrite=overwrite)

  def stat(self, path):
    return super().stat(self.local(path))


@pytest.fixture
def bucket(tmp_path, monkeypatch) -> pathlib.Path:
  """The local folder behind gs://bucket; the test runs in an empty working directory, left empty."""
  fake = _FakeGcs(tmp_path / 'gcs')
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)  # cached: EPATH_USE_TF=false may come too late
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, 'gs', fake)
  monkeypatch.setattr(gcs_utils, 'get_kvstore_for_gcs', lambda path: {'driver': 'file', 'path': fake.local(path)})
  monkeypatch.setattr(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False)
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield tmp_path / 'gcs' / 'bucket'
  assert not list(cwd.iterdir()), f'written outside the bucket: {sorted(p.name for p in cwd.iterdir())}'


def test_a_training_run_and_a_params_checkpoint_write_into_the_bucket(bucket):
  config = micro_config(data=1, fsdp=1, tensor=1)
  config.train.update(total_steps=4, checkpoint_every=2, log_every=2)
  with logs.library_info_to_file('gs://bucket/run/log.txt'):
    loop.train(config, PRETRAINING, 'gs://bucket/run', lambda start, _: synthetic_batches(config, 8, start_step=start),
               progress=False, devices=jax.devices()[:1])
  run = bucket / 'run'
  assert json.loads((run / 'config.json').read_text()) == json.loads(config.to_json())
  assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['2', '4']
  assert (run / 'checkpoints' / '4' / 'state').is_dir() and (run / 'checkpoints' / '4' / 'data').is_dir()
  log = (run / 'log.txt').read_text()
  assert 'compiled the train step' in log and 'step 4 | ' in log, log
  assert [step for step, _ in report.read_scalars('gs://bucket/run/train')['loss']] == [2, 4]
  assert len(list((run / 'train').glob('events.out.tfevents.*'))) == 1

  model, loaded = load_pretrained('gs://bucket/run')  # the step-4 checkpoint's params
  save_params('gs://bucket/params', model, loaded)
  again, _ = load_pretrained('gs://bucket/params')
  assert sorted(p.name for p in (bucket / 'params').iterdir()) == ['config.json', 'params']
  for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_reports_predictions_and_features_write_into_the_bucket(bucket):
  scalars = {'loss': [(1, 2.0), (2, 1.0)]}
  report.plot_curves(scalars, 'gs://bucket/out/curves.png')
  report.write_summary('gs://bucket/out', scalars, {}, {})
  val = [ft.Prediction(str(i), 0, 1, np.eye(5)[[4, 0, 2][i]]) for i in range(3)]  # answers 4, 0, 2
  leaderboard.write_tvqa_submission(val, val, 'gs://bucket/out', 'tiny')
  leaderboard.write_predictions(val, ('answer',), 'gs://bucket/out/val_predictions.jsonl')
  msrvtt_qa.save_vocabulary('gs://bucket/out', ('yes', 'no'))
  assert msrvtt_qa.load_vocabulary('gs://bucket/out') == ('yes', 'no')
  arrays = {name: np.zeros((1, 2), np.float32) for name in features._ARRAY_FIELDS}
  video = features.VideoFeatures('a.mp4', np.zeros(1), ('hi',), np.zeros((1, 2), np.int32), **arrays)
  video.save('gs://bucket/out/a.npz')
  assert features.VideoFeatures.load('gs://bucket/out/a.npz').texts == ('hi',)
  assert (bucket / 'out' / 'curves.png').read_bytes().startswith(b'\x89PNG')
  assert leaderboard.read_tvqa_answers('gs://bucket/out/prediction_val.json') == {'0': 4, '1': 0, '2': 2}
  assert sorted(p.name for p in (bucket / 'out').iterdir()) == sorted([
      'curves.png', 'summary.txt', 'summary.json', *leaderboard.TVQA_FILES, 'tvqa_submission.zip',
      'val_predictions.jsonl', msrvtt_qa.VOCABULARY_FILE, 'a.npz'])
