"""The code keeps to what Humble's Ubuntu (jammy) ships: Python 3.10, Pillow 9.0, numpy 1.21.

The suite runs on Python 3.11 with newer Pillow and numpy (numpy 1.26 in the Jazzy suite), so
what would break only on a Humble cell is caught here, in every module of the repository:

- syntax: each file parses with Python 3.10's grammar (`ast.parse(feature_version=(3, 10))`),
  and has no PEP 646 star in a subscript or annotation, which that flag lets through;
- APIs: no name that jammy's Python 3.10, Pillow 9.0.1 or numpy 1.21.5 lacks, from the list
  below (the newer names a person is likely to reach for; `Image.Resampling.BICUBIC` is
  `Image.BICUBIC`, which every Pillow since 9.0 has).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PY_DIRS = ['vla_insertion', 'test', 'launch', 'benchmarks', 'scripts']
GRAMMAR = (3, 10)

# dotted name (after resolving imports) -> what it needs
NEWER = {
    **{f'PIL.Image.{n}': 'Pillow 9.1 (Humble has 9.0: Image.BICUBIC, Image.FLIP_LEFT_RIGHT, ...)'
       for n in ('Resampling', 'Transpose', 'Transform', 'Dither', 'Palette', 'Quantize')},
    'PIL.ImageFont.Layout': 'Pillow 9.1',
    'tomllib': 'Python 3.11', 'datetime.UTC': 'Python 3.11', 'enum.StrEnum': 'Python 3.11',
    'enum.ReprEnum': 'Python 3.11', 'enum.verify': 'Python 3.11',
    'hashlib.file_digest': 'Python 3.11', 'asyncio.TaskGroup': 'Python 3.11',
    'asyncio.timeout': 'Python 3.11', 'asyncio.Runner': 'Python 3.11',
    'contextlib.chdir': 'Python 3.11', 'math.cbrt': 'Python 3.11', 'math.exp2': 'Python 3.11',
    'operator.call': 'Python 3.11', 'sys.exception': 'Python 3.11', 're.NOFLAG': 'Python 3.11',
    'logging.getLevelNamesMapping': 'Python 3.11', 'itertools.batched': 'Python 3.12',
    **{f'typing.{n}': 'Python 3.11' for n in (
        'Self', 'LiteralString', 'Never', 'assert_never', 'assert_type', 'reveal_type',
        'Required', 'NotRequired', 'TypeVarTuple', 'Unpack', 'dataclass_transform',
        'get_overloads', 'clear_overloads')},
    'typing.override': 'Python 3.12', 'typing.TypeAliasType': 'Python 3.12',
    'builtins.ExceptionGroup': 'Python 3.11', 'builtins.BaseExceptionGroup': 'Python 3.11',
    **{f'numpy.{n}': 'numpy 1.25' for n in ('exceptions', 'dtypes')},
    **{f'numpy.{n}': 'numpy 2' for n in (
        'concat', 'isdtype', 'trapezoid', 'unstack', 'astype', 'cumulative_sum',
        'cumulative_prod', 'permute_dims', 'matrix_transpose', 'vecdot', 'strings', 'long',
        'ulong')},
    'numpy.bool': 'numpy 2 (numpy 1.24-1.26 have no np.bool: use bool or np.bool_)',
}
# attributes of any object
NEWER_METHODS = {'add_note': 'Python 3.11 (BaseException.add_note)'}


def _sources() -> list[Path]:
    return sorted(p for d in PY_DIRS if (ROOT / d).is_dir() for p in (ROOT / d).rglob('*.py')
                  if '__pycache__' not in p.parts)


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    root = aliases.get(node.id, f'builtins.{node.id}' if not parts else None)
    return None if root is None else '.'.join([root, *reversed(parts)])


def _newer(name: str) -> str | None:
    parts = name.split('.')
    for end in range(1, len(parts) + 1):
        prefix = '.'.join(parts[:end])
        if prefix in NEWER:
            return f'{prefix}: {NEWER[prefix]}'
    return None


def problems(source: str, filename: str = '<source>') -> list[str]:
    """Return what in `source` Humble's jammy lacks, one line each (file:line: what)."""
    try:
        tree = ast.parse(source, filename, feature_version=GRAMMAR)
    except SyntaxError as exc:
        return [f'{filename}:{exc.lineno}: not Python {GRAMMAR[0]}.{GRAMMAR[1]} syntax: '
                f'{exc.msg}']
    nodes = list(ast.walk(tree))                      # one walk: imports first, then uses
    aliases: dict[str, str] = {}
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[alias.name.split('.')[0]] = alias.name.split('.')[0]
                found.append((node, alias.name))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f'{node.module}.{alias.name}'
                found.append((node, f'{node.module}.{alias.name}'))
    lines = []
    for node in nodes:
        if isinstance(node, (ast.Attribute, ast.Name)) and not isinstance(
                getattr(node, 'ctx', None), ast.Store):
            name = _dotted(node, aliases)
            if name:
                found.append((node, name))
            if isinstance(node, ast.Attribute) and node.attr in NEWER_METHODS:
                lines.append(f'{filename}:{node.lineno}: .{node.attr}: '
                             f'{NEWER_METHODS[node.attr]}')
        elif isinstance(node, ast.Subscript):
            items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if any(isinstance(item, ast.Starred) for item in items):
                lines.append(f'{filename}:{node.lineno}: a star in a subscript: Python 3.11')
        elif isinstance(node, ast.arg) and isinstance(node.annotation, ast.Starred):
            lines.append(f'{filename}:{node.lineno}: a starred annotation: Python 3.11')
    for node, name in found:
        needs = _newer(name)
        if needs:
            lines.append(f'{filename}:{node.lineno}: {needs}')
    return sorted(set(lines))


@pytest.mark.slow                                     # parses every module: a few seconds
def test_every_module_keeps_to_what_humble_ships():
    sources = _sources()
    assert len(sources) > 100                         # the walk found the repository
    found = [line for path in sources
             for line in problems(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, '\n'.join(found)


@pytest.mark.parametrize('source, needs', [
    ('from PIL import Image\nImage.open("a").resize((1, 1), Image.Resampling.BICUBIC)\n',
     'PIL.Image.Resampling'),
    ('import PIL.Image\nPIL.Image.Transpose.FLIP_LEFT_RIGHT\n', 'PIL.Image.Transpose'),
    ('from PIL.Image import Resampling\n', 'PIL.Image.Resampling'),
    ('import tomllib\n', 'tomllib'),
    ('from typing import Self\n', 'typing.Self'),
    ('import datetime as dt\nnow = dt.datetime.now(dt.UTC)\n', 'datetime.UTC'),
    ('import numpy as np\nx = np.concat([a, b])\n', 'numpy.concat'),
    ('import numpy as np\nx = np.zeros(3, np.bool)\n', 'numpy.bool'),
    ('raise ExceptionGroup("x", [e])\n', 'builtins.ExceptionGroup'),
    ('try:\n    pass\nexcept* ValueError:\n    pass\n', 'syntax'),
    ('x = a[*b]\n', 'subscript'),
    ('def f(*args: *Ts):\n    pass\n', 'annotation'),
    ('try:\n    pass\nexcept ValueError as e:\n    e.add_note("x")\n', 'add_note'),
])
def test_the_check_finds_what_jammy_lacks(source, needs):
    found = problems(source)
    assert len(found) == 1 and needs in found[0], found


@pytest.mark.parametrize('source', [
    'from PIL import Image\nImage.open("a").resize((1, 1), Image.BICUBIC)\n',
    'import numpy as np\nx = np.zeros(3, np.bool_)\n',
    'from __future__ import annotations\ndef f(x: int | None) -> list[str]:\n    return []\n',
    'match x:\n    case 1:\n        pass\n',
    'bool = 3\nstrings = 2\n',
])
def test_what_jammy_has_passes(source):
    assert problems(source) == []
