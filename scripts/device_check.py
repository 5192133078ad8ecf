"""The first accelerator run in one command: environment, correctness against the host CPU, a short training run,
the paper model's largest batch, step time, MFU and memory per attention x remat, and a profile of the best.

  python scripts/device_check.py --out DIR [--budget_s=480] [--commit=SHA] [--batch_hints=none=6,full=18]
      [--remats=none,full] [--attentions=cudnn,xla] [--stages=environment,bench/cudnn] [--config.x=...]
      [--bench_config.model.x=...]

Writes DIR/results.json and DIR/results.md after every stage (a run cut short keeps what it measured) and
prints each stage's result as it ends; the profile adds DIR/profile_trace.json.gz (perfetto) and
DIR/train_step_hlo.txt.gz when each is under --max_file_mib. Needs only the core install (no TensorFlow,
PyAV or Beam). merlot_jax/train/device_check.py says what each stage does; docs/gpu.md how to run it.
"""

import logging

from absl import app, flags

from merlot_jax import flags as flags_lib
from merlot_jax.config import CHOICES, validate
from merlot_jax.pretraining.task import PRETRAINING, pretraining_forward
from merlot_jax.train import device_check

_OUT = flags.DEFINE_string('out', None, 'folder for results.json, results.md and the profile files')
_CONFIG = flags_lib.define_config('tiny', 'the small model of the correctness check and the short training run')
_BENCH_CONFIG = flags_lib.define_config('base', 'the model of the benchmarks and the profile', name='bench_config')
_BUDGET = flags.DEFINE_float('budget_s', 480.0, 'seconds for the whole run; a stage that would not fit is skipped')
_STEPS = flags.DEFINE_integer('steps', 5, 'timed steps per benchmark (after a warm-up step)')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 20, 'steps of the short training run')
_REMATS = flags.DEFINE_list('remats', ['none', 'full'],
                            f'remat policies benchmarked, of {CHOICES["model.remat_policy"]}')
_ATTENTIONS = flags.DEFINE_list('attentions', ['cudnn', 'xla'], 'attention implementations benchmarked, in this '
                                f'order, of {CHOICES["model.attention_impl"]}')
_HINTS = flags.DEFINE_list('batch_hints', [], 'REMAT=BATCH: the per-device batch the search tries first (it '
                           'still finds the largest that fits; a good guess saves compiles)')
_MAX_BATCH = flags.DEFINE_integer('max_batch', 256, 'largest per-device batch the search tries')
_MEMORY = flags.DEFINE_float('memory_gib', None, 'device memory for the search (default: the allocator limit)')
_PEAK = flags.DEFINE_float('peak_tflops', None, 'peak TFLOP/s per device for MFU (default: the GPU datasheet '
                           'bf16 dense peak by device kind; on the CPU the measured matmul peak)')
_PROFILE_STEPS = flags.DEFINE_integer('profile_steps', 3, 'steps traced by the profile')
_PROFILE_RESERVE = flags.DEFINE_float('profile_reserve_s', 60.0, 'seconds the benchmarks leave for the profile')
_MAX_FILE = flags.DEFINE_float('max_file_mib', 8.0, 'largest trace / module text copied to --out')
_COMMIT = flags.DEFINE_string('commit', None, 'the commit measured (default: git rev-parse HEAD of the checkout)')
_STAGES = flags.DEFINE_list('stages', None, 'only these stages (names or prefixes: environment, correctness, '
                            'train_run, bench, bench/cudnn, bench/xla/full, profile)')
flags.mark_flags_as_required(['out'])


def _choices(flag: str, values: list[str], field: str) -> tuple[str, ...]:
  unknown = [v for v in values if v not in CHOICES[field]]
  if unknown:
    raise app.UsageError(f'--{flag}: {unknown} not among {CHOICES[field]} ({field})')
  return tuple(dict.fromkeys(values))


def _hints(values: list[str]) -> dict[str, int]:
  try:
    hints = {k: int(v) for k, v in (h.split('=') for h in values)}
  except ValueError:
    raise app.UsageError(f'--batch_hints={",".join(values)}: expected REMAT=BATCH, e.g. none=6,full=18') from None
  unknown = set(hints) - set(CHOICES['model.remat_policy'])
  if unknown:
    raise app.UsageError(f'--batch_hints: {sorted(unknown)} not among {CHOICES["model.remat_policy"]}')
  return hints


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  options = device_check.Options(
      config=validate(_CONFIG.value), bench_config=validate(_BENCH_CONFIG.value), budget_s=_BUDGET.value,
      steps=_STEPS.value, train_steps=_TRAIN_STEPS.value,
      remats=_choices('remats', _REMATS.value, 'model.remat_policy'),
      attentions=_choices('attentions', _ATTENTIONS.value, 'model.attention_impl'), batch_hints=_hints(_HINTS.value),
      max_batch=_MAX_BATCH.value, memory_gib=_MEMORY.value, peak_tflops=_PEAK.value,
      profile_steps=_PROFILE_STEPS.value, profile_reserve_s=_PROFILE_RESERVE.value, max_file_mib=_MAX_FILE.value,
      commit=_COMMIT.value, stages=_STAGES.value and tuple(_STAGES.value))
  logging.getLogger('absl').setLevel(logging.WARNING)  # Orbax's per-save INFO lines; the stages print their own
  device_check.run_device_check(options, PRETRAINING, pretraining_forward, _OUT.value)


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
