"""Tokenizers: SentencePiece (the project's own) and GPT-2 BPE (the released MERLOT weights).

Ids 0..99 are reserved for special tokens, as in the original (utils/encode/encoder.py); text never maps
below `NUM_SPECIAL`. Both tokenizers get there the same way: the underlying model's ids are shifted by a
fixed offset of `NUM_SPECIAL`, so any SentencePiece model works, not only ones trained here.
"""

import hashlib
import pathlib
from collections.abc import Sequence
from typing import Protocol

import ml_collections
import sentencepiece as spm
import tokenizers

from merlot_jax.special_tokens import NUM_SPECIAL

# Embedding rows of the released MERLOT weights (model/configs/merlot.yaml): 50257 GPT-2 ids + 100, padded.
GPT2_VOCAB_SIZE = 50370


class Tokenizer(Protocol):
  """Text <-> ids with ids 0..NUM_SPECIAL-1 reserved for special tokens."""

  name: str  # recorded in corpus manifests: kind, file name and content hash
  vocab_size: int  # total id space, the reserved ids included

  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; special ids (< NUM_SPECIAL) are skipped."""
    ...


def _digest(*paths: pathlib.Path) -> str:
  """First 12 hex digits of the sha256 of the files' bytes: identifies a tokenizer by content."""
  sha = hashlib.sha256()
  for path in paths:
    sha.update(path.read_bytes())
  return sha.hexdigest()[:12]


def _text_ids(ids: Sequence[int]) -> list[int]:
  """Drops special ids and undoes the offset."""
  return [int(i) - NUM_SPECIAL for i in ids if int(i) >= NUM_SPECIAL]


class SentencePieceTokenizer:
  """A SentencePiece model with every id shifted up by NUM_SPECIAL."""

  def __init__(self, model_path: str | pathlib.Path):
    path = pathlib.Path(model_path)
    if not path.is_file():
      raise FileNotFoundError(f'{path}: SentencePiece model file not found')
    self._sp = spm.SentencePieceProcessor(model_file=str(path))
    self.vocab_size = self._sp.get_piece_size() + NUM_SPECIAL
    self.name = f'sentencepiece:{path.name}:{_digest(path)}'

  def encode(self, text: str) -> list[int]:
    return [i + NUM_SPECIAL for i in self._sp.encode(text, out_type=int)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode(_text_ids(ids))


class Gpt2BpeTokenizer:
  """GPT-2 byte-level BPE from local encoder.json + vocab.bpe, ids shifted by NUM_SPECIAL (the original)."""

  def __init__(self, encoder_json: str | pathlib.Path, vocab_bpe: str | pathlib.Path):
    encoder_json, vocab_bpe = pathlib.Path(encoder_json), pathlib.Path(vocab_bpe)
    for path in (encoder_json, vocab_bpe):
      if not path.is_file():
        raise FileNotFoundError(f'{path}: GPT-2 BPE file not found')
    bpe = tokenizers.models.BPE.from_file(str(encoder_json), str(vocab_bpe))
    self._tok = tokenizers.Tokenizer(bpe)
    # GPT-2's pre-tokenisation regex and byte-to-unicode table; no space is added in front of the text.
    self._tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    self._tok.decoder = tokenizers.decoders.ByteLevel()
    self.vocab_size = max(GPT2_VOCAB_SIZE, self._tok.get_vocab_size() + NUM_SPECIAL)
    self.name = f'gpt2bpe:{encoder_json.parent.name}:{_digest(encoder_json, vocab_bpe)}'

  def encode(self, text: str) -> list[int]:
    return [i + NUM_SPECIAL for i in self._tok.encode(text, add_special_tokens=False).ids]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(_text_ids(ids))


def load_tokenizer(path: str | pathlib.Path) -> Tokenizer:
  """A `.model` file -> SentencePiece; a directory with encoder.json + vocab.bpe -> GPT-2 BPE."""
  path = pathlib.Path(path)
  if path.suffix == '.model' and path.is_file():
    return SentencePieceTokenizer(path)
  if path.is_dir() and (path / 'encoder.json').is_file() and (path / 'vocab.bpe').is_file():
    return Gpt2BpeTokenizer(path / 'encoder.json', path / 'vocab.bpe')
  raise ValueError(f'{path}: not a tokenizer; expected a SentencePiece .model file or a directory '
                   'holding encoder.json and vocab.bpe (GPT-2 BPE)')


def check_vocab(tokenizer: Tokenizer, config: ml_collections.ConfigDict) -> None:
  """Raises ValueError unless every id of `tokenizer` has an embedding row (config.model.vocab_size)."""
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(f'tokenizer {tokenizer.name} has {tokenizer.vocab_size} ids but config.model.vocab_size is '
                     f'{config.model.vocab_size}: use the tokenizer the model was trained with (or a model with '
                     f'model.vocab_size >= {tokenizer.vocab_size})')


def train_sentencepiece(text_files: Sequence[str | pathlib.Path], model_prefix: str | pathlib.Path,
                        vocab_size: int, model_type: str = 'unigram',
                        character_coverage: float = 0.9995) -> pathlib.Path:
  """Trains a SentencePiece model on text files (one sentence per line); returns the .model path.

  Deterministic: one thread, every sentence used, no shuffling. `vocab_size` is the SentencePiece
  vocabulary (the tokenizer's id space is NUM_SPECIAL larger) and is a soft limit so that small corpora
  work. Only <unk> is reserved inside the model; pad/bos/eos live among the project's special ids.
  """
  files = [pathlib.Path(f) for f in text_files]
  if not files:
    raise ValueError('train_sentencepiece: no input text files given')
  for f in files:
    if not f.is_file():
      raise FileNotFoundError(f'{f}: tokenizer training text file not found')
  model_prefix = pathlib.Path(model_prefix)
  model_prefix.parent.mkdir(parents=True, exist_ok=True)
  spm.SentencePieceTrainer.train(
      input=','.join(str(f) for f in files),
      model_prefix=str(model_prefix),
      vocab_size=vocab_size,
      model_type=model_type,
      character_coverage=character_coverage,
      hard_vocab_limit=False,
      unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      num_threads=1,
      minloglevel=2,
  )
  return model_prefix.with_name(model_prefix.name + '.model')
