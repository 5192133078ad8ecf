"""Feature extraction on real synthetic videos, checked against direct model calls on inputs rebuilt from
the corpus preprocessing; load_pretrained from params checkpoints and training workdirs."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow as tf
from flax import nnx

from merlot_jax.checkpoint import TrainCheckpointer
from merlot_jax.data.frames import decode_frames
from merlot_jax.data.tokenizer import load_tokenizer
from merlot_jax.preprocess import synthetic
from merlot_jax.preprocess.framed_segments import find_videos, process_video
from merlot_jax.preprocess.video import probe_duration
from merlot_jax.pretrained import load_pretrained
from merlot_jax.special_tokens import START
from merlot_jax.tasks import features as fe
from merlot_jax.tasks import finetune as ft
from merlot_jax.tasks.story_ordering import load_story_model
from merlot_jax.train.state import TrainState
from tests.models.testlib import build_random, pure_params
from tests.script_runner import run_script
from tests.tasks.tiny_run import corpus_and_checkpoint, tiny_config

N, T = 4, 8  # configs/tiny.py: segments per example, tokens per segment


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny random model saved as a params checkpoint, its tokenizer, one synthetic video and its features."""
  tmp = tmp_path_factory.mktemp('features')
  spm, config, model = corpus_and_checkpoint(tmp, 7, synthetic.Config(min_events=5, max_events=5, num_stories=1), 3)
  (video,) = find_videos(tmp / 'corpus' / 'videos')
  tokenizer = load_tokenizer(spm)
  return {'tmp': tmp, 'spm': spm, 'config': config, 'model': model, 'video': video, 'tokenizer': tokenizer,
          'features': fe.extract_features(model, config, tokenizer, video.video)}


def direct_inputs(run):
  """(images uint8 [S, H, W, 3], ids [S, T], times [S]) rebuilt from the corpus preprocessing by hand."""
  result = process_video(run['video'], run['tokenizer'], segment_tokens=T)
  jpegs = tf.constant([s.jpeg for s in result.segments])
  data = run['config'].data
  images = decode_frames(jpegs, None, data, tuple(run['config'].model.image_size), data.augment_mode).numpy()
  ids = np.zeros((len(result.segments), T), np.int32)
  for i, s in enumerate(result.segments):
    ids[i, :1 + len(s.clean_tokens)] = [START, *s.clean_tokens]
  return images, ids, np.array([s.time for s in result.segments])


NAMES = ('frame_embedding', 'transcript_embedding', 'frame_projection', 'transcript_projection')


@nnx.jit
def forward(model, images, ids):
  """A direct model call (one compile for the module's tests); MerlotOutput is not a pytree: its arrays."""
  out = model(images, ids)
  return {**{k: getattr(out, k) for k in NAMES}, 'visual': out.joint.visual, 'text': out.joint.text}


def test_features_have_the_documented_shapes_and_times(run):
  f, m = run['features'], run['config'].model
  s = len(f.times)
  assert s > N and s % N != 0, f'{s} segments: the test wants several chunks and an overlapping last one'
  tokens_per_frame = 1 + (m.image_size[0] // 32) * (m.image_size[1] // 32)
  expected = {'frame_embedding': (s, m.hidden_size), 'transcript_embedding': (s, m.hidden_size),
              'frame_projection': (s, m.contrastive_size), 'transcript_projection': (s, m.contrastive_size),
              'joint_visual': (s, tokens_per_frame, m.hidden_size), 'joint_text': (s, T, m.hidden_size),
              'input_ids': (s, T)}
  assert {k: getattr(f, k).shape for k in expected} == expected
  assert all(np.all(np.isfinite(getattr(f, k))) for k in expected)
  assert f.video == run['video'].video and len(f.texts) == s
  assert np.all(np.diff(f.times) > 0) and f.times[0] >= 0 and f.times[-1] < probe_duration(run['video'].video)
  np.testing.assert_allclose(np.linalg.norm(f.frame_projection, axis=-1), 1, rtol=1e-5)
  words = ' '.join(f.texts).split()
  narration = (run['tmp'] / 'corpus' / 'narration.txt').read_text().split()
  assert words == narration, 'the segment texts, in order, are the whole transcript'


def test_features_equal_direct_model_calls_on_the_same_frames_and_ids(run):
  f, model = run['features'], run['model']
  images, ids, times = direct_inputs(run)
  np.testing.assert_array_equal(f.input_ids, ids)
  np.testing.assert_allclose(f.times, times, rtol=1e-6)
  s = len(times)
  for start in (0, s - N):  # the first chunk, and the last one (the model sees the video's final N segments)
    out = forward(model, jnp.asarray(images[None, start:start + N]), jnp.asarray(ids[None, start:start + N]))
    keep = slice(0 if start == 0 else N - s % N, N)  # the last chunk's segments not in the chunk before
    rows = slice(start + keep.start, start + N)
    for name in NAMES:
      np.testing.assert_allclose(getattr(f, name)[rows], out[name][0, keep], atol=2e-5, err_msg=name)
    visual = np.asarray(out['visual']).reshape(N, -1, f.joint_visual.shape[-1])  # groups of 2 are consecutive
    text = np.asarray(out['text']).reshape(N, T, -1)
    np.testing.assert_allclose(f.joint_visual[rows], visual[keep], atol=2e-5)
    np.testing.assert_allclose(f.joint_text[rows], text[keep], atol=2e-5)


def test_a_video_shorter_than_an_example_is_padded_where_no_frame_or_transcript_sees_it(run):
  images, ids, times = direct_inputs(run)
  short = fe.SegmentInputs('short', times[:3].astype(np.float32), ('a', 'b', 'c'), images[:3], ids[:3])
  f = fe.embed(run['model'], short)
  assert f.frame_embedding.shape[0] == f.joint_text.shape[0] == 3
  np.testing.assert_allclose(f.frame_embedding, run['features'].frame_embedding[:3], atol=2e-5)
  # The language-only pass reads the chunk as one text: the padded segment is masked, whatever its frame.
  out = forward(run['model'], jnp.asarray(images[None, :N]), jnp.asarray(ids[None, :N]).at[0, 3].set(0))
  np.testing.assert_allclose(f.transcript_embedding, out['transcript_embedding'][0, :3], atol=2e-5)


def test_chunk_starts_cover_every_segment_with_full_chunks():
  assert fe.chunk_starts(4, 4) == [0]
  assert fe.chunk_starts(10, 4) == [0, 4, 6]
  assert fe.chunk_starts(12, 4) == [0, 4, 8]


def test_script_writes_features_and_an_index_and_skips_unusable_videos(run, capsys):
  tmp, video = run['tmp'], run['video']
  videos = tmp / 'videos'
  (videos / 'ok').mkdir(parents=True)
  shutil.copy(video.video, videos / 'ok' / 'clip.mp4')
  shutil.copy(video.transcript, videos / 'ok' / 'clip.en.vtt')
  (videos / 'broken.mp4').write_bytes(b'not a video')
  shutil.copy(video.transcript, videos / 'broken.en.vtt')
  (videos / 'silent.mp4').write_bytes(b'no transcript beside it')
  assert run_script('extract_features.py', '--checkpoint', tmp / 'ckpt', '--tokenizer', run['spm'],
                    '--videos', videos, '--out', tmp / 'out') == 0
  index = json.loads((tmp / 'out' / 'index.json').read_text())
  assert index['skipped'] == {'unreadable_video': 1, 'missing_transcript': 1}
  assert [v['video'] for v in index['videos']] == ['ok/clip.mp4']
  assert 'features of 1 videos' in capsys.readouterr().out
  saved = fe.VideoFeatures.load(tmp / 'out' / 'ok' / 'clip.npz')
  expected = run['features']
  assert saved.texts == expected.texts and saved.video == 'ok/clip.mp4'
  for name in ('times', 'input_ids', 'frame_embedding', 'joint_text'):
    np.testing.assert_allclose(getattr(saved, name), getattr(expected, name), atol=2e-5, err_msg=name)


# --- load_pretrained -----------------------------------------------------------------------------


def test_load_pretrained_reads_a_params_checkpoint(run):
  model, config = load_pretrained(run['tmp'] / 'ckpt')
  assert json.loads(config.to_json()) == json.loads(run['config'].to_json())
  jax.tree.map(np.testing.assert_array_equal, pure_params(model), pure_params(run['model']))


@pytest.fixture(scope='module')
def workdir(run):
  """A training workdir (config.json + checkpoints/<step>/) with TrainStates of steps 2 and 5, each with
  its own parameters and Adam moments."""
  path = run['tmp'] / 'workdir'
  path.mkdir()
  (path / 'config.json').write_text(run['config'].to_json(indent=1))
  tx = optax.adamw(1e-3)
  checkpointer = TrainCheckpointer(path / 'checkpoints', keep=3)
  saved = {}
  for step in (2, 5):
    params = jax.tree.map(lambda x, step=step: x + step, pure_params(run['model']))
    state = TrainState(step=jnp.int32(step), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(step))
    checkpointer.save(step, state, data_position=step * 8)
    checkpointer.wait()
    saved[step] = params
  checkpointer.close()
  return path, saved


@pytest.mark.parametrize('step', [None, 2, 5])
def test_load_pretrained_reads_only_the_params_of_a_training_checkpoint(workdir, step):
  path, saved = workdir
  model, config = load_pretrained(path, step=step)
  assert json.loads(config.to_json()) == json.loads(tiny_config().to_json())
  jax.tree.map(np.testing.assert_array_equal, pure_params(model), saved[5 if step is None else step])


def test_config_fn_derives_the_task_model_from_a_workdir(workdir):
  path, saved = workdir
  model, config = load_story_model(path)
  assert config.model.num_segments == model.config.segments_per_group == 5
  jax.tree.map(np.testing.assert_array_equal, pure_params(model), saved[5])


def test_finetuning_init_takes_a_pretraining_workdir(workdir):
  """README's flow: finetuning's --init names the pretraining workdir; its latest params become the body."""
  path, saved = workdir
  task = tiny_config()
  task.finetune = ml_collections.ConfigDict({'task': 'synthetic', 'num_frames': 1, 'segment_length': 8,
                                             'num_options': 4, 'heads': ('answer',)})
  task = ft.load_finetune_config(task, path)  # the model config comes from the workdir's config.json
  model = build_random(lambda: ft.MultipleChoiceModel(task, rngs=nnx.Rngs(params=0)), seed=6)
  fresh = nnx.state(model, nnx.Param).to_pure_dict()
  loaded = ft.pretrained_init(path, task)(fresh)
  jax.tree.map(np.testing.assert_array_equal, loaded['merlot'], saved[5])
  jax.tree.map(np.testing.assert_array_equal, loaded['head'], fresh['head'])


def test_export_params_writes_one_step_as_a_params_checkpoint(workdir, tmp_path):
  path, saved = workdir
  assert run_script('export_params.py', path, tmp_path / 'exported', '--step=2') == 0
  assert sorted(p.name for p in (tmp_path / 'exported').iterdir()) == ['config.json', 'params']
  model, config = load_pretrained(tmp_path / 'exported')
  assert json.loads(config.to_json()) == json.loads(tiny_config().to_json())
  jax.tree.map(np.testing.assert_array_equal, pure_params(model), saved[2])


def test_load_pretrained_names_what_is_wrong(run, workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match='neither a params checkpoint .* nor a training workdir'):
    load_pretrained(tmp_path)
  (tmp_path / 'config.json').write_text(run['config'].to_json())
  with pytest.raises(FileNotFoundError, match=r"it holds \['config.json'\]"):
    load_pretrained(tmp_path)
  with pytest.raises(ValueError, match='step=3 applies to training workdirs only'):
    load_pretrained(run['tmp'] / 'ckpt', step=3)
  with pytest.raises(FileNotFoundError, match=r'no checkpoint of step 3; it has \[2, 5\]'):
    load_pretrained(workdir[0], step=3)
