"""The package's modules import one another without circles.

Read from the source (every `import` and `from ... import`, the ones inside
functions too: a deferred import hides a circle, it does not remove it), so a
module that borrows from a module that borrows back fails here, naming both.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'smsdd_jax'


def module_names() -> dict[str, pathlib.Path]:
  names = {}
  for path in PACKAGE.rglob('*.py'):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    names['.'.join(parts)] = path
  return names


def _imported(node: ast.AST, package: str, modules) -> set[str]:
  """The package's modules an import statement loads by name: `from M import N`
  names the module M.N where N is one (a package's __init__ importing its own
  submodules is how a registry is built, not a circle), else M."""
  if isinstance(node, ast.Import):
    return {a.name for a in node.names} & set(modules)
  if not isinstance(node, ast.ImportFrom):
    return set()
  if node.level:
    base = package.split('.')[:len(package.split('.')) - (node.level - 1)]
    module = '.'.join(base + ([node.module] if node.module else []))
  else:
    module = node.module or ''
  found = {f'{module}.{a.name}' if f'{module}.{a.name}' in modules else module
           for a in node.names}
  return found & set(modules)


def import_graph() -> dict[str, set[str]]:
  """{module: the package's modules it imports}."""
  modules = module_names()
  graph = {}
  for name, path in modules.items():
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    graph[name] = set().union(*(_imported(node, package, modules) for node in
                                ast.walk(ast.parse(path.read_text(encoding='utf-8'))))) - {name}
  return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_walk_sees_a_circle():
  """The check itself: a made-up circle and a chain are told apart."""
  assert circles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
  assert circles({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []


def test_the_walk_reads_deferred_and_relative_imports(tmp_path, monkeypatch):
  """A made-up package: an import inside a function and a relative one are edges."""
  pkg = tmp_path / 'smsdd_jax'
  (pkg / 'sub').mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('def f():\n  from smsdd_jax import b\n')
  (pkg / 'b.py').write_text('from .sub import c\n')
  (pkg / 'sub' / '__init__.py').write_text('')
  (pkg / 'sub' / 'c.py').write_text('from .. import a\n')
  monkeypatch.setattr(__import__(__name__), 'PACKAGE', pkg)
  graph = import_graph()
  assert graph['smsdd_jax.a'] == {'smsdd_jax.b'}
  assert graph['smsdd_jax.b'] == {'smsdd_jax.sub.c'}
  assert graph['smsdd_jax.sub.c'] == {'smsdd_jax.a'}
  assert ['smsdd_jax.a', 'smsdd_jax.b', 'smsdd_jax.sub.c'] in circles(graph)


def test_no_import_circles():
  found = circles(import_graph())
  if found:
    pytest.fail('import circles in smsdd_jax: ' + '; '.join(' <-> '.join(c) for c in found))
