"""TVQA as released: ts parsing, the window's frames and subtitle lines (hand-computed), the TFDS builder over a
small release in the exact layout (3-fps frame folders, SRTs, broken media skipped and counted, malformed ts
falling back to the whole clip), and the leaderboard files."""

import json
import pathlib
import zipfile

import numpy as np
import pytest

from merlot_jax.tasks import finetune as ft
from merlot_jax.tasks import leaderboard, mc_data, tvqa
from tests.tasks import release_fixtures as rf

BBT, FRIENDS = 's01e01_seg01_clip_00', 'friends_s01e01_seg01_clip_00'
HOUSE, MET, CASTLE = 'house_s01e01_seg01_clip_00', 'met_s01e01_seg01_clip_00', 'castle_s01e01_seg01_clip_00'
BBT_CUES = [(0.5, 1.8, '(Sheldon:) Hello.'), (2.5, 3.5, '(Leonard:) Hi\nthere.'), (3.9, 5.0, 'What?'),
            (6.0, 7.0, 'Bye.')]
ANSWERS = ['one', 'two', 'three', 'four', 'five']


def frame(k: int) -> bytes:
  """Frame k of any clip: a colour of its own, so that the bytes tell frames apart."""
  return rf.jpeg((8 * k, 255 - 8 * k, 100), (24, 32))


# --- the moment's frames and lines ---------------------------------------------------------------------


def test_parse_ts():
  assert tvqa.parse_ts('76.01-84.2') == (76.01, 84.2) and tvqa.parse_ts('0-3') == (0.0, 3.0)
  for bad in ('NaN-NaN', 'nan-4', '', '5', '5-3', 'a-b', '1-2-3', None, 'inf-5'):
    assert tvqa.parse_ts(bad) is None, bad


def test_show_folder_from_the_clip_name():
  assert [tvqa.show_folder(v) for v in (BBT, FRIENDS, HOUSE, MET, CASTLE, 'grey_s03e20_seg02_clip_14')] == [
      'bbt', 'friends', 'house', 'met', 'castle', 'grey']


def test_window_frames_hand_computed():
  # Frame k shows second (k - 1) / 3: [2, 4] s holds frames 7..13; 6 evenly spaced of those 7 (centres of
  # equal spans: floor((i + 0.5) * 7 / 6) = 0, 1, 2, 4, 5, 6) and 3 of them (1, 3, 5).
  frames = range(1, 31)
  assert tvqa.window_frames(frames, (2.0, 4.0), 6) == [7, 8, 9, 11, 12, 13]
  assert tvqa.window_frames(frames, (2.0, 4.0), 3) == [8, 10, 12]
  assert tvqa.window_frames(frames, (6.2, 6.5), 3) == [20, 20, 20]  # one frame inside: repeated
  assert tvqa.window_frames(frames, (0.0, 29 / 3), 6) == [3, 8, 13, 18, 23, 28]
  assert tvqa.window_frames(frames, (20.0, 25.0), 6) == []


def test_srt_and_window_subtitles_hand_computed(tmp_path):
  path = tmp_path / 'x.srt'
  path.write_bytes(b'\xef\xbb\xbf' + rf.srt(BBT_CUES).replace('\n', '\r\n').encode())
  cues = tvqa.read_srt(path)
  assert cues == [tvqa.Cue(0.5, 1.8, '(Sheldon:) Hello.'), tvqa.Cue(2.5, 3.5, '(Leonard:) Hi there.'),
                  tvqa.Cue(3.9, 5.0, 'What?'), tvqa.Cue(6.0, 7.0, 'Bye.')]
  assert tvqa.window_subtitles(cues, (2.0, 4.0)) == '(Leonard:) Hi there. What?'  # starts strictly inside
  # None starts strictly inside (2.5, 3.9): the cue nearest 2.5 (the second) and its neighbours.
  assert tvqa.window_subtitles(cues, (2.5, 3.9)) == '(Sheldon:) Hello. (Leonard:) Hi there. What?'
  assert tvqa.window_subtitles(cues, (6.2, 6.5)) == 'What? Bye.'  # nearest 6.2 is the last cue: it and the one before
  assert tvqa.window_subtitles([], (0, 1)) == ''


# --- the release -----------------------------------------------------------------------------------


def q(qid, vid, ts, show='The Big Bang Theory', label=1):
  return rf.tvqa_question(qid, vid, show, ts, f'question {qid}?', ANSWERS, label)


def write_release(root: pathlib.Path) -> None:
  rf.write_tvqa_frames(root, 'bbt', BBT, [frame(k) for k in range(1, 31)])
  rf.write_tvqa_frames(root, 'friends', FRIENDS, [frame(k) for k in range(1, 31)])
  house = rf.write_tvqa_frames(root, 'house', HOUSE, [frame(k) for k in range(1, 7)])
  (house / '00003.jpg').write_bytes(rf.truncated(frame(3)))
  rf.write_tvqa_frames(root, 'met', MET, [frame(k) for k in range(1, 7)])  # its .srt is missing
  rf.write_tvqa_subtitles(root, BBT, BBT_CUES)
  rf.write_tvqa_subtitles(root, FRIENDS, [(1.0, 2.0, 'One.'), (5.0, 6.0, 'Two.'), (9.5, 11.0, 'Three.')])
  rf.write_tvqa_subtitles(root, HOUSE, [(0.5, 1.0, 'Hm.')])
  rf.write_tvqa_questions(root, 'val', [
      q(1, BBT, '2.0-4.0'), q(2, FRIENDS, 'NaN-NaN', 'Friends', 0), q(3, BBT, '1-2', 'Seinfeld'),
      q(4, CASTLE, '1-2', 'Castle'), q(5, BBT, '20.0-25.0'), q(6, HOUSE, '0-2', 'House M.D.'),
      q(7, BBT, '6.2-6.5', label=4), q(8, MET, '0-1', 'How I Met You Mother'), q(9, BBT, '5-3', label=2)])
  rf.write_tvqa_questions(root, 'test', [q(100, BBT, '0-1', label=None)])


@pytest.fixture(scope='module')
def release(tmp_path_factory) -> tuple[pathlib.Path, str]:
  return rf.written_release(tmp_path_factory, 'tvqa_release', write_release)


def test_builder_selects_the_window_and_counts_skips(release):
  root, tfds_dir = release
  val = {p.example_id: p for p in mc_data.load_problems('tvqa', root, 'val', data_dir=tfds_dir)}
  assert sorted(val) == ['1', '2', '7', '9']
  folder = root / 'frames_hq' / 'bbt_frames' / BBT
  files = lambda numbers, f=folder: tuple((f / f'{k:05d}.jpg').read_bytes() for k in numbers)
  p = val['1']
  assert p.jpegs == files([7, 8, 9, 11, 12, 13])  # stored as they are
  assert (p.context, p.options, p.label, p.head) == ('question 1?', tuple(ANSWERS), 1, 0)
  assert p.subtitles == '(Leonard:) Hi there. What?'
  friends = root / 'frames_hq' / 'friends_frames' / FRIENDS
  assert val['2'].jpegs == files([3, 8, 13, 18, 23, 28], friends)  # malformed ts: the whole clip
  assert val['2'].subtitles == 'One. Two. Three.'
  assert val['7'].jpegs == files([20] * 6) and val['7'].subtitles == 'What? Bye.'
  assert val['9'].jpegs == files([3, 8, 13, 18, 23, 28]) and val['9'].label == 2
  counts = mc_data.skip_counts('tvqa', root, data_dir=tfds_dir)['val']
  assert counts == {'questions': 9, 'fallbacks': {'malformed_ts': 2}, 'skipped': {
      'unknown_show': 1, 'missing_frame_folder': 1, 'no_frames_in_window': 1, 'truncated_jpeg': 1,
      'missing_subtitles': 1}}
  (test,) = mc_data.load_problems('tvqa', root, 'test', data_dir=tfds_dir)
  assert (test.example_id, test.label, len(test.jpegs)) == ('100', -1, 6)


def test_frames_builder_config(release):
  root, tfds_dir = release
  val = {p.example_id: p for p in mc_data.load_problems('tvqa/frames_3', root, 'val', data_dir=tfds_dir)}
  folder = root / 'frames_hq' / 'bbt_frames' / BBT
  assert val['1'].jpegs == tuple((folder / f'{k:05d}.jpg').read_bytes() for k in (8, 10, 12))
  with pytest.raises(ValueError, match="expected 'frames_<n>'"):
    list(mc_data.load_problems('tvqa/six', root, 'val', data_dir=tfds_dir))
  with pytest.raises(ValueError, match='must be one of'):
    list(mc_data.load_problems('tvqa2', root, 'val', data_dir=tfds_dir))


# --- leaderboard files ------------------------------------------------------------------------------


def _softmax(logits) -> np.ndarray:
  """Plain numpy: exp(x - max) / sum."""
  e = np.exp(np.asarray(logits, np.float64) - np.max(logits))
  return e / e.sum()


def test_submission_files_parse_back_to_the_predictions(tmp_path):
  # Logits whose argmax is known by construction: val '3' -> 2 (label 2, right), '1' -> 1 (label 0, wrong),
  # '2' -> 4 (label 4, right; log-probabilities, so its softmax is [1, 2, 3, 4, 10] / 20); test '100' -> 3, '7' -> 0.
  val = [ft.Prediction('3', 0, 2, np.array([0.1, -1.0, 2.5, 0.3, 0.0])),
         ft.Prediction('1', 0, 0, np.array([-0.5, 1.5, 0.2, 0.9, -2.0])),
         ft.Prediction('2', 0, 4, np.log([1.0, 2.0, 3.0, 4.0, 10.0]))]
  test = [ft.Prediction('100', 0, -1, np.array([1.0, 2.0, 3.0, 4.0, 0.0])),
          ft.Prediction('7', 0, -1, np.array([5.0, 1.0, 1.0, 1.0, 1.0]))]
  archive = leaderboard.write_tvqa_submission(val, test, tmp_path, 'tiny')
  assert leaderboard.read_tvqa_answers(tmp_path / 'prediction_val.json') == {'3': 2, '1': 1, '2': 4}
  assert leaderboard.read_tvqa_answers(tmp_path / 'prediction_test_public.json') == {'100': 3, '7': 0}
  with zipfile.ZipFile(archive) as z:
    assert sorted(z.namelist()) == sorted(leaderboard.TVQA_FILES)
    meta = json.loads(z.read('meta.json'))
  assert meta['model_name'] == 'tiny' and meta['with_ts'] is True
  path = leaderboard.write_predictions(val, ('answer',), tmp_path / 'val.jsonl')
  rows = {r['id']: r['answer'] for r in map(json.loads, path.read_text().splitlines())}
  assert {i: (r['prediction'], r['label'], r['correct']) for i, r in rows.items()} == {
      '3': (2, 2, True), '1': (1, 0, False), '2': (4, 4, True)}
  for p in val:
    np.testing.assert_allclose(rows[p.example_id]['probs'], _softmax(p.logits), rtol=1e-12)
  np.testing.assert_allclose(rows['2']['probs'], [0.05, 0.1, 0.15, 0.2, 0.5], rtol=1e-12)
