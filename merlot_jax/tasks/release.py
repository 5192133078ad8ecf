"""What the readers of downloaded downstream releases (vcr.py, tvqa.py) share: the multiple-choice `Problem`,
skipping with a reason, and a TFDS builder base over the release's root as unpacked (TFDS `manual_dir`).

Nothing is downloaded. A question whose media cannot be used (a missing folder, a truncated JPEG, ...) never
stops the preparation and is never dropped silently: it is skipped under a reason, logged, and counted in the
prepared dataset's metadata next to the counted fallbacks (questions kept with a substitute, e.g. TVQA's
whole clip for a malformed `ts`):
  metadata[split] = {'questions': lines read, 'skipped': {reason: n}, 'fallbacks': {reason: n}}
`mc_data.skip_counts` reads it back for a run's log and summary.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import io
import json
import logging
import pathlib
from collections.abc import Callable, Iterator

import numpy as np

from merlot_jax.extras import import_extra

tfds = import_extra('tensorflow_datasets', 'data')
Image = import_extra('PIL.Image', 'data')

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Problem:
  """One multiple-choice question over some frames (mc_data.mc_batches turns it into model inputs)."""
  example_id: str
  jpegs: tuple[bytes, ...]
  context: str
  options: tuple[str, ...]
  label: int  # -1 where the release has no label (test splits)
  head: int = 0
  subtitles: str = ''
  prompt: str = ''  # text encoded on its own before the context (VCR's task prompts)
  end: bool = False  # close each option's text with END (VCR, as the original)


def frame_choice(num_available: int, num_frames: int) -> np.ndarray:
  """Indices of `num_frames` evenly spaced frames (the centres of equal spans; repeats if too few)."""
  return np.floor((np.arange(num_frames) + 0.5) * num_available / num_frames).astype(np.int64)


class Skipped(Exception):  # noqa: N818 - a control-flow signal, not an error
  """This question cannot be used; `reason` is its count key."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f'{reason}: {detail}')
    self.reason = reason


def open_image(path: pathlib.Path) -> Image.Image:
  """The fully decoded RGB image; Skipped('truncated_jpeg') if it does not decode to the end."""
  try:
    with Image.open(path) as image:
      return image.convert('RGB')  # convert() decodes every byte: a truncated file raises here
  except OSError as e:  # PIL's errors for truncated or unknown files are OSErrors
    raise Skipped('truncated_jpeg', f'{path}: {e}') from e


def checked_jpeg(path: pathlib.Path) -> bytes:
  """The file's bytes as they are, once they are known to decode (else Skipped('truncated_jpeg'))."""
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
  except OSError as e:
    raise Skipped('truncated_jpeg', f'{path}: {e}') from e
  return data


def jpeg_bytes(image: Image.Image) -> bytes:
  """PIL's default JPEG encoding (quality 75), as the original's `image.save(... .jpg)`."""
  with io.BytesIO() as out:
    image.save(out, format='JPEG')
    return out.getvalue()


def _jsonl(path: pathlib.Path) -> Iterator[tuple[int, dict | None]]:
  """(line number, object) per non-blank line; None for a line that is not a JSON object."""
  with path.open(encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          entry = json.loads(line)
        except json.JSONDecodeError:
          entry = None
        yield number, entry if isinstance(entry, dict) else None


class ReleaseBuilder(tfds.core.GeneratorBasedBuilder):
  """A builder over a release root: subclasses set SPLIT_FILES and define `_features` and `_example`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'The release as unpacked, read in place.'}
  SPLIT_FILES: dict[str, str] = {}  # split -> annotation file, relative to the root
  # TFDS looks for a checksums file next to the builder's code; a manual-only dataset has none (see story_data).
  code_path = None

  @classmethod
  def named_config(cls, name: str | None) -> tfds.core.BuilderConfig | str | None:
    """The builder config a task name's '/<config>' part selects (None: the default)."""
    return name

  @abc.abstractmethod
  def _features(self) -> tfds.features.FeaturesDict:
    """The features of one example."""

  @abc.abstractmethod
  def _example(self, root: pathlib.Path, entry: dict, fallbacks: collections.Counter) -> tuple[str, dict]:
    """(key, example) of one annotation; raises Skipped, counts fallbacks used."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=self._features(), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    splits = [s for s, f in self.SPLIT_FILES.items() if (root / f).is_file()]
    if not splits:
      raise FileNotFoundError(f'{root} has none of {sorted(self.SPLIT_FILES.values())}:\n'
                              f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return {s: self._generate_examples(root, s) for s in splits}

  def _generate_examples(self, root: pathlib.Path, split: str):
    source = root / self.SPLIT_FILES[split]
    skipped, fallbacks, questions = collections.Counter(), collections.Counter(), 0
    for number, entry in _jsonl(source):
      questions += 1
      try:
        if entry is None:
          raise Skipped('bad_annotation', 'not a JSON object')
        key, example = self._example(root, entry, fallbacks)
      except Skipped as s:
        skipped[s.reason] += 1
        log.info('%s:%d skipped (%s)', source, number, s)
        continue
      yield key, example
    self.info.metadata[split] = {'questions': questions, 'skipped': dict(skipped), 'fallbacks': dict(fallbacks)}
    if skipped or fallbacks:
      log.warning('%s: %d questions; skipped %s; fallbacks %s', source, questions, dict(skipped),
                      dict(fallbacks))


def require(entry: dict, fields: dict[str, type | tuple[type, ...]], counts: dict[str, int] | None = None) -> None:
  """Skipped('bad_annotation') unless each field has its type (and the listed ones their length)."""
  for name, kind in fields.items():
    if not isinstance(entry.get(name), kind):
      raise Skipped('bad_annotation', f'field {name!r} = {entry.get(name)!r} is not a {kind}')
  for name, count in (counts or {}).items():
    if len(entry[name]) != count:
      raise Skipped('bad_annotation', f'field {name!r} has {len(entry[name])} entries, expected {count}')


@dataclasses.dataclass(frozen=True)
class Release:
  """A release's reader: its builder, its examples' problems, and the JPEG features read back undecoded."""
  builder: type[ReleaseBuilder]
  problems: Callable[[dict], list[Problem]]
  jpeg_features: tuple[str, ...]


def text(x) -> str:
  """A TFDS text feature (bytes) as str."""
  return x.decode() if isinstance(x, bytes) else str(x)
