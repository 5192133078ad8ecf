"""Tokenizers: a hand-built GPT-2 BPE with hand-worked ids, and SentencePiece trained on the sample."""

import hashlib
import json

import ml_collections
import pytest

from merlot_jax import special_tokens as special
from merlot_jax.data import tokenizer as tk
from tests.script_runner import run_script

# A tiny byte-level BPE. 'Ġ' is the byte-level symbol of a space, 'Ã' and '©' those of the UTF-8 bytes
# c3 a9 of 'é'. Merges in rank order.
TINY_VOCAB = {'h': 0, 'e': 1, 'l': 2, 'o': 3, 'Ġ': 4, 'w': 5, 'r': 6, 'd': 7, 'he': 8, 'll': 9, 'hell': 10,
              'Ġw': 11, 'or': 12, '!': 13, 'Ã': 14, '©': 15, 'Ã©': 16}
TINY_MERGES = ['h e', 'l l', 'he ll', 'Ġ w', 'o r', 'Ã ©']


@pytest.fixture
def gpt2_dir(tmp_path):
  (tmp_path / 'encoder.json').write_text(json.dumps(TINY_VOCAB), encoding='utf-8')
  (tmp_path / 'vocab.bpe').write_text('#version: 0.2\n' + '\n'.join(TINY_MERGES) + '\n', encoding='utf-8')
  return tmp_path


@pytest.mark.parametrize('text, ids', [
    # 'hello' -> h e l l o -> he l l o -> he ll o -> hell o = [10, 3]
    # ' world' -> Ġ w o r l d -> Ġw o r l d -> Ġw or l d = [11, 12, 2, 7]; '!' = [13]
    ('hello world!', [10, 3, 11, 12, 2, 7, 13]),
    # GPT-2's regex gives 'hello', ' ' (a space before a space), ' world'
    ('hello  world', [10, 3, 4, 11, 12, 2, 7]),
    # 'hé' is one pre-token: h Ã © -> h Ã©
    ('hé', [0, 16]),
])
def test_gpt2_bpe_hand_worked_ids(gpt2_dir, text, ids):
  tok = tk.load_tokenizer(gpt2_dir)
  assert isinstance(tok, tk.Gpt2BpeTokenizer)
  assert tok.encode(text) == [i + 100 for i in ids]
  assert tok.decode(tok.encode(text)) == text


def test_gpt2_bpe_specials_vocab_and_name(gpt2_dir):
  tok = tk.Gpt2BpeTokenizer(gpt2_dir / 'encoder.json', gpt2_dir / 'vocab.bpe')
  assert tok.decode([special.START, 110, 103, special.END, special.PAD]) == 'hello'
  assert tok.vocab_size == 50370
  digest = hashlib.sha256((gpt2_dir / 'encoder.json').read_bytes() + (gpt2_dir / 'vocab.bpe').read_bytes())
  assert tok.name == f'gpt2bpe:{gpt2_dir.name}:{digest.hexdigest()[:12]}'


def test_special_ids_match_the_original():
  assert (special.PAD, special.MASK, special.START, special.END) == (0, 1, 2, 3)
  assert (special.NEXT_CAPTION_TIME, special.NEXT_CAPTION_START, special.NEXT_CAPTION_END) == (4, 5, 6)
  assert special.NUM_SPECIAL == 100


@pytest.fixture(scope='module')
def corpus(youtube_sample, tmp_path_factory):
  """The sample's clean transcript, one sentence per line."""
  grover = json.loads(youtube_sample.with_suffix('.grover.json').read_text())
  text = ' '.join(d['cleanasr'] for d in grover['denoised'])
  sentences = [s.strip() + '.' for s in text.split('.') if s.strip()]
  path = tmp_path_factory.mktemp('corpus') / 'text.txt'
  path.write_text('\n'.join(sentences) + '\n', encoding='utf-8')
  return path, sentences


def _train(tmp_path, corpus_path, name='sp'):
  return tk.train_sentencepiece([corpus_path], tmp_path / name, vocab_size=300, character_coverage=1.0)


def test_sentencepiece_ids_round_trip_and_size(tmp_path, corpus):
  corpus_path, sentences = corpus
  model = _train(tmp_path, corpus_path)
  tok = tk.load_tokenizer(model)
  assert isinstance(tok, tk.SentencePieceTokenizer)
  pieces = (tmp_path / 'sp.vocab').read_text(encoding='utf-8').splitlines()
  assert tok.vocab_size == 100 + len(pieces)
  for s in sentences:
    ids = tok.encode(s)
    assert ids and min(ids) >= 100 and max(ids) < tok.vocab_size
    assert tok.decode(ids) == s
  ids = tok.encode(sentences[0])
  assert tok.decode([special.START, *ids, special.END, special.PAD]) == sentences[0]
  assert tok.name == f'sentencepiece:sp.model:{hashlib.sha256(model.read_bytes()).hexdigest()[:12]}'


def test_sentencepiece_training_is_deterministic(tmp_path, corpus):
  corpus_path, sentences = corpus
  first = _train(tmp_path / 'a', corpus_path)
  again = _train(tmp_path / 'b', corpus_path)
  # The .model records its own output path, so compare the pieces with their scores and the encodings.
  assert (tmp_path / 'a/sp.vocab').read_bytes() == (tmp_path / 'b/sp.vocab').read_bytes()
  tok_a, tok_b = tk.SentencePieceTokenizer(first), tk.SentencePieceTokenizer(again)
  assert all(tok_a.encode(s) == tok_b.encode(s) for s in sentences)


def test_train_tokenizer_script(tmp_path, corpus, capsys):
  assert run_script('train_tokenizer.py', '--input', corpus[0], '--out', tmp_path / 'out/spm', '--vocab_size', 200) == 0
  assert capsys.readouterr().out.strip() == str(tmp_path / 'out/spm.model')
  assert tk.load_tokenizer(tmp_path / 'out/spm.model').vocab_size > 100


def test_check_vocab_names_both_sizes_and_the_fix(gpt2_dir):
  tok = tk.load_tokenizer(gpt2_dir)  # padded to the released weights' 50370 ids
  for vocab_size in (tk.GPT2_VOCAB_SIZE, tk.GPT2_VOCAB_SIZE + 30):
    tk.check_vocab(tok, ml_collections.ConfigDict({'model': {'vocab_size': vocab_size}}))
  with pytest.raises(ValueError, match=r'gpt2bpe:.* has 50370 ids but config.model.vocab_size is 32100: use the '
                                       r'tokenizer the model was trained with \(or a model with '
                                       r'model.vocab_size >= 50370\)'):
    tk.check_vocab(tok, ml_collections.ConfigDict({'model': {'vocab_size': 32100}}))

def test_load_tokenizer_errors_name_the_path(tmp_path):
  with pytest.raises(ValueError, match='encoder.json and vocab.bpe'):
    tk.load_tokenizer(tmp_path)
  with pytest.raises(ValueError, match='missing.model'):
    tk.load_tokenizer(tmp_path / 'missing.model')
  with pytest.raises(FileNotFoundError, match='nothing.txt'):
    tk.train_sentencepiece([tmp_path / 'nothing.txt'], tmp_path / 'sp', 100)
