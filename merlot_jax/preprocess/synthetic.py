"""The built-in synthetic corpus: narrated cartoon videos whose transcripts say what happens on screen.

Each video is a story of events (a shape appears, moves, changes colour or size, disappears) told in order
("First, a small red circle appears on the left. ... Then the red circle moves to the right. ..."), with every
event's words spoken while it is on screen. Like a real video, each one has a setting (a garden, a beach, a
kitchen, ...) that fills the background of every frame and that every event's narration names ("It slides up
in the garden."), so frames and transcripts also match as a whole, not only through a few small shapes. That
makes frame/transcript matching, masked words and temporal order learnable by a tiny model in minutes on a CPU.

Layout written by `make_corpus(out_dir, ...)`:
  videos/train/ID.mp4 + ID.en.vtt      H.264 video + YouTube-style word-timed WebVTT
  videos/heldout/ID.mp4 + ID.en.vtt    held-out videos (same generator, other ids)
  stories/stories.json + stories/S/K.jpg  held-out 5-event stories for zero-shot ordering, in order
  narration.txt                        every training video's narration, one event per line (tokenizer text)
  synthetic.json                       seed, settings, video ids per split, story count
"""

import dataclasses
import functools
import json
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from merlot_jax.extras import import_extra
from merlot_jax.preprocess.video import encode_jpeg, write_video

Image = import_extra('PIL.Image', 'data')
ImageDraw = import_extra('PIL.ImageDraw', 'data')

COLOURS = {
    'red': (220, 40, 40), 'green': (40, 180, 60), 'blue': (50, 90, 230), 'yellow': (235, 215, 40),
    'purple': (150, 60, 190), 'orange': (245, 140, 30), 'white': (245, 245, 245),
}
SHAPES = ('circle', 'square', 'triangle', 'diamond', 'star')
# name -> (centre as fractions of width/height, 'at' phrase, 'to' phrase)
POSITIONS = {
    'left': ((0.18, 0.5), 'on the left', 'to the left'),
    'right': ((0.82, 0.5), 'on the right', 'to the right'),
    'middle': ((0.5, 0.5), 'in the middle', 'to the middle'),
    'top': ((0.5, 0.18), 'at the top', 'to the top'),
    'bottom': ((0.5, 0.82), 'at the bottom', 'to the bottom'),
}
SIZES = {'small': 0.12, 'big': 0.2}  # radius as a fraction of the shorter side
# name -> the phrase that places a shape there ('Now there is one shape in the garden.')
SETTINGS = {
    'garden': 'in the garden', 'beach': 'at the beach', 'kitchen': 'in the kitchen', 'night': 'in the night sky',
    'forest': 'in the forest', 'desert': 'in the desert', 'city': 'in the city', 'sea': 'under the sea',
}
CONNECTIVES = ('Then', 'Next,', 'After that,', 'Later,')
NUMBERS = ('no', 'one', 'two', 'three')
STORY_LENGTH = 5
_WORDS_PER_LINE = 7


@dataclasses.dataclass(frozen=True)
class Config:
  """Generator settings."""
  width: int = 96
  height: int = 64
  fps: int = 6
  min_events: int = 8
  max_events: int = 20
  max_objects: int = 3
  words_per_second: float = 3.5
  heldout_fraction: float = 0.1
  num_stories: int = 100


@dataclasses.dataclass(frozen=True)
class Obj:
  shape: str
  colour: str
  position: str
  size: str


@dataclasses.dataclass(frozen=True)
class Event:
  """One step of a story: its setting, the scene before and after it and the words that tell it (without a
  connective)."""
  setting: str
  before: tuple[Obj, ...]
  after: tuple[Obj, ...]
  sentences: str


def _count_sentence(objs: Sequence[Obj], setting: str) -> str:
  n = len(objs)
  shapes = 'no shapes' if not n else f'{NUMBERS[n]} shape{"" if n == 1 else "s"}'
  return f'Now there {"is" if n == 1 else "are"} {shapes} {SETTINGS[setting]}.'


def _direction(src: str, dst: str) -> str:
  (x0, y0), (x1, y1) = POSITIONS[src][0], POSITIONS[dst][0]
  parts = (['up'] if y1 < y0 else ['down'] if y1 > y0 else []) + (
      ['to the left'] if x1 < x0 else ['to the right'] if x1 > x0 else [])
  return ' and '.join(parts)


def _next_event(rng: np.random.Generator, setting: str, scene: tuple[Obj, ...], max_objects: int) -> Event:
  """Samples an event that is possible in `scene`; the names of shapes on screen stay unique."""
  free = [p for p in POSITIONS if p not in {o.position for o in scene}]
  names = {(o.colour, o.shape) for o in scene}
  kinds = {'appear': 3.0 if len(scene) < 2 else 1.0} if len(scene) < max_objects else {}
  if scene:
    kinds.update(move=3.0, recolour=2.0, resize=2.0, disappear=1.5 if len(scene) > 1 else 0.5)
  kind = rng.choice(list(kinds), p=np.array(list(kinds.values())) / sum(kinds.values()))
  if kind == 'appear':
    unused = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in names]
    colour, shape = unused[rng.integers(len(unused))]
    new = Obj(shape, colour, str(rng.choice(free)), str(rng.choice(list(SIZES))))
    after = scene + (new,)
    text = (f'a {new.size} {new.colour} {new.shape} appears {POSITIONS[new.position][1]}. '
            f'{_count_sentence(after, setting)}')
    return Event(setting, scene, after, text)
  i = int(rng.integers(len(scene)))
  old = scene[i]
  if kind == 'move' and free:
    new = dataclasses.replace(old, position=str(rng.choice(free)))
    text = (f'the {old.colour} {old.shape} moves {POSITIONS[new.position][2]}. '
            f'It slides {_direction(old.position, new.position)} {SETTINGS[setting]}.')
  elif kind in ('move', 'recolour'):
    colours = [c for c in COLOURS if (c, old.shape) not in names]
    new = dataclasses.replace(old, colour=str(rng.choice(colours)))
    text = (f'the {old.colour} {old.shape} turns {new.colour}. '
            f'The {old.shape} {POSITIONS[old.position][1]} {SETTINGS[setting]} is {new.colour} now.')
  elif kind == 'resize':
    new = dataclasses.replace(old, size='small' if old.size == 'big' else 'big')
    verb = 'grows bigger' if new.size == 'big' else 'shrinks'
    text = f'the {old.colour} {old.shape} {verb}. It is {new.size} now {SETTINGS[setting]}.'
  else:
    after = scene[:i] + scene[i + 1:]
    text = (f'the {old.colour} {old.shape} {POSITIONS[old.position][1]} disappears. '
            f'{_count_sentence(after, setting)}')
    return Event(setting, scene, after, text)
  return Event(setting, scene, scene[:i] + (new,) + scene[i + 1:], text)


def make_story(rng: np.random.Generator, num_events: int, max_objects: int = 3) -> list[Event]:
  """A story of `num_events` events in one random setting, starting from an empty scene."""
  setting = str(rng.choice(list(SETTINGS)))
  events, scene = [], ()
  for _ in range(num_events):
    events.append(_next_event(rng, setting, scene, max_objects))
    scene = events[-1].after
  return events


def caption(event: Event) -> str:
  """The event's narration as a stand-alone caption (no connective)."""
  return event.sentences[0].upper() + event.sentences[1:]


def narration(events: Sequence[Event], rng: np.random.Generator) -> list[str]:
  """Per-event narration with connectives telling the order ('First,' ... 'Finally,')."""
  out = []
  for i, e in enumerate(events):
    conn = 'First,' if i == 0 else 'Finally,' if i == len(events) - 1 else str(rng.choice(CONNECTIVES))
    out.append(f'{conn} {e.sentences}')
  return out


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour) -> None:
  if shape == 'circle':
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
  elif shape == 'square':
    draw.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=colour)
  elif shape == 'triangle':
    draw.polygon([(cx, cy - r), (cx - 0.9 * r, cy + 0.6 * r), (cx + 0.9 * r, cy + 0.6 * r)], fill=colour)
  elif shape == 'diamond':
    draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=colour)
  else:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    draw.polygon(list(zip(cx + radii * np.cos(angles), cy - radii * np.sin(angles), strict=True)), fill=colour)


@functools.lru_cache(maxsize=64)
def background(setting: str, width: int, height: int) -> np.ndarray:
  """uint8 [height, width, 3]: the setting's backdrop, muted colours and coarse texture that the shapes stand out
  on (read-only: `render` copies it)."""
  y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
  paint = lambda *layers: sum(np.where(m[..., None], np.array(c, np.float64), 0.0) for m, c in layers)
  if setting == 'garden':  # sky over grass
    img = paint((y < 0.45, (150, 190, 230)), (y >= 0.45, (70, 130, 60)))
  elif setting == 'beach':  # sky, sea, sand
    img = paint((y < 0.3, (175, 215, 240)), ((y >= 0.3) & (y < 0.55), (40, 110, 170)), (y >= 0.55, (220, 200, 140)))
  elif setting == 'kitchen':  # checkered tiles
    light = (np.floor(x * 8) + np.floor(y * 6)) % 2 == 0
    img = paint((light, (205, 185, 150)), (~light, (140, 110, 80)))
  elif setting == 'night':  # dark blue with a grid of stars
    star = (np.abs(x * 9 % 1 - 0.5) < 0.06) & (np.abs((y * 6 + 0.4 * np.floor(x * 9)) % 1 - 0.5) < 0.09)
    img = paint((~star, (20, 25, 60)), (star, (230, 230, 180)))
  elif setting == 'forest':  # dark green with tree trunks
    trunk = x * 7 % 1 < 0.22
    img = paint((~trunk, (30, 75, 40)), (trunk, (95, 65, 35)))
  elif setting == 'desert':  # orange sand under a pale sky, a dune line
    dune = y > 0.4 + 0.1 * np.sin(2 * np.pi * x)
    img = paint((~dune, (245, 225, 180)), (dune, (210, 150, 80)))
  elif setting == 'city':  # grey sky behind dark buildings of several heights
    tops = np.array([0.35, 0.55, 0.25, 0.45, 0.3, 0.6])[np.minimum((x * 6).astype(int), 5)]
    img = paint((y < tops, (185, 190, 200)), (y >= tops, (75, 75, 85)))
  elif setting == 'sea':  # deep blue with light wave bands
    wave = (y * 5 + 0.15 * np.sin(2 * np.pi * 2 * x)) % 1 < 0.2
    img = paint((~wave, (20, 60, 120)), (wave, (60, 125, 185)))
  else:
    raise ValueError(f'unknown setting {setting!r}; expected one of {sorted(SETTINGS)}')
  img = img.astype(np.uint8)
  img.flags.writeable = False
  return img


def render(event: Event, progress: float, width: int, height: int) -> np.ndarray:
  """The frame at `progress` in [0, 1] through `event`: moves and size changes glide, other changes switch."""
  a = float(np.clip((progress - 0.1) / 0.4, 0.0, 1.0))
  if len(event.before) == len(event.after):
    pairs = zip(event.before, event.after, strict=True)
  else:  # a shape appears or disappears halfway through the transition
    scene = event.after if a >= 0.5 else event.before
    pairs = zip(scene, scene, strict=True)
  img = Image.fromarray(background(event.setting, width, height).copy())
  draw = ImageDraw.Draw(img)
  for src, dst in pairs:
    (x0, y0), (x1, y1) = POSITIONS[src.position][0], POSITIONS[dst.position][0]
    radius = ((1 - a) * SIZES[src.size] + a * SIZES[dst.size]) * min(width, height)
    colour = COLOURS[dst.colour if a >= 0.5 else src.colour]
    _draw(draw, dst.shape, ((1 - a) * x0 + a * x1) * width, ((1 - a) * y0 + a * y1) * height, radius, colour)
  return np.asarray(img)


@dataclasses.dataclass(frozen=True)
class TimedEvent:
  """An event on the video's clock (milliseconds) with the start time of each narrated word."""
  event: Event
  start_ms: int
  end_ms: int
  words: tuple[tuple[str, int], ...]


def timeline(events: Sequence[Event], texts: Sequence[str], words_per_second: float) -> list[TimedEvent]:
  """Back-to-back events; each one's words are spread evenly over it, leaving a short pause at both ends."""
  out, t = [], 0
  for event, text in zip(events, texts, strict=True):
    words = text.split()
    dur = round(1000 * max(2.5, len(words) / words_per_second + 0.6))
    step = (dur - 400) / len(words)
    out.append(TimedEvent(event, t, t + dur, tuple((w, t + 150 + round(j * step)) for j, w in enumerate(words))))
    t += dur
  return out


def _timestamp(ms: int) -> str:
  return f'{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}'


def to_vtt(timed: Sequence[TimedEvent]) -> str:
  """YouTube-style auto-caption WebVTT: `word<00:00:01.234><c> word</c>` lines, each followed by a 10 ms cue."""
  out, previous = ['WEBVTT', 'Kind: captions', 'Language: en', ''], ' '
  for te in timed:
    for k in range(0, len(te.words), _WORDS_PER_LINE):
      line = te.words[k:k + _WORDS_PER_LINE]
      rest = te.words[k + _WORDS_PER_LINE:k + _WORDS_PER_LINE + 1]
      end = rest[0][1] if rest else te.end_ms - 250
      text = line[0][0] + ''.join(f'<{_timestamp(t)}><c> {w}</c>' for w, t in line[1:])
      out += [f'{_timestamp(line[0][1])} --> {_timestamp(end - 10)} align:start position:0%', previous, text, '']
      previous = ' '.join(w for w, _ in line)
      out += [f'{_timestamp(end - 10)} --> {_timestamp(end)} align:start position:0%', previous, ' ', '']
  return '\n'.join(out)


def video_frames(timed: Sequence[TimedEvent], fps: int, width: int, height: int) -> Iterator[np.ndarray]:
  """Frames at 0, 1/fps, ... up to the end of the last event."""
  ends = np.array([te.end_ms for te in timed])
  for k in range(int(np.ceil(ends[-1] * fps / 1000))):
    ms = 1000 * k / fps
    te = timed[min(int(np.searchsorted(ends, ms, side='right')), len(timed) - 1)]
    yield render(te.event, (ms - te.start_ms) / (te.end_ms - te.start_ms), width, height)


def make_video(rng: np.random.Generator, config: Config) -> tuple[list[TimedEvent], list[str]]:
  """A random story on the clock, with its narration per event."""
  events = make_story(rng, int(rng.integers(config.min_events, config.max_events + 1)), config.max_objects)
  texts = narration(events, rng)
  return timeline(events, texts, config.words_per_second), texts


def _write_stories(out_dir: pathlib.Path, seed: int, config: Config, seen: set[tuple[str, ...]]) -> None:
  """Held-out stories (captions in order + one frame each) whose caption sequences occur in no video.

  A story whose events leave the same scene twice (e.g. a shape grows, then shrinks back) is skipped:
  two identical frames have no true order between them.
  """
  stories, k = [], 0
  out_dir.mkdir(parents=True, exist_ok=True)
  while len(stories) < config.num_stories:
    events = make_story(np.random.default_rng([seed, 1, k]), STORY_LENGTH, config.max_objects)
    k += 1
    captions = tuple(caption(e) for e in events)
    if captions in seen or len({frozenset(e.after) for e in events}) < STORY_LENGTH:
      continue
    seen.add(captions)
    story_id = f'story-{len(stories):04d}'
    (out_dir / story_id).mkdir(exist_ok=True)
    for j, e in enumerate(events):
      (out_dir / story_id / f'{j}.jpg').write_bytes(encode_jpeg(render(e, 0.75, config.width, config.height)))
    stories.append({'id': story_id, 'captions': list(captions),
                    'frames': [f'{story_id}/{j}.jpg' for j in range(STORY_LENGTH)]})
  (out_dir / 'stories.json').write_text(json.dumps(stories, indent=1) + '\n')


def make_corpus(out_dir: str | pathlib.Path, num_videos: int, seed: int, config: Config = Config()) -> dict:
  """Writes the synthetic corpus (layout in the module docstring); returns the contents of synthetic.json."""
  out = pathlib.Path(out_dir)
  num_heldout = round(num_videos * config.heldout_fraction)
  splits = {'train': [], 'heldout': []}
  seen, narration_lines = set(), []
  for i in range(num_videos):
    split = 'train' if i < num_videos - num_heldout else 'heldout'
    video_id = f'synth-{seed}-{i:05d}'
    timed, texts = make_video(np.random.default_rng([seed, 0, i]), config)
    folder = out / 'videos' / split
    folder.mkdir(parents=True, exist_ok=True)
    write_video(folder / f'{video_id}.mp4', video_frames(timed, config.fps, config.width, config.height),
                config.fps)
    (folder / f'{video_id}.en.vtt').write_text(to_vtt(timed))
    splits[split].append(video_id)
    captions = [caption(te.event) for te in timed]
    seen.update(tuple(captions[j:j + STORY_LENGTH]) for j in range(len(captions) - STORY_LENGTH + 1))
    if split == 'train':
      narration_lines += texts
  (out / 'narration.txt').write_text('\n'.join(narration_lines) + '\n')
  _write_stories(out / 'stories', seed, config, seen)
  info = {'seed': seed, 'config': dataclasses.asdict(config), 'videos': splits, 'stories': config.num_stories}
  (out / 'synthetic.json').write_text(json.dumps(info, indent=1) + '\n')
  return info
