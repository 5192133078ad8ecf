"""The core install: the model, the converter's numpy path, loading and a train step on random batches run
with TensorFlow, TensorFlow Datasets, Apache Beam and PyAV unimportable (as in `pip install merlot_jax`), and
reaching for the input pipeline names the extra to install."""

from tests.without_extras import NOT_INSTALLED, run_without_extras

CORE_RUN = '''
    import json
    import jax, numpy as np
    import merlot_jax
    from merlot_jax.convert import parity, tf_checkpoint
    from merlot_jax.data.random_batch import random_batch
    from merlot_jax.pretraining.task import PRETRAINING
    from merlot_jax.train import setup
    from merlot_jax.workdir import save_params

    config = merlot_jax.load_config('tiny')
    config.train.global_batch_size = 2
    m = config.model  # smaller than tiny, for a quick compile: what is under test is the install
    m.num_segments, m.segments_per_group, m.image_size = 2, 2, (32, 32)
    m.num_vision_layers = m.num_joint_layers = m.num_langonly_layers = 1
    model = merlot_jax.build_model(config)
    m = config.model
    batch = random_batch(config, 2, seed=0)
    out = model(batch['images'], batch['input_ids'])
    assert out.frame_embedding.shape == (2, m.num_segments, m.hidden_size), out.frame_embedding.shape
    reference = parity.config_from_reference(json.load(open({golden!r} + '/config.json')))
    converted = merlot_jax.build_model(reference)
    tf_checkpoint.convert_variables(dict(np.load({golden!r} + '/variables.npz')), converted)
    save_params({workdir!r}, converted, reference)
    loaded, _ = merlot_jax.load_pretrained({workdir!r})
    run = setup.build(config, PRETRAINING, devices=jax.devices()[:1])
    state, metrics = run.train_step(run.init_state(), run.global_batch(batch))
    assert np.isfinite(float(metrics['loss'])), metrics
    leaked = sorted(name for name in sys.modules if name.split('.')[0] in {blocked!r})
    assert not leaked, leaked
    try:
      import merlot_jax.data.pipeline
    except ImportError as e:
      print('PIPELINE:', e)
    print('CORE OK')
'''


def test_core_runs_without_tensorflow_beam_or_pyav(tmp_path, golden_dir):
  code = CORE_RUN.format(blocked=NOT_INSTALLED, workdir=str(tmp_path / 'params'), golden=str(golden_dir))
  proc = run_without_extras(code, tmp_path)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'CORE OK' in proc.stdout
  assert ("PIPELINE: tensorflow is not installed; it comes with merlot_jax's 'data' extra (the tf.data input "
          "pipeline, video preprocessing and the downstream releases): pip install 'merlot_jax[data]'") in proc.stdout
