"""The package's layers (DESIGN.md), enforced on the imports: a module imports only its own layer and those
below, no two packages import each other, and the core layers import no TensorFlow, Beam or PyAV."""

import ast
import collections
import pathlib

import pytest

from tests.without_extras import run_without_extras

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'merlot_jax'

# Lowest first. A unit is a subpackage of merlot_jax or a module at its top.
LAYERS = (
    # ground: settings, hardware tables, token ids, the mesh, the run's folder and its Orbax checkpoints
    ('config', 'configs', 'extras', 'flags', 'hardware', 'special_tokens', 'sharding', 'checkpoint', 'workdir'),
    ('models',),
    ('data',),  # online input and every batch spec
    ('train', 'pretrained'),  # the task-agnostic trainer, loading params
    ('pretraining', 'tasks', 'preprocess', 'convert'),  # what is trained, offline corpus building, conversion
)
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
# Units whose modules, and everything they import, must run without the optional extras.
CORE = ('config', 'extras', 'flags', 'hardware', 'special_tokens', 'sharding', 'checkpoint', 'workdir', 'models',
        'train', 'pretrained', 'pretraining')
def _unit(module: str) -> str | None:
  parts = module.split('.')
  return parts[1] if parts[0] == 'merlot_jax' and len(parts) > 1 else None


def _imports(path: pathlib.Path) -> set[str]:
  """Every merlot_jax module `path` imports, at any depth of the file (lazy imports count too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      found |= {f'{node.module}.{a.name}' for a in node.names} if node.module == 'merlot_jax' else {node.module}
  return {m for m in found if _unit(m)}


def _edges() -> dict[tuple[str, str], str]:
  """(importing unit, imported unit) -> one file that does it; every file of merlot_jax/."""
  edges = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    rel = path.relative_to(PACKAGE)
    unit = rel.parts[0].removesuffix('.py')
    if unit == '__init__':
      continue  # merlot_jax/__init__.py re-exports lazily by name, above every layer
    for module in _imports(path):
      if _unit(module) != unit:
        edges.setdefault((unit, _unit(module)), rel.as_posix())
  return edges


def test_every_unit_has_a_layer():
  units = {p.name.removesuffix('.py') for p in PACKAGE.iterdir() if p.suffix == '.py' or (p / '__init__.py').exists()}
  assert units - {'__init__'} <= set(LAYER), sorted(units - {'__init__'} - set(LAYER))


def test_no_module_imports_a_higher_layer():
  upward = []
  for path in sorted(PACKAGE.rglob('*.py')):
    rel = path.relative_to(PACKAGE)
    unit = rel.parts[0].removesuffix('.py')
    if unit == '__init__':
      continue
    for module in sorted(_imports(path)):
      target = _unit(module)
      if LAYER.get(target, 0) > LAYER[unit]:
        upward.append(f'{rel} (layer {LAYER[unit]}) imports {module} (layer {LAYER[target]})')
  assert not upward, '\n'.join(upward)


def test_no_import_cycle_between_units():
  edges = _edges()
  graph = collections.defaultdict(set)
  for a, b in edges:
    graph[a].add(b)

  def path_back(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
    for nxt in sorted(graph[node]):
      if nxt == start:
        return (*seen, nxt)
      if nxt not in seen:
        found = path_back(start, nxt, (*seen, nxt))
        if found:
          return found
    return None

  cycles = {u: path_back(u, u, (u,)) for u in sorted(graph)}
  cycles = {u: c for u, c in cycles.items() if c}
  assert not cycles, [' -> '.join(f'{a} ({edges[a, b]})' for a, b in zip(c, c[1:], strict=False)) + f' -> {c[-1]}'
                      for c in cycles.values()]


@pytest.mark.parametrize('unit', CORE)
def test_core_units_import_without_the_extras(unit, tmp_path):
  root = PACKAGE / unit
  files = sorted(root.rglob('*.py')) if root.is_dir() else [root.with_suffix('.py')]
  modules = ['.'.join(('merlot_jax', *f.relative_to(PACKAGE).with_suffix('').parts)).removesuffix('.__init__')
             for f in files]
  done = run_without_extras(f'''
      import importlib, sys
      for module in {modules!r}:
        importlib.import_module(module)
      print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'apache_beam', 'av')))
      ''', tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == '[]'
