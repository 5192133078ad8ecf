"""The corpus preprocessing of corpus.py as an Apache Beam pipeline, for corpora too big for one machine.

The same shards come out as from `corpus.write_corpus` (byte for byte): videos are processed in parallel,
grouped by shard, put back in path order and packed by `corpus.write_shard`. Finished shards of an earlier
run are skipped, as there.

Locally (DirectRunner; arguments the script does not know go to Beam):
  python scripts/preprocess.py --videos DIR --out DATA_DIR --tokenizer spm.model --beam \
      --direct_num_workers=8 --direct_running_mode=multi_processing
On Google Cloud Dataflow (videos and tokenizer on a file system every worker mounts at the same path, e.g.
with gcsfuse; DATA_DIR may be gs://...; the workers get this package as a wheel built with
`pip wheel --no-deps -w dist .`):
  python scripts/preprocess.py --videos /mnt/videos --out gs://BUCKET/merlot_corpus --tokenizer spm.model \
      --beam --runner=DataflowRunner --project=PROJECT --region=us-central1 \
      --temp_location=gs://BUCKET/tmp --extra_package=dist/merlot_jax-0.1.0-py3-none-any.whl \
      --max_num_workers=256 --machine_type=n2-standard-8
"""

from collections.abc import Iterator, Sequence

from merlot_jax.data.tokenizer import load_tokenizer
from merlot_jax.extras import import_extra
from merlot_jax.preprocess import corpus
from merlot_jax.preprocess import framed_segments as framed

beam = import_extra('apache_beam', 'beam')
PipelineOptions = import_extra('apache_beam.options.pipeline_options', 'beam').PipelineOptions


class _ProcessVideo(beam.DoFn):
  """(shard, position, video) -> (shard, (position, result)); the tokenizer loads once per worker."""

  def __init__(self, tokenizer_path: str, options: corpus.Options):
    self._tokenizer_path = tokenizer_path
    self._options = options
    self._tokenizer = None

  def setup(self):
    self._tokenizer = load_tokenizer(self._tokenizer_path)

  def process(self, item: tuple[int, int, framed.VideoInput]) -> Iterator[tuple[int, tuple[int, framed.VideoResult]]]:
    shard, position, video = item
    result = framed.process_video(video, self._tokenizer, segment_tokens=self._options.segment_tokens,
                              jpeg_quality=self._options.jpeg_quality)
    beam.metrics.Metrics.counter('merlot', 'skipped' if result.skip_reason else 'videos').inc()
    yield shard, (position, result)


def run(videos_dir: str, out_dir: str, tokenizer_path: str, options: corpus.Options,
        beam_args: Sequence[str] = ()) -> dict:
  """Writes (or finishes) the corpus with a Beam pipeline; returns the manifest."""
  plan = corpus.make_plan(videos_dir, out_dir, tokenizer_path, options)
  corpus.write_manifest(plan, plan.finished)
  jobs = [(i, k, v) for i in plan.pending() for k, v in enumerate(plan.shards[i])]
  num_shards = len(plan.shards)
  if jobs:
    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
      _ = (pipeline
           | 'Videos' >> beam.Create(jobs)
           | 'Spread' >> beam.Reshuffle()
           | 'Process' >> beam.ParDo(_ProcessVideo(tokenizer_path, options))
           | 'ByShard' >> beam.GroupByKey()
           | 'Write' >> beam.MapTuple(lambda i, items: corpus.write_shard(
               out_dir, i, num_shards, options.num_segments, [r for _, r in sorted(items, key=lambda x: x[0])])))
  return corpus.write_manifest(plan, corpus.finished_shards(out_dir, num_shards))
