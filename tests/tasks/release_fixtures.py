"""Writers of small VCR and TVQA releases in their exact unpacked layouts (the tests compose the scenarios)."""

from __future__ import annotations

import io
import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image


def jpeg(rgb: Sequence[int], size: tuple[int, int] = (48, 64)) -> bytes:
  """A JPEG of one colour, size (height, width)."""
  out = io.BytesIO()
  Image.fromarray(np.full((*size, 3), rgb, np.uint8)).save(out, format='JPEG', quality=95)
  return out.getvalue()


def truncated(data: bytes) -> bytes:
  """The first half of a file: a JPEG cut off mid-scan."""
  return data[:len(data) // 2]


def write_jsonl(path: pathlib.Path, rows: Sequence[Mapping]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


# --- VCR: ROOT/<split>.jsonl, ROOT/vcr1images/<movie>/<image>.{jpg,json} ---------------------------------


def vcr_metadata(boxes: Sequence[Sequence[float]], segms: Sequence, names: Sequence[str], size: tuple[int, int]
                 ) -> dict:
  """A vcr1images .json: boxes [x1, y1, x2, y2, score], segms (polygons per object), width, height, names."""
  return {'boxes': [list(b) for b in boxes], 'segms': segms, 'names': list(names), 'height': size[0],
          'width': size[1]}


def write_vcr_image(root: pathlib.Path, img_fn: str, data: bytes, metadata: dict | None) -> None:
  """vcr1images/<img_fn> and (unless None) its metadata .json beside it."""
  path = root / 'vcr1images' / img_fn
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  if metadata is not None:
    path.with_suffix('.json').write_text(json.dumps(metadata))


def vcr_annotation(annot_id: str, img_fn: str, objects: Sequence[str], question: list, answers: list,
                   rationales: list, labels: tuple[int, int] | None) -> dict:
  """One line of <split>.jsonl; labels None: a test annotation (no answer_label / rationale_label)."""
  movie = img_fn.split('/')[0]
  row = {'movie': movie, 'objects': list(objects), 'img_fn': img_fn,
         'metadata_fn': img_fn.rsplit('.', 1)[0] + '.json', 'question': question, 'answer_choices': answers,
         'rationale_choices': rationales, 'annot_id': annot_id, 'img_id': annot_id, 'question_number': 0}
  if labels is not None:
    row['answer_label'], row['rationale_label'] = labels
  return row


# --- TVQA: tvqa_qa_release/, tvqa_subtitles/, frames_hq/<show>_frames/<vid_name>/ -------------------------

TVQA_SPLIT_FILES = {'train': 'tvqa_train.jsonl', 'val': 'tvqa_val.jsonl', 'test': 'tvqa_test_public.jsonl'}


def tvqa_question(qid: int, vid_name: str, show_name: str, ts: str, q: str, answers: Sequence[str],
                  label: int | None) -> dict:
  row = {'qid': qid, 'vid_name': vid_name, 'show_name': show_name, 'ts': ts, 'q': q,
         **{f'a{i}': a for i, a in enumerate(answers)}}
  if label is not None:
    row['answer_idx'] = label
  return row


def write_tvqa_questions(root: pathlib.Path, split: str, rows: Sequence[Mapping]) -> None:
  write_jsonl(root / 'tvqa_qa_release' / TVQA_SPLIT_FILES[split], rows)


def write_tvqa_frames(root: pathlib.Path, show: str, vid_name: str, frames: Sequence[bytes]) -> pathlib.Path:
  """frames_hq/<show>_frames/<vid_name>/00001.jpg ...; returns the folder."""
  folder = root / 'frames_hq' / f'{show}_frames' / vid_name
  folder.mkdir(parents=True, exist_ok=True)
  for k, data in enumerate(frames, 1):
    (folder / f'{k:05d}.jpg').write_bytes(data)
  return folder


def srt(cues: Sequence[tuple[float, float, str]]) -> str:
  """SubRip text of (start, end, text) cues (text may hold newlines)."""
  def stamp(t: float) -> str:
    ms = round(t * 1000)
    return f'{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}'
  return ''.join(f'{n}\n{stamp(a)} --> {stamp(b)}\n{text}\n\n' for n, (a, b, text) in enumerate(cues, 1))


def write_tvqa_subtitles(root: pathlib.Path, vid_name: str, cues: Sequence[tuple[float, float, str]]) -> None:
  path = root / 'tvqa_subtitles' / f'{vid_name}.srt'
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(srt(cues))


def written_release(tmp_path_factory, name: str, write) -> tuple[pathlib.Path, str]:
  """(root, TFDS data dir) of a release that `write(root)` puts in a fresh folder, for module fixtures."""
  root = tmp_path_factory.mktemp(name)
  write(root)
  return root, str(tmp_path_factory.mktemp('tfds'))
