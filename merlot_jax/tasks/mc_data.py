"""Multiple-choice video and image QA (TVQA-like, VCR-like) from local files, through TFDS builders.

Nothing is downloaded: each builder reads a manual directory laid out as below (TFDS `manual_dir`).

TVQA-like (`tvqa_multiple_choice`): MANUAL_DIR/<split>.jsonl (split in train | val | test), one JSON
object per line:
  {"id": "s01e02_0001", "frames": ["frames/s01e02_0001/0.jpg", ...],   # JPEGs in time order, paths
   "subtitles": "Sheldon: ...", "question": "What is ...?",             # relative to MANUAL_DIR
   "answers": ["...", "...", "...", "...", "..."], "label": 2}          # 5 answers, label in 0..4

VCR-like (`vcr_multiple_choice`): MANUAL_DIR/<split>.jsonl, one JSON object per line:
  {"id": "val-0", "image": "images/val-0.jpg", "question": "Why is person1 smiling?",
   "answers": [4 str], "rationales": [4 str], "answer_label": 1, "rationale_label": 3}
  Object references are plain words (e.g. "person1"); VCR's token lists must be joined beforehand.

Problems: a dataset example becomes one or more `Problem`s (TVQA: one, head 0; VCR: Q->A with head 0
and QA->R with head 1, whose context is the question plus the right answer, as VCR's evaluation).
`mc_batches` turns problems into model inputs (see finetune.py for the model side):
  images   uint8 [b, N, H, W, 3]: the problem's frames (TVQA: N evenly spaced frames; VCR: N = 1)
  input_ids int32 [b, K, N, T]: per option, segment 0 = START + context + option (the context cut
           first when too long), segments 1.. = START + the next T - 1 subtitle tokens (0-padded)
  label int32 [b], head int32 [b], weight float32 [b] (0 on padding rows), example_id str [b]
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
from collections.abc import Callable, Iterable, Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from merlot_jax.data.pipeline import decode_frames
from merlot_jax.data.tokenizer import PAD, START, Tokenizer

SPLITS = ('train', 'val', 'test')
TVQA_OPTIONS, VCR_OPTIONS = 5, 4


@dataclasses.dataclass(frozen=True)
class Problem:
  """One multiple-choice question over some frames."""
  example_id: str
  jpegs: tuple[bytes, ...]
  context: str
  options: tuple[str, ...]
  label: int
  head: int = 0
  subtitles: str = ''


def _read_jsonl(path: pathlib.Path) -> Iterator[dict]:
  with path.open() as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          yield json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}:{number}: not JSON ({e})') from e


def _file(manual_dir: pathlib.Path, relative: str, source: str) -> pathlib.Path:
  path = manual_dir / relative
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing (listed in {source})')
  return path


def _check(entry: dict, source: str, fields: dict[str, type], options: dict[str, int]) -> None:
  for name, kind in fields.items():
    if not isinstance(entry.get(name), kind):
      raise ValueError(f'{source}: example {entry.get("id")!r} field {name!r} must be a {kind.__name__}')
  for name, count in options.items():
    if len(entry[name]) != count:
      raise ValueError(f'{source}: example {entry["id"]!r} has {len(entry[name])} {name}, expected {count}')


class _ManualBuilder(tfds.core.GeneratorBasedBuilder):
  """A builder over MANUAL_DIR/<split>.jsonl; subclasses define the features and `_example`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version (JSONL + JPEG files).'}
  # TFDS looks for a checksums file next to the builder's code; a manual-only dataset has none (see story_data).
  code_path = None

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = pathlib.Path(dl_manager.manual_dir)
    splits = [s for s in SPLITS if (manual / f'{s}.jsonl').is_file()]
    if not splits:
      raise FileNotFoundError(f'{manual} has no <split>.jsonl:\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return {s: self._generate_examples(manual, s) for s in splits}

  def _generate_examples(self, manual: pathlib.Path, split: str):
    source = manual / f'{split}.jsonl'
    for entry in _read_jsonl(source):
      yield str(entry.get('id')), self._example(manual, entry, str(source))


class TvqaMultipleChoice(_ManualBuilder):
  """TVQA-like video QA: frames, subtitles, a question and 5 answers."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  manual_dir/<split>.jsonl (split: train | val | test), one object per line:
    {"id", "frames": [JPEG paths relative to manual_dir], "subtitles", "question", "answers": [5], "label"}
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        'id': tfds.features.Text(),
        'frames': tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')),
        'subtitles': tfds.features.Text(),
        'question': tfds.features.Text(),
        'answers': tfds.features.Sequence(tfds.features.Text(), length=TVQA_OPTIONS),
        'label': tfds.features.ClassLabel(num_classes=TVQA_OPTIONS),
    }))

  def _example(self, manual: pathlib.Path, entry: dict, source: str) -> dict:
    _check(entry, source, {'id': str, 'frames': list, 'subtitles': str, 'question': str, 'answers': list,
                           'label': int}, {'answers': TVQA_OPTIONS})
    if not entry['frames']:
      raise ValueError(f'{source}: example {entry["id"]!r} has no frames')
    return {**{k: entry[k] for k in ('id', 'subtitles', 'question', 'answers', 'label')},
            'frames': [_file(manual, f, source) for f in entry['frames']]}


class VcrMultipleChoice(_ManualBuilder):
  """VCR-like image QA: an image, a question, 4 answers and 4 rationales with their labels."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  manual_dir/<split>.jsonl (split: train | val | test), one object per line:
    {"id", "image": JPEG path relative to manual_dir, "question", "answers": [4], "rationales": [4],
     "answer_label", "rationale_label"}
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        'id': tfds.features.Text(),
        'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
        'question': tfds.features.Text(),
        'answers': tfds.features.Sequence(tfds.features.Text(), length=VCR_OPTIONS),
        'rationales': tfds.features.Sequence(tfds.features.Text(), length=VCR_OPTIONS),
        'answer_label': tfds.features.ClassLabel(num_classes=VCR_OPTIONS),
        'rationale_label': tfds.features.ClassLabel(num_classes=VCR_OPTIONS),
    }))

  def _example(self, manual: pathlib.Path, entry: dict, source: str) -> dict:
    _check(entry, source, {'id': str, 'image': str, 'question': str, 'answers': list, 'rationales': list,
                           'answer_label': int, 'rationale_label': int},
           {'answers': VCR_OPTIONS, 'rationales': VCR_OPTIONS})
    keys = ('id', 'question', 'answers', 'rationales', 'answer_label', 'rationale_label')
    return {**{k: entry[k] for k in keys}, 'image': _file(manual, entry['image'], source)}


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


def tvqa_problems(example: dict) -> list[Problem]:
  """A decoded-free TFDS example (JPEG bytes kept) -> its one problem."""
  return [Problem(_text(example['id']), tuple(bytes(j) for j in example['frames']), _text(example['question']),
                  tuple(_text(a) for a in example['answers']), int(example['label']),
                  subtitles=_text(example['subtitles']))]


def vcr_problems(example: dict) -> list[Problem]:
  """A TFDS example -> Q->A (head 0) and QA->R (head 1; context: question + the right answer)."""
  image, question = (bytes(example['image']),), _text(example['question'])
  answers = tuple(_text(a) for a in example['answers'])
  label = int(example['answer_label'])
  return [Problem(_text(example['id']), image, question, answers, label, head=0),
          Problem(_text(example['id']), image, f'{question} {answers[label]}',
                  tuple(_text(r) for r in example['rationales']), int(example['rationale_label']), head=1)]


BUILDERS: dict[str, tuple[type[_ManualBuilder], Callable[[dict], list[Problem]], str]] = {
    'tvqa': (TvqaMultipleChoice, tvqa_problems, 'frames'),
    'vcr': (VcrMultipleChoice, vcr_problems, 'image'),
}


def load_problems(task: str, manual_dir: str | pathlib.Path, split: str, *, data_dir: str | None = None,
                  shuffle_seed: int | None = None, shuffle_buffer: int = 1024) -> Iterator[Problem]:
  """Prepares the task's TFDS dataset from `manual_dir` (once) and yields the problems of `split`,
  shuffled through a buffer when `shuffle_seed` is given."""
  if task not in BUILDERS:
    raise ValueError(f'task {task!r}: must be one of {sorted(BUILDERS)}')
  builder_cls, to_problems, image_key = BUILDERS[task]
  builder = builder_cls(data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  if split not in builder.info.splits:
    raise ValueError(f'{builder.name} has splits {list(builder.info.splits)}, not {split!r} '
                     f'(is {manual_dir}/{split}.jsonl there?)')
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                          decoders={image_key: tfds.decode.SkipDecoding()})
  if shuffle_seed is not None:
    ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed)
  for example in ds.as_numpy_iterator():
    yield from to_problems(example)


# --- model inputs --------------------------------------------------------------------------------


def option_ids(tokenizer: Tokenizer, context: str, option: str, subtitles: str, num_segments: int,
               segment_length: int) -> np.ndarray:
  """int32 [num_segments, segment_length] for one option (layout in the module docstring)."""
  ctx, opt = tokenizer.encode(context), tokenizer.encode(option)[:segment_length - 1]
  first = [START] + ctx[:segment_length - 1 - len(opt)] + opt
  sub = tokenizer.encode(subtitles) if num_segments > 1 else []
  rows = [first] + [[START] + sub[i * (segment_length - 1):(i + 1) * (segment_length - 1)]
                    for i in range(num_segments - 1)]
  return np.array([r + [PAD] * (segment_length - len(r)) for r in rows], np.int32)


def frame_choice(num_available: int, num_frames: int) -> np.ndarray:
  """Indices of `num_frames` evenly spaced frames (the centres of equal spans; repeats if too few)."""
  return np.floor((np.arange(num_frames) + 0.5) * num_available / num_frames).astype(np.int64)


def mc_batches(problems: Iterable[Problem], config: ml_collections.ConfigDict, tokenizer: Tokenizer,
               batch_size: int, *, drop_remainder: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Batches of model inputs (module docstring); the last one padded with weight-0 copies unless dropped."""
  m, k = config.model, config.finetune.num_options
  decode = tf.function(lambda jpegs: decode_frames(jpegs, None, config.data, tuple(m.image_size), 'original'),
                       input_signature=[tf.TensorSpec([None], tf.string)])
  rows = []

  def batch() -> dict[str, np.ndarray]:
    valid = len(rows)
    rows.extend([{**rows[-1], 'weight': np.float32(0)}] * (batch_size - valid))
    out = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
    rows.clear()
    return out

  for p in problems:
    if len(p.options) != k:
      raise ValueError(f'problem {p.example_id} has {len(p.options)} options; config.finetune.num_options = {k}')
    jpegs = [p.jpegs[i] for i in frame_choice(len(p.jpegs), m.num_segments)]
    ids = [option_ids(tokenizer, p.context, o, p.subtitles, m.num_segments, m.segment_length) for o in p.options]
    rows.append({'images': decode(tf.constant(jpegs)).numpy(), 'input_ids': np.stack(ids),
                 'label': np.int32(p.label), 'head': np.int32(p.head), 'weight': np.float32(1),
                 'example_id': np.asarray(p.example_id)})
    if len(rows) == batch_size:
      yield batch()
  if rows and not drop_remainder:
    yield batch()


def training_batches(load: Callable[[int], Iterable[Problem]], config: ml_collections.ConfigDict,
                     tokenizer: Tokenizer, start_step: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless full batches of config.train.global_batch_size, epoch e reading `load(seed + e)`;
  resuming at `start_step` skips the problems already seen."""
  b = config.train.global_batch_size
  epochs = (load(config.data.seed + e) for e in itertools.count())
  problems = itertools.islice(itertools.chain.from_iterable(epochs), start_step * b, None)
  return mc_batches(problems, config, tokenizer, b, drop_remainder=True)
