"""The written corpus as a TFDS dataset, without copying it: TFDS metadata beside the shards.

`write_metadata(DATA_DIR)` (scripts/preprocess.py runs it once the corpus is complete) adds TFDS's
dataset_info.json and features.json. Then either loads the shards:
  tfds.builder_from_directory(DATA_DIR)                  # any DATA_DIR
  tfds.builder('merlot_corpus', data_dir=ROOT)           # when DATA_DIR is ROOT/merlot_corpus/1.0.0
Features are those of record_format.py, all 1-D; frames stay JPEG bytes because the frames of one example
may come from videos of different sizes.
"""

import json
import os

import numpy as np

from merlot_jax.data import record_format
from merlot_jax.extras import import_extra

tf = import_extra('tensorflow', 'data')
tfds = import_extra('tensorflow_datasets', 'data')

NAME = 'merlot_corpus'
VERSION = '1.0.0'
FILENAME_TEMPLATE = '{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}'  # train-00000-of-00008.tfrecord


def features() -> tfds.features.FeaturesDict:
  ints = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int64)
  strings = lambda: tfds.features.Tensor(shape=(None,), dtype=tf.string)
  return tfds.features.FeaturesDict({
      'frames': strings(), 'video_id': strings(),
      'tokens_raw': ints(), 'tokens_raw_len': ints(), 'tokens_clean': ints(), 'tokens_clean_len': ints(),
      'video_src_index': ints(), 'is_end_of_video': ints(),
      'times': tfds.features.Tensor(shape=(None,), dtype=np.float32),
  })


def write_metadata(data_dir: str) -> None:
  """Writes the TFDS metadata of a complete corpus in `data_dir` (shard sizes from its manifest)."""
  manifest_path = os.path.join(data_dir, record_format.MANIFEST)
  if not tf.io.gfile.exists(manifest_path):
    raise FileNotFoundError(f'{manifest_path}: not found; write the corpus first (scripts/preprocess.py)')
  with tf.io.gfile.GFile(manifest_path) as f:
    manifest = json.load(f)
  if not manifest['complete']:
    raise ValueError(f'{manifest_path}: the corpus is incomplete ({manifest["shards_written"]} of '
                     f'{manifest["shards"]} shards); rerun scripts/preprocess.py to finish it')
  if not manifest['examples']:
    raise ValueError(f'{manifest_path}: the corpus has no examples (each needs {manifest["num_segments"]} '
                     f'segments; skipped videos: {manifest["skipped"]})')
  files = sorted(manifest['shard_examples'])
  template = tfds.core.ShardedFileTemplate(data_dir=data_dir, template=FILENAME_TEMPLATE, dataset_name=NAME,
                                           filetype_suffix='tfrecord')
  split = tfds.core.SplitInfo(
      name='train', shard_lengths=[manifest['shard_examples'][f] for f in files],
      num_bytes=sum(tf.io.gfile.stat(os.path.join(data_dir, f)).length for f in files),
      filename_template=template)
  tfds.folder_dataset.write_metadata(
      data_dir=data_dir, features=features(), split_infos=[split], version=VERSION, filename_template=template,
      check_data=False, description=f'MERLOT pretraining corpus: {manifest["examples"]} examples of '
                                    f'{manifest["num_segments"]} segments, tokenizer {manifest["tokenizer"]}')
