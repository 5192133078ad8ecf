"""Open-ended video QA finetuning (MSRVTT-QA) of a pretrained MERLOT: a softmax over an answer vocabulary.

As the paper's open-ended video QA: the question is the text of segment 0, the video's frames are one group
of the joint encoder (finetune.finetune_config: num_segments = segments_per_group = the task's frames), and
the joint state of the question's first token (START) goes through `models.heads.AnswerHead`, a softmax over
config.finetune.num_options answers (the answer vocabulary, K of the batch spec) trained with cross-entropy.
The body loads from a params checkpoint (finetune.pretrained_init); only the head is new.

Labels: `answer` is the index of the right answer in the vocabulary, or -1 when it is outside it. Such a row
adds nothing to the loss and always counts as wrong in the accuracy (no output can be right).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from merlot_jax.config import ConfigError
from merlot_jax.data.batch_spec import Field
from merlot_jax.models.heads import AnswerHead
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.train import setup as setup_lib
from merlot_jax.train import state as state_lib
from merlot_jax.train.task import Batch, Metrics, Task

# The model's inputs, as msrvtt_qa.qa_batches yields them (it adds the host-only 'question_id').
OPEN_QA_BATCH_SPEC: dict[str, Field] = {
    'images': Field(('b', 'N', 'H', 'W', 3), np.uint8, "the video's frames, one group"),
    'input_ids': Field(('b', 'N', 'L'), np.int32, 'segment 0: START + question; the others: START'),
    'answer': Field(('b',), np.int32, 'index of the right answer in the vocabulary; -1: outside it'),
    'weight': Field(('b',), np.float32, '1 for a real row, 0 for padding of the last batch'),
}


class OpenQAModel(nnx.Module):
  """MERLOT (`.merlot`, loaded from pretraining) + an answer classifier (`.head`, new)."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = config.model
    if m.num_segments != m.segments_per_group:
      raise ConfigError(f'config.model.num_segments = {m.num_segments}, segments_per_group = '
                        f'{m.segments_per_group}: the frames must be one group; use finetune.finetune_config')
    self.merlot = MerlotModel(m, rngs=rngs)
    self.head = AnswerHead(m.hidden_size, config.finetune.num_options, rngs=rngs, init_std=m.init_std,
                           dropout_rate=m.dropout_rate, dtype=jnp.dtype(m.dtype))

  def __call__(self, images: jax.Array, input_ids: jax.Array, *, dropout_rng: jax.Array | None = None
               ) -> jax.Array:
    """images: [b, N, H, W, 3]; input_ids: int [b, N, L] -> float32 logits [b, num_answers]."""
    chex.assert_rank(input_ids, 3)
    rngs = [None] * 3 if dropout_rng is None else list(jax.random.split(dropout_rng, 3))
    vision = self.merlot.encode_frames(images, dropout_rng=rngs[0])
    joint = self.merlot.joint(vision, input_ids, None, dropout_rng=rngs[1])
    return self.head(joint.text[:, 0].astype(jnp.float32), dropout_rng=rngs[2])  # one group per example


def open_qa_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> OpenQAModel:
  """The ModelFn of open-ended QA."""
  return OpenQAModel(config, rngs=rngs)


def answer_loss(logits: jax.Array, answer: jax.Array, weight: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Softmax cross-entropy over the answers (rows with answer -1 or weight 0 left out) and accuracy over
  every weighted row (answer -1 is wrong). logits [b, A], answer int [b], weight [b] -> (loss, metrics)."""
  chex.assert_rank(logits, 2)
  chex.assert_shape([answer, weight], logits.shape[:1])
  weight = weight.astype(jnp.float32)
  trained = weight * (answer >= 0)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.maximum(answer, 0))
  correct = (jnp.argmax(logits, axis=-1) == answer).astype(jnp.float32)
  loss = jnp.sum(trained * nll) / jnp.maximum(jnp.sum(trained), 1.0)
  return loss, {'loss': loss, 'accuracy': jnp.sum(weight * correct) / jnp.maximum(jnp.sum(weight), 1.0)}


def open_qa_loss_fn(model: OpenQAModel, batch: Batch, rng: jax.Array, config: ml_collections.ConfigDict,
                    train: bool = True) -> tuple[jax.Array, Metrics]:
  """The LossFn of open-ended QA (dropout only when training)."""
  logits = model(batch['images'], batch['input_ids'], dropout_rng=rng if train else None)
  return answer_loss(logits, batch['answer'], batch['weight'])


OPEN_QA = Task('open_qa', open_qa_model, open_qa_loss_fn, OPEN_QA_BATCH_SPEC)


def predict(config: ml_collections.ConfigDict, params: state_lib.Params,
            batches: Iterable[dict[str, np.ndarray]]) -> dict[int, int]:
  """question_id -> index of the predicted answer, for every real row (weight > 0), without dropout."""
  layout = setup_lib.layout(config, OPEN_QA)

  def forward(p, batch):
    logits = state_lib.merge(layout.graphdef, p)(batch['images'], batch['input_ids'])
    return jnp.argmax(logits, axis=-1)

  jitted = jax.jit(forward, in_shardings=(layout.param_shardings, layout.batch_shardings),
                   out_shardings=NamedSharding(layout.mesh, PartitionSpec()))
  out = {}
  for local in batches:
    with jax.set_mesh(layout.mesh):
      guess = np.asarray(jitted(params, layout.global_batch(local)))
    for i in np.flatnonzero(local['weight'] > 0):
      out[int(local['question_id'][i])] = int(guess[i])
  return out


@dataclasses.dataclass(frozen=True)
class Scored:
  """A split's accuracy next to chance. Every question of the split counts: an answer outside the
  vocabulary, and a question that was skipped (no prediction), are wrong."""
  questions: int  # in the split's file
  evaluated: int  # with a prediction
  accuracy: float  # right / questions
  accuracy_evaluated: float  # right / evaluated
  in_vocabulary: float  # questions whose answer is in the vocabulary / questions: the best reachable accuracy
  chance_majority: float  # always answering the most frequent training answer (vocabulary[0])
  chance_uniform: float  # the expected accuracy of a uniform guess over the num_answers outputs
  majority_answer: str


def score(answers: Mapping[int, str], predicted: Mapping[int, int], vocabulary: Sequence[str],
          num_answers: int) -> Scored:
  """`answers`: question_id -> right answer for every question of the split; `predicted`: question_id ->
  output index (an index past the vocabulary, an output never trained, is wrong)."""
  if not answers:
    raise ValueError('no questions to score')
  if len(vocabulary) > num_answers:
    raise ValueError(f'{len(vocabulary)} answers in the vocabulary but only {num_answers} outputs')
  unknown = sorted(set(predicted) - set(answers))
  if unknown:
    raise ValueError(f'predictions for questions {unknown[:5]} that are not in the split')
  guess = lambda i: vocabulary[i] if 0 <= i < len(vocabulary) else None
  right = sum(guess(predicted[q]) == a for q, a in answers.items() if q in predicted)
  known = set(vocabulary)
  n, evaluated = len(answers), len(predicted)
  in_vocab = sum(a in known for a in answers.values())
  return Scored(n, evaluated, right / n, right / evaluated if evaluated else 0.0, in_vocab / n,
                sum(a == vocabulary[0] for a in answers.values()) / n, in_vocab / n / num_answers, vocabulary[0])
