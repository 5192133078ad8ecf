"""Multiple-choice finetuning (TVQA, VCR) of a pretrained MERLOT, as the original's downstream/vcr does it.

Every (context, option) pair is one text for the joint encoder together with the example's frames; a
head scores each option's first text token (START) and a softmax over the options is trained with
cross-entropy. The head follows the original's `answer_cls` / `rationale_cls`: dropout -> dense to
hidden/2 + GELU -> dropout -> dense to 1, its bias starting at -log((1 - pi) / pi) with pi = 1 / options.
VCR trains two such heads in one model (Q->A and QA->R problems; the original's joint cls_head), so a
batch row names its head.

Layout: the frames are encoded once per example and shared by its K options, which become a batch axis
of the joint encoder: input_ids [b, K, N, T] -> [b * K, N, T] -> logits regrouped to [b, K]. One option is
one group (num_segments = segments_per_group = the task's frames), so its first text token is the
START of segment 0, which carries the context and the option (merlot_jax/tasks/mc_data.py).

Parameters: `finetune_config` takes the architecture from the pretrained params checkpoint and only the
layout (frames, segment length) from the task; no parameter shape depends on the layout, so the
checkpoint (ours or a converted original) loads into `MultipleChoiceModel.merlot` and only the head is new.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import chex
import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from merlot_jax import workdir as workdir_lib
from merlot_jax.config import ConfigError, validate
from merlot_jax.data.batch_spec import Field
from merlot_jax.models.heads import MultipleChoiceHead
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.pretrained import pretrained_config, restore_pretrained
from merlot_jax.train import loop
from merlot_jax.train import setup as setup_lib
from merlot_jax.train import state as state_lib
from merlot_jax.train.task import Batch, Metrics, Task

# The model's inputs, as mc_data.mc_batches yields them (it adds the host-only 'example_id').
MC_BATCH_SPEC: dict[str, Field] = {
    'images': Field(('b', 'N', 'H', 'W', 3), np.uint8, "the example's frames (one group), shared by its options"),
    'input_ids': Field(('b', 'K', 'N', 'L'), np.int32, 'per option: context + option text in segment 0'),
    'label': Field(('b',), np.int32, 'the right option'),
    'head': Field(('b',), np.int32, 'which scoring head (VCR: 0 answer, 1 rationale)'),
    'weight': Field(('b',), np.float32, '1 for a real row, 0 for padding of the last batch'),
}
VCR_HEADS = ('answer', 'rationale')


def finetune_config(task: ml_collections.ConfigDict, pretrained: ml_collections.ConfigDict
                    ) -> ml_collections.ConfigDict:
  """The task config with the pretrained model's architecture and the task's layout.

  task.finetune: num_frames (segments per option, all in one group), segment_length, num_options,
  heads (names; one scoring head each), optionally image_size (the frames' size for this task, e.g. VCR's
  384 x 704; the ViT's 2-D position tables cover it up to model.max_2d_positions patches a side).
  Everything else of `task` (optim, train, data, mesh) is kept.
  """
  c = task.copy_and_resolve_references()
  f = c.finetune
  c.model = pretrained.model.copy_and_resolve_references()
  c.model.num_segments = c.model.segments_per_group = f.num_frames
  c.model.segment_length = f.segment_length
  if f.get('image_size'):
    c.model.image_size = tuple(f.image_size)
  if f.num_options < 2 or not f.heads:
    raise ConfigError(f'config.finetune: num_options = {f.num_options}, heads = {f.heads}: need at least 2 '
                      'options and one head')
  return validate(c)


def load_finetune_config(task: ml_collections.ConfigDict, checkpoint: str | pathlib.Path
                         ) -> ml_collections.ConfigDict:
  """`finetune_config` with the model of a params checkpoint or a pretraining workdir (its config.json)."""
  return finetune_config(task, pretrained_config(checkpoint))


class MultipleChoiceModel(nnx.Module):
  """MERLOT (`.merlot`, loaded from pretraining) + a multiple-choice head (`.head`, new)."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m, f = config.model, config.finetune
    if m.num_segments != m.segments_per_group:
      raise ConfigError(f'config.model.num_segments = {m.num_segments}, segments_per_group = '
                        f'{m.segments_per_group}: one option must be one group; use finetune_config')
    self.merlot = MerlotModel(m, rngs=rngs)
    self.head = MultipleChoiceHead(m.hidden_size, len(f.heads), f.num_options, rngs=rngs, init_std=m.init_std,
                                   dropout_rate=m.dropout_rate, dtype=jnp.dtype(m.dtype))

  def __call__(self, images: jax.Array, input_ids: jax.Array, head: jax.Array, *,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """images: [b, N, H, W, 3]; input_ids: int [b, K, N, T]; head: int [b] -> float32 logits [b, K]."""
    b, k = input_ids.shape[:2]
    chex.assert_rank(input_ids, 4)
    chex.assert_shape(head, (b,))
    rngs = [None] * 3 if dropout_rng is None else list(jax.random.split(dropout_rng, 3))
    vision = self.merlot.encode_frames(images, dropout_rng=rngs[0])
    n = self.merlot.config.num_segments
    # The joint encoder reads only cls and pooled; each option gets its example's frames.
    per_option = lambda x: einops.repeat(x, '(b n) ... -> (b k n) ...', n=n, k=k)
    vision = dataclasses.replace(vision, cls=per_option(vision.cls), pooled=per_option(vision.pooled))
    ids = einops.rearrange(input_ids, 'b k n t -> (b k) n t')
    joint = self.merlot.joint(vision, ids, None, dropout_rng=rngs[1])
    first = joint.text[:, 0].astype(jnp.float32)  # each option's START token
    logits = self.head(first, einops.repeat(head, 'b -> (b k)', k=k), dropout_rng=rngs[2])
    return logits.reshape(b, k)


def multiple_choice_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> MultipleChoiceModel:
  """The ModelFn of finetuning."""
  return MultipleChoiceModel(config, rngs=rngs)


def multiple_choice_loss(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Softmax cross-entropy over the options and accuracy, weighted means over examples (weight 0:
  padding). logits [b, K], labels int [b] -> (loss, {'loss', 'accuracy'})."""
  chex.assert_rank(logits, 2)
  chex.assert_shape(labels, logits.shape[:1])
  weight = jnp.ones(labels.shape, jnp.float32) if weight is None else weight.astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  total = jnp.maximum(jnp.sum(weight), 1.0)
  loss = jnp.sum(weight * nll) / total
  return loss, {'loss': loss, 'accuracy': jnp.sum(weight * correct) / total}


def mc_loss_fn(model: MultipleChoiceModel, batch: Batch, rng: jax.Array, config: ml_collections.ConfigDict,
               train: bool = True) -> tuple[jax.Array, Metrics]:
  """The LossFn of finetuning (dropout only when training)."""
  logits = model(batch['images'], batch['input_ids'], batch['head'], dropout_rng=rng if train else None)
  return multiple_choice_loss(logits, batch['label'], batch['weight'])


MULTIPLE_CHOICE = Task('multiple_choice', multiple_choice_model, mc_loss_fn, MC_BATCH_SPEC)


def pretrained_init(checkpoint: str | pathlib.Path, config: ml_collections.ConfigDict
                    ) -> Callable[[state_lib.Params], state_lib.Params]:
  """fresh params -> the same with `merlot` restored from a params checkpoint or a pretraining workdir (its
  latest checkpoint), in its shardings."""
  # Built here, outside any mesh context, where logical axis names would be read as mesh axes.
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0))), nnx.Param)

  def init(params: state_lib.Params) -> state_lib.Params:
    body = nnx.merge(graphdef, params['merlot'])
    restore_pretrained(checkpoint, body)
    return {**params, 'merlot': nnx.state(body, nnx.Param).to_pure_dict()}

  return init


def finetune(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, batches_factory: loop.BatchesFactory,
             *, init_checkpoint: str | pathlib.Path | None, task: Task = MULTIPLE_CHOICE, progress: bool = True,
             eval_batches_factory: Callable[[], Iterator[dict[str, np.ndarray]]] | None = None,
             devices: Sequence[jax.Device] | None = None, config_override_ok: bool = False
             ) -> state_lib.TrainState:
  """Trains `task` (MULTIPLE_CHOICE, or open_qa.OPEN_QA) with the pretraining loop (mesh, sharded state,
  donated jitted step, Orbax checkpoints and resume, metrics). `init_checkpoint`: params checkpoint or
  pretraining workdir for the body (None: random init, for tests of the plumbing only)."""
  init = None if init_checkpoint is None else pretrained_init(init_checkpoint, config)
  return loop.train(config, task.with_init(init), workdir, batches_factory,
                    eval_batches_factory=eval_batches_factory, progress=progress, devices=devices,
                    config_override_ok=config_override_ok)


def restore_finetuned(workdir: str | os.PathLike, task: Task, step: int | None = None
                      ) -> tuple[ml_collections.ConfigDict, state_lib.Params]:
  """(config, params) of a finetuning run of `task` (MULTIPLE_CHOICE or open_qa.OPEN_QA): its config.json and
  the params of training checkpoint `step` (default: the latest)."""
  config = workdir_lib.read_config(workdir)
  if 'finetune' not in config:
    raise ValueError(f'{workdir}/{workdir_lib.CONFIG_FILE} has no `finetune` section: not a finetuning workdir')
  abstract = setup_lib.layout(config, task).abstract_params
  return config, workdir_lib.restore_train_params(workdir, abstract, step)


# --- evaluation ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prediction:
  example_id: str  # the dataset example (VCR: shared by its answer and rationale problems)
  head: int
  label: int
  logits: np.ndarray  # float [K]

  @property
  def correct(self) -> bool:
    return int(np.argmax(self.logits)) == self.label


def predict(config: ml_collections.ConfigDict, params: state_lib.Params,
            batches: Iterable[dict[str, np.ndarray]]) -> list[Prediction]:
  """Scores every real row (weight > 0) of `mc_data.mc_batches` output, without dropout."""
  layout = setup_lib.layout(config, MULTIPLE_CHOICE)

  def forward(p, batch):
    return state_lib.merge(layout.graphdef, p)(batch['images'], batch['input_ids'], batch['head'])

  jitted = jax.jit(forward, in_shardings=(layout.param_shardings, layout.batch_shardings),
                   out_shardings=NamedSharding(layout.mesh, PartitionSpec()))
  out = []
  for local in batches:
    with jax.set_mesh(layout.mesh):
      logits = np.asarray(jitted(params, layout.global_batch(local)))
    for i in np.flatnonzero(local['weight'] > 0):
      out.append(Prediction(str(local['example_id'][i]), int(local['head'][i]), int(local['label'][i]), logits[i]))
  return out


def vcr_accuracies(answer_correct: np.ndarray, rationale_correct: np.ndarray) -> dict[str, float]:
  """Q->A, QA->R and Q->AR (both right) accuracy from per-example booleans (QA->R given the true answer)."""
  a, r = np.asarray(answer_correct, bool), np.asarray(rationale_correct, bool)
  chex.assert_equal_shape((a, r))
  return {'q_a': float(a.mean()), 'qa_r': float(r.mean()), 'q_ar': float((a & r).mean())}


def summarize(predictions: Sequence[Prediction], heads: Sequence[str]) -> dict[str, float]:
  """Accuracy per head ('<head>_accuracy'); for VCR's two heads also q_a, qa_r and q_ar."""
  if not predictions:
    raise ValueError('no predictions to summarize')
  out = {}
  for i, name in enumerate(heads):
    mine = [p.correct for p in predictions if p.head == i]
    if mine:
      out[f'{name}_accuracy'] = float(np.mean(mine))
  if tuple(heads) == VCR_HEADS:
    by_id = {(p.example_id, p.head): p.correct for p in predictions}
    ids = sorted({p.example_id for p in predictions})
    missing = [i for i in ids if (i, 0) not in by_id or (i, 1) not in by_id]
    if missing:
      raise ValueError(f'VCR examples {missing[:5]} lack an answer or a rationale prediction')
    out.update(vcr_accuracies(np.array([by_id[i, 0] for i in ids]), np.array([by_id[i, 1] for i in ids])))
  return out


def uniform_chance(num_options: int, metric: str = 'answer') -> float:
  """A uniform guess's accuracy over `num_options`: 1/K per head, 1/K^2 for VCR's Q->AR (both right)."""
  return 1.0 / num_options ** (2 if metric == 'q_ar' else 1)

