"""VCR (visualcommonsense.com) read as released: object references rendered as words, the referenced objects
drawn on the image, the TFDS builder `vcr` and its Q->A and QA->R problems.

Release root (`--data_dir`, TFDS manual_dir):
  train.jsonl, val.jsonl, test.jsonl  one annotation per line: question, answer_choices (4), rationale_choices (4)
                                      as token lists where an object reference is a list of indices into
                                      `objects` (["Why", "is", [0], "smiling", "?"]); answer_label and
                                      rationale_label (absent in test); img_fn, metadata_fn, annot_id, objects
  vcr1images/<movie>/<image>.jpg      the image; <image>.json beside it: boxes [x1, y1, x2, y2, score], segms
                                      (polygons per object), width, height, names

As the original's downstream/vcr (data/prepare_data.py, data/draw_segms.py, data/draw_bbox.py,
dataloader_joint.py):
- text: a person reference becomes GENDER_NEUTRAL_NAMES[index % 50], any other object its class; several objects
  read "A B and C"; a reference that starts the text is capitalised; tokens are joined by `detokenize`.
- image: the objects the texts refer to are drawn (builder config `segm`, merlot_vcr.yaml's draw, or `bbox`):
  persons in PALETTE[index % 55], other objects in its last colour (grey), a 15%-opaque fill and a 7-px
  outline. Q->A's image shows the objects of the question and answers, QA->R's also those of the rationales.
- problems: Q->A (head 0): prompt " answer question:", context the question, options the answers; QA->R
  (head 1): prompt " provide rationale:", context question + right answer rendered as one text, options the
  rationales; each option closed with END. On test, QA->R is asked once per answer (id `<annot_id>@a<j>`)
  for the leaderboard's rationale_conditioned_on_a<j> columns.
Skipped and counted (release.py): missing_image_folder, missing_image, truncated_jpeg, missing_metadata,
bad_metadata, bad_annotation.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from merlot_jax.extras import import_extra
from merlot_jax.tasks import release
from merlot_jax.tasks.release import Problem, Skipped

tfds = import_extra('tensorflow_datasets', 'data')
Image = import_extra('PIL.Image', 'data')
ImageDraw = import_extra('PIL.ImageDraw', 'data')

OPTIONS = 4
MODES = ('answer', 'rationale')
PROMPTS = {'answer': ' answer question:', 'rationale': ' provide rationale:'}  # dataloader_joint.VCR_prompt
GENDER_NEUTRAL_NAMES = (
    'Casey', 'Riley', 'Jessie', 'Jackie', 'Avery', 'Jaime', 'Peyton', 'Kerry', 'Jody', 'Kendall', 'Skyler',
    'Frankie', 'Pat', 'Quinn', 'Morgan', 'Finley', 'Harley', 'Robbie', 'Sidney', 'Tommie', 'Ashley', 'Carter',
    'Adrian', 'Clarke', 'Logan', 'Mickey', 'Nicky', 'Parker', 'Tyler', 'Reese', 'Charlie', 'Austin', 'Denver',
    'Emerson', 'Tatum', 'Dallas', 'Haven', 'Jordan', 'Robin', 'Rory', 'Bellamy', 'Salem', 'Sutton', 'Gray',
    'Shae', 'Kyle', 'Alex', 'Ryan', 'Cameron', 'Dakota')
# Detectron's colormap (the original's data/colormap.py): 55 colours for persons, the last (grey) for objects.
PALETTE = (
    (255, 0, 0), (0, 255, 0), (236, 176, 31), (0, 0, 255), (255, 0, 255), (170, 0, 255), (255, 255, 0),
    (170, 84, 0), (84, 84, 0), (255, 127, 0), (76, 189, 237), (170, 0, 127), (125, 46, 141), (190, 190, 0),
    (161, 19, 46), (0, 170, 127), (255, 170, 127), (0, 84, 127), (255, 84, 127), (170, 170, 255),
    (170, 170, 127), (84, 0, 0), (0, 170, 0), (0, 255, 255), (255, 170, 255), (84, 0, 127), (255, 255, 127),
    (170, 0, 0), (84, 255, 127), (0, 0, 127), (170, 84, 127), (170, 84, 255), (170, 170, 0), (216, 82, 24),
    (0, 84, 0), (84, 0, 255), (255, 0, 127), (127, 0, 0), (170, 255, 127), (170, 255, 255), (0, 127, 0),
    (0, 0, 170), (84, 170, 127), (0, 113, 188), (118, 171, 47), (84, 84, 127), (0, 42, 0), (84, 84, 255),
    (84, 170, 0), (84, 170, 255), (170, 255, 0), (0, 0, 212), (0, 212, 0), (0, 0, 84), (0, 84, 255),
    (145, 145, 145))
OPACITY = int(255 * 0.15)  # of the fill
LINE_WIDTH = 7

# --- text ------------------------------------------------------------------------------------------

_ATTACH_LEFT = re.compile(r"^(?:[,.?!:;%)\]}]+|'(?:s|re|ve|ll|d|m)|n't)$", re.IGNORECASE)
_ATTACH_RIGHT = frozenset('([{$')


def detokenize(words: Sequence[str]) -> str:
  """Joins VCR's tokens as Moses' English detokenizer does for them: closing punctuation and clitics ('s, n't)
  attach to the word before, opening brackets and $ to the word after, double quotes alternate open/close."""
  out, glue, quote_open = '', True, False
  for w in words:
    if w == '"':
      out += w if quote_open or glue else ' ' + w
      glue, quote_open = not quote_open, not quote_open
      continue
    out += w if glue or _ATTACH_LEFT.match(w) else ' ' + w
    glue = w in _ATTACH_RIGHT
  return out


def reference_name(indices: Sequence[int], objects: Sequence[str], *, starts_text: bool = False) -> str:
  """'Casey', 'Casey and chair', 'Casey Riley and Jessie' (prepare_data.get_tokenization_with_tags); the first
  name capitalised (str.capitalize) when the reference starts the text."""
  names = [GENDER_NEUTRAL_NAMES[i % len(GENDER_NEUTRAL_NAMES)] if objects[i] == 'person' else objects[i]
           for i in indices]
  if starts_text:
    names[0] = names[0].capitalize()
  return names[0] if len(names) == 1 else ' '.join(names[:-1]) + ' and ' + names[-1]


def render(tokens: Sequence[str | list[int]], objects: Sequence[str]) -> str:
  """A VCR token list as text, references as names; raises IndexError for an index beyond `objects`."""
  return detokenize([reference_name(t, objects, starts_text=k == 0) if isinstance(t, list) else str(t)
                     for k, t in enumerate(tokens)])


# --- image -----------------------------------------------------------------------------------------


def referenced(annotation: dict, mode: str) -> tuple[set[int], set[int]]:
  """(persons, other objects) referred to by the question and answers, and in 'rationale' mode the rationales."""
  texts = [annotation['question'], *annotation['answer_choices']]
  if mode == 'rationale':
    texts += annotation['rationale_choices']
  persons, others = set(), set()
  for tokens in texts:
    for token in tokens:
      if isinstance(token, list):
        for i in token:
          (persons if annotation['objects'][i] == 'person' else others).add(i)
  return persons, others


def object_polygons(metadata: dict, kind: str) -> list[list[list[tuple[float, float]]]]:
  """Per object its outline polygons: the box (integer corners, as draw_bbox.py) or the segmentation parts."""
  if kind == 'bbox':
    polygons = []
    for box in metadata['boxes']:
      x1, y1, x2, y2 = (int(v) for v in box[:4])
      polygons.append([[(x1, y1), (x2, y1), (x2, y2), (x1, y2)]])
    return polygons
  return [[[(float(x), float(y)) for x, y in part] for part in segm] for segm in metadata['segms']]


def draw_objects(image: Image.Image, polygons: Sequence[Sequence[Sequence[tuple[float, float]]]],
                 persons: set[int], others: set[int]) -> Image.Image:
  """The image with each referenced object's polygons filled (15% opacity) and outlined (7 px) in its colour."""
  out = image.convert('RGBA')
  for i, parts in enumerate(polygons):
    if i not in persons and i not in others:
      continue
    colour = PALETTE[:-1][i % (len(PALETTE) - 1)] if i in persons else PALETTE[-1]
    overlay = Image.new('RGBA', out.size, (*colour, 0))
    fill = ImageDraw.Draw(overlay)
    for part in parts:
      fill.polygon(list(part) * (2 if len(part) < 2 else 1), fill=(*colour, OPACITY))
    outline = ImageDraw.Draw(out)
    for part in parts:
      outline.line([*part, part[0]], fill=colour, width=LINE_WIDTH)
    out = Image.alpha_composite(out, overlay)
  return out.convert('RGB')


# --- the release -------------------------------------------------------------------------------------

_ANNOTATION = {'annot_id': str, 'img_fn': str, 'metadata_fn': str, 'objects': list, 'question': list,
               'answer_choices': list, 'rationale_choices': list}


def _metadata(path: pathlib.Path, kind: str, needed: set[int]) -> list:
  if not path.is_file():
    raise Skipped('missing_metadata', str(path))
  try:
    polygons = object_polygons(json.loads(path.read_text()), kind)
  except (ValueError, KeyError, TypeError) as e:
    raise Skipped('bad_metadata', f'{path}: {type(e).__name__}: {e}') from e
  if needed and max(needed) >= len(polygons):
    raise Skipped('bad_metadata', f'{path}: {len(polygons)} objects, the text refers to object {max(needed)}')
  return polygons


@dataclasses.dataclass
class VcrConfig(tfds.core.BuilderConfig):
  draw: str = 'segm'  # 'segm' (segmentation outlines) or 'bbox' (boxes)


class Vcr(release.ReleaseBuilder):
  """VCR: per annotation the rendered texts and two drawn images (answer and rationale mode)."""

  BUILDER_CONFIGS = [VcrConfig(name='segm', draw='segm', description='segmentation outlines (the original)'),
                     VcrConfig(name='bbox', draw='bbox', description='boxes')]
  SPLIT_FILES = {'train': 'train.jsonl', 'val': 'val.jsonl', 'test': 'test.jsonl'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  The VCR release (visualcommonsense.com) unpacked: manual_dir/{train,val,test}.jsonl and
  manual_dir/vcr1images/<movie>/<image>.{jpg,json}.
  """

  def _features(self) -> tfds.features.FeaturesDict:
    image = tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')
    texts = tfds.features.Sequence(tfds.features.Text(), length=OPTIONS)
    return tfds.features.FeaturesDict({
        'annot_id': tfds.features.Text(), 'img_fn': tfds.features.Text(),
        'answer_image': image, 'rationale_image': image,
        'question': tfds.features.Text(), 'answers': texts, 'rationales': texts,
        'rationale_contexts': texts,  # question + answer j, rendered as one text
        'answer_label': tfds.features.Scalar(np.int64), 'rationale_label': tfds.features.Scalar(np.int64),
    })

  def _example(self, root: pathlib.Path, entry: dict, fallbacks: collections.Counter) -> tuple[str, dict]:
    del fallbacks  # VCR has none
    release.require(entry, _ANNOTATION, {'answer_choices': OPTIONS, 'rationale_choices': OPTIONS})
    labels = [entry.get(f'{m}_label', -1) for m in MODES]
    if not all(isinstance(x, int) and -1 <= x < OPTIONS for x in labels):
      raise Skipped('bad_annotation', f'labels {labels} (must be in 0..{OPTIONS - 1}, or absent in test)')
    try:
      objects = entry['objects']
      question = entry['question']
      texts = {'question': render(question, objects),
               'answers': [render(a, objects) for a in entry['answer_choices']],
               'rationales': [render(r, objects) for r in entry['rationale_choices']],
               'rationale_contexts': [render(question + a, objects) for a in entry['answer_choices']]}
      drawn = {m: referenced(entry, m) for m in MODES}
    except (IndexError, TypeError) as e:
      raise Skipped('bad_annotation', f'object reference: {type(e).__name__}: {e}') from e
    images = root / 'vcr1images'
    image_path = images / entry['img_fn']
    if not image_path.parent.is_dir():
      raise Skipped('missing_image_folder', str(image_path.parent))
    if not image_path.is_file():
      raise Skipped('missing_image', str(image_path))
    image = release.open_image(image_path)
    polygons = _metadata(images / entry['metadata_fn'], self.builder_config.draw, set().union(*drawn['rationale']))
    jpegs = {f'{m}_image': io.BytesIO(release.jpeg_bytes(draw_objects(image, polygons, *drawn[m]))) for m in MODES}
    return entry['annot_id'], {'annot_id': entry['annot_id'], 'img_fn': entry['img_fn'], **jpegs, **texts,
                               'answer_label': labels[0], 'rationale_label': labels[1]}


def conditioned_id(annot_id: str, answer: int) -> str:
  """The example id of test's QA->R problem that assumes answer `answer`."""
  return f'{annot_id}@a{answer}'


def problems(example: dict) -> list[Problem]:
  """A TFDS example (JPEGs undecoded) -> Q->A and QA->R given the right answer (test: given each answer)."""
  annot_id, t = release.text(example['annot_id']), release.text
  answer_image, rationale_image = (bytes(example['answer_image']),), (bytes(example['rationale_image']),)
  answers, rationales = tuple(t(a) for a in example['answers']), tuple(t(r) for r in example['rationales'])
  contexts = [t(c) for c in example['rationale_contexts']]
  label, rationale_label = int(example['answer_label']), int(example['rationale_label'])
  common = {'head': 1, 'prompt': PROMPTS['rationale'], 'end': True}
  out = [Problem(annot_id, answer_image, t(example['question']), answers, label, prompt=PROMPTS['answer'], end=True)]
  if label >= 0:
    return out + [Problem(annot_id, rationale_image, contexts[label], rationales, rationale_label, **common)]
  return out + [Problem(conditioned_id(annot_id, j), rationale_image, contexts[j], rationales, -1, **common)
                for j in range(OPTIONS)]


RELEASE = release.Release(Vcr, problems, ('answer_image', 'rationale_image'))
