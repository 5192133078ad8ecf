"""What the task tests run on: a synthetic corpus, its tokenizer and a tiny random MERLOT saved as a
params checkpoint, all under one temporary folder."""

from __future__ import annotations

import pathlib

import ml_collections
from flax import nnx

from merlot_jax.config import load_config
from merlot_jax.data.tokenizer import train_sentencepiece
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.preprocess import synthetic
from merlot_jax.workdir import save_params
from tests.models.testlib import REPO, build_random


def tiny_config() -> ml_collections.ConfigDict:
  return load_config(str(REPO / 'configs' / 'tiny.py'))


def corpus_and_checkpoint(tmp: pathlib.Path, corpus_seed: int, corpus: synthetic.Config, model_seed: int
                          ) -> tuple[pathlib.Path, ml_collections.ConfigDict, MerlotModel]:
  """One synthetic video (tmp/corpus), a SentencePiece model on its narration (returned path) and a
  random tiny model saved to tmp/ckpt; returns (spm model path, config, model)."""
  synthetic.make_corpus(tmp / 'corpus', 1, corpus_seed, corpus)
  spm = train_sentencepiece([tmp / 'corpus' / 'narration.txt'], tmp / 'spm', 120, model_type='bpe')
  config = tiny_config()
  model = build_random(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0)), seed=model_seed)
  save_params(tmp / 'ckpt', model, config)
  return spm, config, model
