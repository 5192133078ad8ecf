"""MSRVTT-QA (Xu et al. 2017): open-ended QA over MSR-VTT clips, read from the release's own layout.

Nothing is downloaded. ROOT holds, anywhere below it:
  <split>_qa.json (split: train | val | test): a JSON list of
      {"question": "what is a man doing?", "answer": "cook", "video_id": 7010, "id": 158581, ...}
      (other keys, such as "category_id", are ignored)
  video<video_id>.mp4: the MSR-VTT archives unpack to TrainValVideo/ and TestVideo/; some copies are flat.

Frames: `num_frames` per video, at the middles of equal spans of its duration, read with PyAV
(preprocess/video.py), black bars trimmed, resized and JPEG-encoded as the pretraining corpus
(preprocess/framed_segments.py) and fitted to the model's image size as at evaluation time
(data/frames.decode_frames). A video is read once per split and shared by its questions (about 23 each in
MSRVTT-QA).

Skips: a question whose video is missing, cannot be decoded, or has no frame to show is skipped, never a
crash: counted per reason (SKIP_REASONS) in the log and in the split's summary, and counted as wrong by
open_qa.score, which scores every question of the file.

Answers: the config.finetune.num_options most frequent answers of train_qa.json (the usual 1500), the most
frequent first, ties by the answer's text. Training uses the questions whose answer is in it.

Model inputs (`qa_batches`, open_qa.OPEN_QA_BATCH_SPEC): images uint8 [b, N, H, W, 3]; input_ids int32
[b, N, L] (segment 0: START + the question, cut to L - 1 tokens; the others: START, 0-padded); answer int32
[b] (vocabulary index, -1 outside it); weight float32 [b] (0 on padding rows); question_id int64 [b].
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import json
import logging
import os
import pathlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath

from merlot_jax.data.frames import decode_frames
from merlot_jax.data.host_batches import StepIndexed
from merlot_jax.data.tokenizer import Tokenizer
from merlot_jax.extras import import_extra
from merlot_jax.preprocess import video as video_lib
from merlot_jax.tasks import finetune as ft
from merlot_jax.tasks import open_qa
from merlot_jax.tasks.mc_data import option_ids
from merlot_jax.train import state as state_lib

av = import_extra('av', 'data')
tf = import_extra('tensorflow', 'data')

log = logging.getLogger(__name__)

SPLITS = ('train', 'val', 'test')
SKIP_REASONS = (
    'missing_video',  # no video<video_id>.mp4 anywhere under the root
    'unreadable_video',  # PyAV cannot open the file or decode it at the frame times (corrupt, truncated)
    'no_frames',  # the file opens but holds no frame to show: no video stream, or a duration <= 0
)
VOCABULARY_FILE = 'answer_vocabulary.json'
_VIDEO_NAME = re.compile(r'video(\d+)\.mp4')
_VIDEO_ID = re.compile(r'(?:video)?(\d+)')


@dataclasses.dataclass(frozen=True)
class Question:
  id: int
  video_id: int
  question: str
  answer: str


class Skipped(Exception):
  """A video that cannot be used; `reason` is one of SKIP_REASONS."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f'{reason}: {detail}')
    self.reason, self.detail = reason, detail


def question_file(root: str | os.PathLike, split: str) -> pathlib.Path:
  """ROOT/<split>_qa.json, or the one file of that name below ROOT."""
  root = pathlib.Path(root)
  if split not in SPLITS:
    raise ValueError(f'split {split!r}: must be one of {SPLITS}')
  name = f'{split}_qa.json'
  found = [root / name] if (root / name).is_file() else sorted(root.rglob(name))
  if len(found) != 1:
    raise FileNotFoundError(f'{root}: expected one {name} below it, found {[str(p) for p in found] or "none"}')
  return found[0]


def _video_id(value, where: str) -> int:
  match = _VIDEO_ID.fullmatch(str(value)) if isinstance(value, int | str) else None
  if match is None:
    raise ValueError(f'{where}: field "video_id" = {value!r}; expected an integer such as 7010 (or "video7010")')
  return int(match.group(1))


def read_questions(root: str | os.PathLike, split: str) -> tuple[Question, ...]:
  """Every question of `split`, in file order."""
  path = question_file(root, split)
  try:
    entries = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not JSON ({e})') from e
  if not isinstance(entries, list):
    raise ValueError(f'{path}: expected a JSON list of questions, got {type(entries).__name__}')
  out, seen = [], set()
  for i, entry in enumerate(entries):
    where = f'{path}[{i}]'
    for field, kind in (('question', str), ('answer', str), ('id', int)):
      if not isinstance(entry.get(field), kind):
        raise ValueError(f'{where}: field {field!r} = {entry.get(field)!r}; expected a {kind.__name__}')
    if entry['id'] in seen:
      raise ValueError(f'{where}: question id {entry["id"]} appears twice')
    seen.add(entry['id'])
    out.append(Question(entry['id'], _video_id(entry.get('video_id'), where), entry['question'], entry['answer']))
  return tuple(out)


def answer_vocabulary(answers: Iterable[str], size: int) -> tuple[str, ...]:
  """The `size` most frequent answers, the most frequent first; equal counts in the answers' text order."""
  counts = collections.Counter(answers)
  if not counts or size < 1:
    raise ValueError(f'no answer vocabulary of size {size} from {len(counts)} distinct answers')
  return tuple(sorted(counts, key=lambda a: (-counts[a], a))[:size])


def save_vocabulary(workdir: str | os.PathLike, vocabulary: Sequence[str]) -> None:
  path = epath.Path(workdir) / VOCABULARY_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(list(vocabulary), indent=0))


def load_vocabulary(workdir: str | os.PathLike) -> tuple[str, ...]:
  """The vocabulary `finetune` saved in the workdir (index i = output i)."""
  path = epath.Path(workdir) / VOCABULARY_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing: the workdir of msrvtt_qa.finetune writes it')
  return tuple(json.loads(path.read_text()))


# --- videos -----------------------------------------------------------------------------------


def index_videos(root: str | os.PathLike) -> dict[int, pathlib.Path]:
  """video_id -> the path of video<video_id>.mp4 below `root` (the first in path order if there are several)."""
  index, duplicates = {}, 0
  for path in sorted(pathlib.Path(root).rglob('video*.mp4')):
    match = _VIDEO_NAME.fullmatch(path.name)
    if match and path.is_file():
      duplicates += int(match.group(1)) in index
      index.setdefault(int(match.group(1)), path)
  if duplicates:
    log.warning('%s: %d videos appear more than once; the first in path order is used', root, duplicates)
  return index


def frame_times(duration: float, num_frames: int) -> np.ndarray:
  """Seconds of `num_frames` frames: the middles of equal spans of [0, duration)."""
  return (np.arange(num_frames) + 0.5) * (duration / num_frames)


def read_video(path: pathlib.Path, num_frames: int, jpeg_quality: int = 90) -> tuple[bytes, ...]:
  """The video's frames (frame_times) as the pretraining corpus stores them; raises Skipped."""
  try:
    with av.open(str(path)) as container:
      has_video = bool(container.streams.video)
  except (av.FFmpegError, OSError) as e:
    raise Skipped('unreadable_video', f'{path}: cannot open ({e})') from e
  if not has_video:
    raise Skipped('no_frames', f'{path}: no video stream')
  try:
    duration = video_lib.probe_duration(path)
    if duration <= 0:
      raise Skipped('no_frames', f'{path}: duration {duration}s')
    frames = video_lib.read_frames(path, frame_times(duration, num_frames).tolist())
  except video_lib.VideoError as e:
    raise Skipped('unreadable_video', str(e)) from e
  return tuple(video_lib.encode_jpeg(video_lib.resize_frame(f), jpeg_quality)
               for f in video_lib.trim_black_bars(frames))


@dataclasses.dataclass(frozen=True)
class Split:
  """A split's questions (all of them, in file order), the frames of its readable videos and the rest."""
  name: str
  questions: tuple[Question, ...]
  frames: Mapping[int, tuple[bytes, ...]]  # video_id -> num_frames JPEGs
  skipped_videos: Mapping[int, Skipped]  # video_id -> why it cannot be used

  @property
  def usable(self) -> tuple[Question, ...]:
    return tuple(q for q in self.questions if q.video_id in self.frames)

  def summary(self) -> dict:
    """Question and video counts, skips per reason (every reason listed) and every skipped video."""
    per_question = collections.Counter(self.skipped_videos[q.video_id].reason for q in self.questions
                                       if q.video_id in self.skipped_videos)
    per_video = collections.Counter(s.reason for s in self.skipped_videos.values())
    return {'split': self.name, 'questions': len(self.questions), 'usable': len(self.usable),
            'videos': len(self.frames) + len(self.skipped_videos),
            'skipped_questions': {r: per_question[r] for r in SKIP_REASONS},
            'skipped_videos': {r: per_video[r] for r in SKIP_REASONS},
            'skipped': [{'video_id': v, 'reason': s.reason, 'detail': s.detail}
                        for v, s in sorted(self.skipped_videos.items())]}


def _log_skips(summary: dict) -> None:
  skipped = sum(summary['skipped_questions'].values())
  counts = ', '.join(f'{r} {summary["skipped_questions"][r]} ({summary["skipped_videos"][r]} videos)'
                     for r in SKIP_REASONS)
  log.log(logging.WARNING if skipped else logging.INFO, 'MSRVTT-QA %s: %d of %d questions usable; skipped %d: %s',
          summary['split'], summary['usable'], summary['questions'], skipped, counts)
  for reason in SKIP_REASONS:
    examples = [s['detail'] for s in summary['skipped'] if s['reason'] == reason][:3]
    if examples:
      log.warning('MSRVTT-QA %s: %s, e.g. %s', summary['split'], reason, '; '.join(examples))


def load_split(root: str | os.PathLike, split: str, num_frames: int, *, workers: int | None = None,
               progress: bool = False) -> Split:
  """Reads `split`'s questions and the frames of its videos (each once, `workers` threads); logs the skips."""
  questions = read_questions(root, split)
  index = index_videos(root)
  wanted = sorted({q.video_id for q in questions})

  def one(video_id: int) -> tuple[bytes, ...] | Skipped:
    if video_id not in index:
      return Skipped('missing_video', f'video{video_id}.mp4 is not below {root}')
    try:
      return read_video(index[video_id], num_frames)
    except Skipped as e:
      return e

  with concurrent.futures.ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
    results = list(tqdm.tqdm(pool.map(one, wanted), total=len(wanted), disable=not progress,
                             desc=f'MSRVTT-QA {split} videos'))
  frames = {v: r for v, r in zip(wanted, results, strict=True) if not isinstance(r, Skipped)}
  out = Split(split, questions, frames, {v: r for v, r in zip(wanted, results, strict=True) if isinstance(r, Skipped)})
  _log_skips(out.summary())
  return out


# --- model inputs -------------------------------------------------------------------------------


def qa_batches(questions: Iterable[Question], split: Split, vocabulary: Sequence[str],
               config: ml_collections.ConfigDict, tokenizer: Tokenizer, batch_size: int, *,
               drop_remainder: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Batches of model inputs (module docstring) for questions with frames in `split`; the last one padded
  with weight-0 copies unless dropped."""
  m = config.model
  n, h, w = m.num_segments, *m.image_size
  decode = tf.function(lambda jpegs: decode_frames(jpegs, None, config.data, (h, w), config.data.augment_mode),
                       input_signature=[tf.TensorSpec([None], tf.string)])
  index = {a: i for i, a in enumerate(vocabulary)}
  rows: list[tuple[Question, float]] = []

  def batch() -> dict[str, np.ndarray]:
    rows.extend([(rows[-1][0], 0.0)] * (batch_size - len(rows)))
    jpegs = [j for q, _ in rows for j in split.frames[q.video_id]]
    out = {'images': decode(tf.constant(jpegs)).numpy().reshape(batch_size, n, h, w, 3),
           'input_ids': np.stack([option_ids(tokenizer, q.question, '', '', n, m.segment_length) for q, _ in rows]),
           'answer': np.array([index.get(q.answer, -1) for q, _ in rows], np.int32),
           'weight': np.array([wt for _, wt in rows], np.float32),
           'question_id': np.array([q.id for q, _ in rows], np.int64)}
    rows.clear()
    return out

  for q in questions:
    if len(split.frames[q.video_id]) != n:
      raise ValueError(f'video{q.video_id}: {len(split.frames[q.video_id])} frames read, config.model.num_segments '
                       f'= {n}: load the split with num_frames = config.finetune.num_frames')
    rows.append((q, 1.0))
    if len(rows) == batch_size:
      yield batch()
  if rows and not drop_remainder:
    yield batch()


def training_questions(split: Split, vocabulary: Sequence[str]) -> tuple[Question, ...]:
  """The usable questions whose answer is in the vocabulary (the others cannot be learned)."""
  known = set(vocabulary)
  kept = tuple(q for q in split.usable if q.answer in known)
  log.info('MSRVTT-QA %s: training on %d questions; %d usable ones have an answer outside the %d-answer '
               'vocabulary', split.name, len(kept), len(split.usable) - len(kept), len(vocabulary))
  if not kept:
    raise ValueError(f'MSRVTT-QA {split.name}: no usable question has an answer in the vocabulary')
  return kept


def training_batches(questions: Sequence[Question], split: Split, vocabulary: Sequence[str],
                     config: ml_collections.ConfigDict, tokenizer: Tokenizer, start_step: int) -> StepIndexed:
  """Endless full batches of config.train.global_batch_size, epoch e in the order of a permutation seeded
  with config.data.seed + e; resuming at `start_step` skips the questions already seen."""
  b = config.train.global_batch_size
  epochs = ((questions[i] for i in np.random.default_rng(config.data.seed + e).permutation(len(questions)))
            for e in itertools.count())
  stream = itertools.islice(itertools.chain.from_iterable(epochs), start_step * b, None)
  return StepIndexed(qa_batches(stream, split, vocabulary, config, tokenizer, b, drop_remainder=True))


# --- runs ---------------------------------------------------------------------------------------


def _write_json(workdir: str | os.PathLike, name: str, obj) -> None:
  if jax.process_index() == 0:
    path = epath.Path(workdir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def finetune(config: ml_collections.ConfigDict, root: str | os.PathLike, workdir: str | os.PathLike,
             tokenizer: Tokenizer, *, init_checkpoint: str | os.PathLike | None, progress: bool = True,
             workers: int | None = None, devices: Sequence[jax.Device] | None = None,
             config_override_ok: bool = False) -> tuple[state_lib.TrainState, tuple[str, ...]]:
  """Finetunes on ROOT's train split: (final state, answer vocabulary). Writes WORKDIR/answer_vocabulary.json
  and WORKDIR/msrvtt_qa_train_data.json (the split's counts and skips)."""
  split = load_split(root, 'train', config.finetune.num_frames, workers=workers, progress=progress)
  vocabulary = answer_vocabulary((q.answer for q in split.questions), config.finetune.num_options)
  if (epath.Path(workdir) / VOCABULARY_FILE).is_file() and load_vocabulary(workdir) != vocabulary:
    raise ValueError(f'{workdir}/{VOCABULARY_FILE} differs from the vocabulary of {root}\'s train split: '
                     'this workdir was trained on other data or another num_options')
  save_vocabulary(workdir, vocabulary)
  _write_json(workdir, 'msrvtt_qa_train_data.json', split.summary())
  questions = training_questions(split, vocabulary)
  state = ft.finetune(
      config, workdir, lambda start, position: training_batches(questions, split, vocabulary, config, tokenizer,
                                                                start),
      init_checkpoint=init_checkpoint, task=open_qa.OPEN_QA, progress=progress, devices=devices,
      config_override_ok=config_override_ok)
  return state, vocabulary


def evaluate(config: ml_collections.ConfigDict, params: state_lib.Params, root: str | os.PathLike, split: str,
             tokenizer: Tokenizer, vocabulary: Sequence[str], *, workdir: str | os.PathLike | None = None,
             workers: int | None = None, progress: bool = True) -> dict:
  """Accuracy over every question of `split` next to chance, with the split's skip counts (logged, and
  written to WORKDIR/msrvtt_qa_<split>.json when a workdir is given)."""
  data = load_split(root, split, config.finetune.num_frames, workers=workers, progress=progress)
  batches = qa_batches(data.usable, data, vocabulary, config, tokenizer, config.train.global_batch_size)
  predicted = open_qa.predict(config, params, batches)
  scored = open_qa.score({q.id: q.answer for q in data.questions}, predicted, vocabulary,
                         config.finetune.num_options)
  data_summary = data.summary()
  summary = {'split': split, **dataclasses.asdict(scored),
             **{k: data_summary[k] for k in ('skipped_questions', 'skipped_videos', 'skipped')}}
  log.info('MSRVTT-QA %s: accuracy %.4f over %d questions (%d evaluated; %.4f of those); chance: majority '
               '%.4f (%r), uniform %.6f; answers in the vocabulary %.4f', split, scored.accuracy, scored.questions,
               scored.evaluated, scored.accuracy_evaluated, scored.chance_majority, scored.majority_answer,
               scored.chance_uniform, scored.in_vocabulary)
  if workdir is not None:
    _write_json(workdir, f'msrvtt_qa_{split}.json', summary)
  return summary


def format_summary(summary: dict) -> str:
  """One line: the split's accuracy next to both chance levels, and its skipped questions per reason."""
  skipped = ', '.join(f'{r} {n}' for r, n in summary['skipped_questions'].items() if n) or 'none'
  return (f'msrvtt_qa {summary["split"]}: accuracy {summary["accuracy"]:.4f} over {summary["questions"]} '
          f'questions (chance: majority answer {summary["chance_majority"]:.4f}, uniform '
          f'{summary["chance_uniform"]:.6f}); skipped questions: {skipped}')
