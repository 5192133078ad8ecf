"""scripts/device_check.py on the CPU, with TensorFlow, PyAV and Beam unimportable: every stage runs on a cut-down
configs/tiny.py and writes sane values; a tiny budget skips stages and says why; a killed run keeps the stages
before; a stage that raises is recorded and the next one runs; and the parts with logic of their own (the batch
search, the profile's op categories) on their own.

The run's configs are chosen so that its programs repeat: the short training run, the benchmark and the profile
compile the same train step as the bfloat16 correctness check (same model, batch, objectives and schedule), so
the run compiles two train steps (float32 and bfloat16), and loads the rest from the persistent cache."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from merlot_jax.train import batch_search, device_check, profiling
from merlot_jax.train.check_report import Report
from tests.models.testlib import REPO
from tests.without_extras import NOT_INSTALLED, run_without_extras

SCRIPT = REPO / 'scripts' / 'device_check.py'
TRAIN_STEPS = 4
# configs/tiny.py cut down as tests/train/batches.micro_config, in bfloat16 with the masked tokens drawn by the RNG
# alone, at batch 2 on one device: the correctness check's bfloat16 program (merlot_jax/train/device_parity.py).
SMALL = ('model.num_segments=2', 'model.segments_per_group=2', 'model.image_size=(32,32)', 'model.num_vision_layers=1',
         'model.num_joint_layers=1', 'model.num_langonly_layers=1', 'model.dtype=bfloat16',
         'objectives.mask_use_attention=False', 'train.global_batch_size=2', f'train.total_steps={TRAIN_STEPS}')
ARGS = ('--config=tiny', *(f'--config.{o}' for o in SMALL), '--bench_config=tiny',
        *(f'--bench_config.{o}' for o in SMALL), f'--train_steps={TRAIN_STEPS}', '--remats=none', '--max_batch=2',
        '--batch_hints=none=2', '--memory_gib=1', '--peak_tflops=10', '--steps=2', '--profile_steps=2',
        '--profile_reserve_s=30', '--commit=test')
STAGES = ['environment', 'correctness', 'train_run', 'bench/cudnn/none', 'bench/xla/none', 'profile']

RUN = '''
    import os, re, runpy, sys
    flags = re.sub(r'--xla_force_host_platform_device_count=\\d+', '', os.environ.get('XLA_FLAGS', ''))
    os.environ['XLA_FLAGS'] = flags + ' --xla_force_host_platform_device_count=1'
    sys.argv = ['device_check.py', *{args!r}]
    try:
      runpy.run_path({script!r}, run_name='__main__')
    except SystemExit as e:
      assert not e.code, e.code
    print('LEAKED', sorted(m for m in sys.modules if m.split('.')[0] in {blocked!r}))
'''


def _run(tmp_path, *args):
  out = tmp_path / 'out'
  code = RUN.format(args=[f'--out={out}', *args], script=str(SCRIPT), blocked=NOT_INSTALLED)
  proc = run_without_extras(code, tmp_path)
  assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
  return proc, out, json.loads((out / 'results.json').read_text())['stages']


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  return _run(tmp_path_factory.mktemp('device_check'), *ARGS, '--budget_s=900')


def test_every_stage_runs_without_tensorflow_pyav_or_beam(full_run):
  proc, out, stages = full_run
  assert list(stages) == STAGES
  assert {n: s['status'] for n, s in stages.items()} == {**dict.fromkeys(STAGES, 'ok'), 'bench/cudnn/none': 'not run'}
  assert 'LEAKED []' in proc.stdout
  ended = [line.split(']')[0][1:] for line in proc.stdout.splitlines() if re.match(r'\[\S+\] (ok|not run)', line)]
  assert ended == STAGES  # printed as each ends
  markdown = (out / 'results.md').read_text()
  assert '| environment | ok |' in markdown and '## Train step benchmarks' in markdown


def test_environment_and_correctness_say_the_device_was_the_cpu(full_run):
  _, _, stages = full_run
  env = stages['environment']['values']
  assert (env['backend'], env['device_kind'], env['device_count'], env['commit']) == ('cpu', 'cpu', 1, 'test')
  assert {'jax', 'jaxlib', 'flax', 'optax'} <= set(env['versions']) and env['memory'] is None
  check = stages['correctness']['values']
  assert check['note'].startswith('the device is the host CPU')
  for dtype in ('float32', 'bfloat16'):  # the same CPU device twice: the plumbing, exactly
    assert check[dtype]['within_tolerance'] and check[dtype]['max_relative_diff'] <= 1e-6, check[dtype]
    assert check[dtype]['outputs_compared'] > 10 and check[dtype]['loss']['value'] > 0
  assert check['float32']['matmul_precision'] == 'highest'
  assert check['cudnn_vs_xla'] == 'not run: needs cuDNN (the backend is cpu)'


def test_training_run_benchmark_and_profile_values_are_sane(full_run):
  _, out, stages = full_run
  run = stages['train_run']['values']
  assert run['steps'] == TRAIN_STEPS and run['checkpoints_saved'] == [TRAIN_STEPS] and run['skipped_steps'] == 0
  assert all(0 < loss < 20 for _, loss in run['losses'])
  assert stages['bench/cudnn/none']['summary'] == 'not run: needs cuDNN (the backend is cpu)'
  bench = stages['bench/xla/none']['values']
  row = bench['row']
  assert row['per_device_batch'] == 2 and bench['search']['complete'] and bench['search']['tried']['2']['compiled_gib']
  assert 0 < row['mfu'] <= 1 and row['step_ms'] > 0 and row['compiled_gib'] > 0
  assert row['measured_peak_gib'] is None  # the CPU reports no allocator statistics
  profile = stages['profile']['values']
  assert profile['setting'] == {'attention': 'xla', 'remat': 'none', 'per_device_batch': 2, 'mfu': row['mfu']}
  assert abs(sum(c['share'] for c in profile['categories']) - 1) < 1e-3 and profile['share_matched_to_hlo'] > 0.9
  assert {c['category'] for c in profile['categories']} >= {'matmul', 'convolution'}
  for name in ('profile_trace.json.gz', 'train_step_hlo.txt.gz'):
    assert 0 < (out / name).stat().st_size < 8 * 2**20, name


def test_a_budget_too_small_skips_every_stage_after_the_environment_and_says_why(tmp_path):
  _, out, stages = _run(tmp_path, '--config=tiny', '--bench_config=tiny', '--budget_s=0', '--remats=none,full')
  assert stages.pop('environment')['status'] == 'ok'
  assert list(stages) == ['correctness', 'train_run', 'bench/cudnn/none', 'bench/cudnn/full', 'bench/xla/none',
                          'bench/xla/full', 'profile']
  for name, stage in stages.items():
    assert stage['status'] == 'skipped' and stage['summary'].startswith('time budget: needs about'), name
  assert '| profile | skipped |' in (out / 'results.md').read_text()


def test_a_run_cut_short_keeps_the_stages_before(tmp_path):
  out = tmp_path / 'out'
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  proc = subprocess.Popen([sys.executable, str(SCRIPT), f'--out={out}', '--config=tiny', '--bench_config=tiny'],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    for line in proc.stdout:
      if line.startswith('[correctness] started'):
        proc.send_signal(signal.SIGKILL)  # as a device call's time limit does
        break
  finally:
    proc.kill()
    proc.wait(timeout=60)
  stages = json.loads((out / 'results.json').read_text())['stages']
  assert {n: s['status'] for n, s in stages.items()} == {'environment': 'ok', 'correctness': 'running'}
  assert stages['environment']['values']['backend'] == 'cpu'
  assert '| correctness | running |' in (out / 'results.md').read_text()


def test_a_stage_that_raises_is_recorded_as_failed_and_the_next_one_runs(tmp_path, monkeypatch):
  def fails(ctx):
    raise RuntimeError('no luck')

  monkeypatch.setattr(device_check, 'run_train', fails)
  monkeypatch.setattr(device_check, 'run_profile', lambda ctx: ('profiled', {'x': 1}))
  lines = []
  options = device_check.Options(ml_collections.ConfigDict(), ml_collections.ConfigDict(), attentions=(), remats=())
  ctx = device_check.Context(options, None, None, Report(tmp_path, echo=lines.append), time.perf_counter() + 100)
  for name in ('train_run', 'profile'):
    device_check.run_stage(ctx, name)
  stages = json.loads((tmp_path / 'results.json').read_text())['stages']
  assert stages['train_run']['status'] == 'failed' and stages['train_run']['summary'] == 'RuntimeError: no luck'
  assert 'raise RuntimeError' in stages['train_run']['values']['traceback']
  assert stages['profile'] == {'status': 'ok', 'seconds': stages['profile']['seconds'], 'summary': 'profiled',
                               'values': {'x': 1}}
  assert lines[1].startswith('[train_run] failed in ') and lines[-1].endswith(': profiled')
  assert '```' in (tmp_path / 'results.md').read_text()  # the traceback, as a code block


def test_benchmark_script_imports_no_tensorflow(tmp_path):
  proc = run_without_extras(f'''
      import runpy, sys
      runpy.run_path({str(REPO / 'scripts' / 'benchmark.py')!r}, run_name='imported')
      print('LEAKED', sorted(m for m in sys.modules if m.split('.')[0] in {NOT_INSTALLED!r}))
      ''', tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'LEAKED []' in proc.stdout


def _affine(fixed: int, per_example: int, calls: list[int]):
  def measure(b):
    calls.append(b)
    return fixed + per_example * b
  return measure


@pytest.mark.parametrize('start', [1, 5, 18, 40])
def test_batch_search_finds_the_largest_fit_in_few_compiles(start):
  calls = []  # 80 GiB, 7 GiB + 4 GiB per example (the shape of configs/base.py with full remat): 18 fits, 19 does not
  found = batch_search.search_max_batch(_affine(7, 4, calls), 80, start=start)
  assert (found.best, found.complete, found.too_big) == (18, True, 19)
  assert len(calls) <= 5 and len(set(calls)) == len(calls), calls
  assert found.tried == {b: 7 + 4 * b for b in calls}


@pytest.mark.parametrize('memory, best', [(100, 30), (13, 1), (12, 0), (10_000, 64)])
def test_batch_search_edges(memory, best):
  """fits iff 10 + 3 b <= memory: the largest fit by hand, within the limit of 64."""
  found = batch_search.search_max_batch(_affine(10, 3, []), memory, limit=64)
  assert (found.best, found.complete) == (best, True)


def test_find_max_batch_logs_each_size_it_compiles(monkeypatch):
  monkeypatch.setattr(batch_search, 'compiled_step_bytes', lambda config, task, b: ((10 + 3 * b) * 2**30, 1.0))
  lines = []
  found = batch_search.find_max_batch(None, None, 100 * 2**30, limit=64, log=lines.append)
  assert found.best == 30 and len(lines) == len(found.tried)
  assert lines[0] == 'per-device batch 1: 13.00 GiB compiled in 1 s: fits'


def test_batch_search_limits_out_of_memory_compiles_and_the_clock():
  assert batch_search.search_max_batch(_affine(0, 1, []), 100, limit=8).best == 8
  assert batch_search.search_max_batch(_affine(90, 20, []), 100) == batch_search.Search(0, {1: 110}, True, 1)
  too_big = lambda b: batch_search.TOO_BIG if b > 6 else b * 10
  assert batch_search.search_max_batch(too_big, 1000).best == 6  # a compile that ran out of memory does not fit
  left = iter([True, True, False])
  cut = batch_search.search_max_batch(_affine(7, 4, []), 80, can_continue=lambda: next(left))
  assert (cut.best, cut.complete, len(cut.tried)) == (2, False, 2)


HLO = '''
%fused_dot (p0: bf16[8,8], p1: bf16[8,8]) -> bf16[8,8] {
  %p0 = bf16[8,8]{1,0} parameter(0)
  %p1 = bf16[8,8]{1,0} parameter(1)
  ROOT %dot.1 = bf16[8,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_add (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  ROOT %add.2 = f32[8]{0} add(%p0, %p0)
}

ENTRY %main.9 (a: bf16[8,8], b: f32[8]) -> (bf16[8,8], f32[8]) {
  %a = bf16[8,8]{1,0} parameter(0)
  %b = f32[8]{0} parameter(1)
  %gemm_fusion.3 = bf16[8,8]{1,0} fusion(%a, %a), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(f)/dot"}
  %loop_add_fusion = f32[8]{0} fusion(%b), kind=kLoop, calls=%fused_add
  %custom-call.4 = (bf16[8,8]{1,0}, u8[0]{0}) custom-call(%a, %a, %a), custom_call_target="__cudnn$fmhaSoftmax"
  %cublas.5 = (bf16[8,8]{1,0}, s8[4]{0}) custom-call(%a, %a), custom_call_target="__cublas$gemm"
  %while.6 = (s32[], f32[8]{0}) while(%t), condition=%c, body=%w
  ROOT %tuple.7 = (bf16[8,8]{1,0}, f32[8]{0}) tuple(%gemm_fusion.3, %b)
}
'''


def test_profile_categories_from_the_compiled_module():
  ops = profiling.hlo_ops(HLO)
  assert {k: v[0] for k, v in ops.items() if not k.startswith(('p', 'a', 'b', 'dot', 'add'))} == {
      'gemm_fusion.3': 'matmul', 'loop_add_fusion': 'elementwise fusion', 'custom-call.4': 'attention (cuDNN)',
      'cublas.5': 'matmul', 'while.6': 'control', 'tuple.7': 'copy / layout'}
  assert ops['gemm_fusion.3'][1] == 'jit(f)/dot'
  summary = profiling.summarize({'gemm_fusion.3': (3.0, 2), 'kernel:nccl_allreduce': (1.0, 2)}, HLO, steps=2)
  assert [(c['category'], c['share']) for c in summary['categories']] == [('matmul', 0.75), ('collective', 0.25)]
  assert summary['share_matched_to_hlo'] == 0.75 and summary['top_ops'][0]['ms_per_step'] == 1500.0


def test_profile_self_times_leave_nested_ops_to_the_inner_op():
  # a while loop from 0 to 10 s holding two fusions (2 s and 3 s), then a copy
  times = profiling._self_times([(0.0, 10.0, 'while'), (1.0, 2.0, 'f1'), (4.0, 3.0, 'f2'), (11.0, 1.0, 'copy')])
  assert times == {'while': (5.0, 1), 'f1': (2.0, 1), 'f2': (3.0, 1), 'copy': (1.0, 1)}
