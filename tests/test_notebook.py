"""notebooks/quickstart.ipynb runs headless (nbclient) on a tiny random checkpoint, its SentencePiece
tokenizer and a synthetic video; the committed file holds the outputs of `make notebook` on the demo run."""

import nbformat
from flax import nnx
from nbclient import NotebookClient

from merlot_jax.config import load_config
from merlot_jax.data.tokenizer import train_sentencepiece
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.preprocess import synthetic
from merlot_jax.preprocess.framed_segments import find_videos
from merlot_jax.workdir import save_params
from tests.models.testlib import REPO, build_random

NOTEBOOK = REPO / 'notebooks' / 'quickstart.ipynb'


def test_committed_notebook_shows_its_results():
  """Committed as `make notebook` leaves it after `make pretrain`: every code cell run in order, its text and
  plots there, no error."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert code and [c.execution_count for c in code] == list(range(1, len(code) + 1))
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  text = '\n'.join(o.get('text', '') for o in outputs)
  assert 'recall@1 over' in text and 'spearman' in text
  assert any('image/png' in o.get('data', {}) for o in outputs)


def test_notebook_runs_on_a_tiny_checkpoint(tmp_path, monkeypatch):
  synthetic.make_corpus(tmp_path / 'corpus', 1, 11, synthetic.Config(min_events=5, max_events=5, num_stories=2))
  spm = train_sentencepiece([tmp_path / 'corpus' / 'narration.txt'], tmp_path / 'spm', 120, model_type='bpe')
  config = load_config(str(REPO / 'configs' / 'tiny.py'))
  save_params(tmp_path / 'ckpt', build_random(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0))), config)
  (video,) = find_videos(tmp_path / 'corpus' / 'videos')
  for name, value in {'CHECKPOINT': tmp_path / 'ckpt', 'TOKENIZER': spm, 'CORPUS': tmp_path / 'corpus',
                      'VIDEO': video.video}.items():
    monkeypatch.setenv(f'MERLOT_{name}', str(value))
  monkeypatch.setenv('PYTHONPATH', str(REPO))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # The kernel is ipykernel's built-in 'python3', started with this interpreter (the venv's): nothing to register.
  NotebookClient(nb, timeout=300, kernel_name='python3', resources={'metadata': {'path': str(REPO)}}).execute()
  text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.outputs)
  assert f'{video.video}: ' in text and 'recall@1 over' in text
  assert 'story-0000: images shown at true positions' in text and 'spearman' in text
  assert any('image/png' in o.get('data', {}) for c in nb.cells for o in c.get('outputs', [])), 'no attention plot'
  errors = [o for c in nb.cells for o in c.get('outputs', []) if o.output_type == 'error']
  assert not errors, errors
