"""Mesh creation, logical-axis rules, and the model's forward on 8 fake CPU devices under several meshes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from merlot_jax import sharding
from merlot_jax.config import load_config
from merlot_jax.models.merlot import MerlotModel
from tests.models.testlib import REPO, fast_jit, fill_module


def mesh_config(data, fsdp, tensor):
  return ml_collections.ConfigDict({'data': data, 'fsdp': fsdp, 'tensor': tensor})


def test_eight_fake_devices():
  assert jax.device_count() == 8, 'tests/conftest.py should give 8 fake CPU devices'


@pytest.mark.parametrize('axes,shape', [
    ((1, -1, 1), (1, 8, 1)), ((2, -1, 1), (2, 4, 1)), ((-1, 2, 2), (2, 2, 2)), ((1, 4, -1), (1, 4, 2)),
    ((2, 2, 2), (2, 2, 2)), ((8, 1, 1), (8, 1, 1)),
])
def test_make_mesh_shapes(axes, shape):
  mesh = sharding.make_mesh(mesh_config(*axes))
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')
  assert tuple(mesh.shape[a] for a in mesh.axis_names) == shape
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_make_mesh_on_a_subset_of_devices():
  mesh = sharding.make_mesh(mesh_config(1, -1, 2), devices=jax.devices()[:4])
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 2, 'tensor': 2}


@pytest.mark.parametrize('axes,message', [
    ((-1, -1, 1), 'at most one axis may be -1'),
    ((3, -1, 1), 'not divisible'),
    ((2, 2, 1), 'needs 4 devices, but 8'),
    ((2, 2, 4), 'needs 16 devices'),
])
def test_make_mesh_errors(axes, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(mesh_config(*axes))


def test_logical_to_spec_rules():
  assert sharding.logical_to_spec(('embed', 'mlp')) == P('fsdp', 'tensor')
  assert sharding.logical_to_spec(('layers', 'embed', 'heads')) == P(None, 'fsdp', 'tensor')
  assert sharding.logical_to_spec(('vocab', 'embed')) == P('tensor', 'fsdp')
  # A mesh axis shards one dimension only: the batch takes fsdp, so activations' embed stays replicated.
  assert sharding.logical_to_spec(('batch', 'seq', 'embed')) == P(('data', 'fsdp'), None, None)
  assert sharding.logical_to_spec(('seq', 'mlp', 'heads')) == P(None, 'tensor', None)
  assert sharding.logical_to_spec(('replicated',)) == P(None)
  assert sharding.logical_to_spec((None, None)) == P(None, None)
  with pytest.raises(KeyError, match='no_such_axis'):
    sharding.logical_to_spec(('no_such_axis',))


def test_logical_to_spec_leaves_non_divisible_dimensions_replicated():
  mesh = sharding.make_mesh(mesh_config(1, 2, 4))
  # The GPT-2 vocabulary of the released weights (50370) does not divide by 4; the hidden size does.
  assert sharding.logical_to_spec(('vocab', 'embed'), (50370, 768), mesh) == P(None, 'fsdp')
  assert sharding.logical_to_spec(('vocab', 'embed'), (50368, 768), mesh) == P('tensor', 'fsdp')
  assert sharding.logical_to_spec(('embed', 'mlp'), (7, 8), mesh) == P(None, 'tensor')
  mesh = sharding.make_mesh(mesh_config(2, 2, 2))
  assert sharding.logical_to_spec(('batch', None), (6, 3), mesh) == P(None, None)  # 6 % (2*2) != 0
  assert sharding.logical_to_spec(('batch', None), (8, 3), mesh) == P(('data', 'fsdp'), None)


def test_constrain_is_a_no_op_outside_a_mesh_and_shards_inside():
  x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
  assert sharding.constrain(x, ('batch', None)) is x
  mesh = sharding.make_mesh(mesh_config(2, 4, 1))
  with jax.set_mesh(mesh):
    y = jax.jit(lambda x: sharding.constrain(x * 2, ('batch', 'mlp')))(x)
    z = jax.jit(lambda x: sharding.constrain(x[:6] * 2, ('batch', None)))(x)  # 6 rows: not divisible by 8
  assert y.sharding.spec[0] == ('data', 'fsdp')
  assert y.addressable_shards[0].data.shape == (1, 6)
  assert z.addressable_shards[0].data.shape == (6, 6)
  np.testing.assert_array_equal(y, np.asarray(x) * 2)


# --- the model on meshes -----------------------------------------------------------------------------------


def small_config():
  """The tiny config with smaller frames and a prime vocabulary (509), which no tensor axis divides."""
  c = load_config(REPO / 'configs' / 'tiny.py')
  m = c.model
  m.image_size = (32, 64)
  m.num_segments, m.segments_per_group = 2, 2
  m.vocab_size = 509
  return c


BATCH = 8


@pytest.fixture(scope='module')
def model_and_inputs():
  c = small_config()
  model = fill_module(nnx.eval_shape(lambda: MerlotModel(c.model, rngs=nnx.Rngs(params=0))), seed=3)
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (BATCH, 2, 32, 64, 3)).astype(np.uint8)
  ids = rng.randint(100, 509, (BATCH, 2, 8)).astype(np.int32)
  ids[:, :, 0] = 2
  ids[::2, 1, 5:] = 0  # padding
  index = np.tile(np.array([0, 1], np.int32), (BATCH, 1))
  index[1::3] = [17, 16]
  return model, (images, ids, index)


def _forward_fn(graphdef):
  def forward(state, images, ids, index):
    out = nnx.merge(graphdef, state)(images, ids, index)
    return {'frame_projection': out.frame_projection, 'transcript_projection': out.transcript_projection,
            'joint_visual': out.joint.visual, 'joint_text': out.joint.text,
            'language_only': out.language_only.hidden, 'vit_cls': out.vision.cls}
  return fast_jit(forward)


@pytest.fixture(scope='module')
def single_device_outputs(model_and_inputs):
  model, inputs = model_and_inputs
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, jax.devices()[0])
  return jax.tree.map(np.asarray, _forward_fn(graphdef)(state, *inputs))


MESHES = [(8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]


@pytest.mark.parametrize('axes', MESHES, ids=lambda a: 'x'.join(map(str, a)))
def test_sharded_forward_equals_single_device(model_and_inputs, single_device_outputs, axes):
  model, (images, ids, index) = model_and_inputs
  mesh = sharding.make_mesh(mesh_config(*axes))
  graphdef, state = nnx.split(model)
  shardings = sharding.param_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  batch = [jax.device_put(x, sharding.batch_sharding(mesh, x.ndim)) for x in (images, ids, index)]
  data, fsdp, tensor = axes

  # The parameters really are placed as the rules say.
  params = state.to_pure_dict()
  kernel = params['encoder']['layers']['mlp']['intermediate']['kernel']  # ('layers', 'embed', 'mlp')
  assert kernel.sharding.spec == P(None, 'fsdp', 'tensor')
  assert kernel.addressable_shards[0].data.shape == (2, 64 // fsdp, 128 // tensor)
  out_kernel = params['encoder']['layers']['mlp']['output']['kernel']  # ('layers', 'mlp', 'embed')
  assert out_kernel.sharding.spec == P(None, 'tensor', 'fsdp')
  query = params['vision']['transformer']['layers']['attn']['query']['kernel']  # ('layers', 'embed', 'heads')
  assert query.sharding.spec == P(None, 'fsdp', 'tensor')
  # vocab 509 is divisible by no tensor axis > 1: replicated along it.
  words = params['word_embeddings']
  assert words.sharding.spec == P('tensor' if tensor == 1 else None, 'fsdp')
  assert words.addressable_shards[0].data.shape == (509, 64 // fsdp)
  assert params['encoder']['final_ln']['scale'].sharding.spec == P(None)
  assert params['vision']['resnet']['stem'][0]['conv']['kernel'].sharding.spec == P(None, None, None, None)
  assert all(isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.mesh.shape == mesh.shape
             for x in jax.tree.leaves(params))

  with jax.set_mesh(mesh):
    out = _forward_fn(graphdef)(state, *batch)
  for key, ref in single_device_outputs.items():
    np.testing.assert_allclose(np.asarray(out[key]), ref, rtol=1e-5, atol=1e-5, err_msg=key)


def test_param_shardings_on_abstract_state_cover_every_param():
  c = small_config()
  abstract = nnx.eval_shape(lambda: MerlotModel(c.model, rngs=nnx.Rngs(params=0)))
  mesh = sharding.make_mesh(mesh_config(1, 4, 2))
  shardings = sharding.param_shardings(nnx.state(abstract, nnx.Param), mesh).to_pure_dict()
  leaves = jax.tree.leaves(shardings)
  assert len(leaves) == len(jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert all(isinstance(s, jax.sharding.NamedSharding) for s in leaves)
  specs = jax.tree.map(lambda s: s.spec, shardings)
  assert specs['image_index_embedding'] == P(None, 'fsdp')
  assert specs['vision']['pos']['grid'] == P(None, None, 'fsdp')
  assert specs['lm_head']['output_bias'] == P(None)  # 509 % 2
  assert specs['encoder']['layers']['attn']['out']['kernel'] == P(None, 'tensor', 'fsdp')
  assert specs['encoder']['layers']['attn_ln']['scale'] == P(None, None)
