"The house: chapter order is import order, each file holds one idea, and nothing is imported that is not used."
import ast, re, sys
from pathlib import Path
import nbformat, pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/'splat_and_distill'
MAX_LINES, CORE_MAX_LINES = 700, 250
# third-party packages a module may import inside a function: optional, or only needed on one code path
OPTIONAL_MODULES = {'triton_splat'}   # package modules that need an optional dependency (Triton): imported where they are used

def chapters() -> dict[str, int]:
    "Module name -> chapter position, in the order of the notebook file names."
    order = {}
    for i, nb in enumerate(sorted((ROOT/'nbs').glob('*.ipynb'))):
        for c in nbformat.read(nb, as_version=4).cells:
            m = re.match(r'#\|\s*default_exp\s+(\S+)', c.source) if c.cell_type == 'code' else None
            if m: order[m.group(1)] = (i, nb.stem)
    return order

def modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PKG.glob('*.py')) if not p.stem.startswith('_')}

def package_imports(path: Path) -> list[tuple[str, int, bool]]:
    "(module, line, at module level) of every import of a package module in `path`."
    tree, found = ast.parse(path.read_text()), []
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1 or mod.startswith('splat_and_distill'):
                name = mod.removeprefix('splat_and_distill').lstrip('.')
                targets = [name] if name else [a.name for a in node.names]
                found += [(t.split('.')[0], node.lineno, id(node) in top) for t in targets]
        elif isinstance(node, ast.Import):
            found += [(a.name.split('.')[1], node.lineno, id(node) in top) for a in node.names if a.name.startswith('splat_and_distill.')]
    return found

def test_every_module_has_a_chapter():
    missing = set(modules()) - set(chapters())
    assert not missing, f'modules without a notebook (default_exp): {sorted(missing)}'

def test_no_module_imports_a_later_chapter():
    order, bad = chapters(), []
    for name, path in modules().items():
        for mod, line, _ in package_imports(path):
            if mod in order and order[mod][0] >= order[name][0] and mod != name:
                bad.append(f'{path.name}:{line} imports {mod} (chapter {order[mod][1]}, after {order[name][1]})')
    assert not bad, 'chapter order must be import order:\n' + '\n'.join(bad)

def test_no_import_cycle():
    graph = {n: {m for m, _, _ in package_imports(p) if m in modules() and m != n} for n, p in modules().items()}
    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start: return path + [start]
                if nxt not in seen: seen.add(nxt); stack.append((nxt, path + [nxt]))
    cycles = [c for c in map(cycle_from, graph) if c]
    assert not cycles, f'import cycles: {cycles}'

def test_files_hold_one_idea():
    long = {p.name: n for p in modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f'package files over {MAX_LINES} lines (split them): {long}'

def test_core_is_lesson_helpers_only():
    src = (PKG/'core.py').read_text()
    assert len(src.splitlines()) < CORE_MAX_LINES, f'core.py has {len(src.splitlines())} lines'
    plumbing = [w for w in ('argparse', 'ArgumentParser', 'checkpoint', 'run_dir', 'sys.argv', 'jsonl', 'manifest') if w in src]
    assert not plumbing, f'core.py holds plumbing (run folders, CLI, checkpoints): {plumbing}; it belongs in runs'

def test_imports_at_module_level():
    "Package imports sit at the top of a module, where a reader sees the graph (an optional third-party package may be imported where it is used)."
    bad = [f'{p.name}:{line} imports {mod} inside a function' for p in modules().values()
           for mod, line, top in package_imports(p) if not top and mod not in OPTIONAL_MODULES]
    assert not bad, '\n'.join(bad)

def _imported_names(tree):
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names: yield (a.asname or a.name.split('.')[0]), node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module != '__future__':
            for a in node.names:
                if a.name != '*': yield (a.asname or a.name), node.lineno

def unused_imports(src: str) -> list[tuple[str, int]]:
    "Names imported at module level and never used (nor listed in `__all__`)."
    tree = ast.parse(src)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    strings = ' '.join(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    exported = set(re.findall(r"'(\w+)'", re.search(r'__all__\s*=\s*\[(.*?)\]', src, re.S).group(1))) if '__all__' in src else set()
    return [(name, line) for name, line in _imported_names(tree)
            if name not in used and name not in exported and not re.search(rf'\b{re.escape(name)}\b', strings)]

def test_no_unused_imports():
    bad = [f'{p.name}:{line} {name}' for p in modules().values() for name, line in unused_imports(p.read_text())]
    assert not bad, 'unused imports (remove them in the notebooks):\n' + '\n'.join(bad)

def test_the_checks_can_fail():
    assert unused_imports('import os, sys\nprint(sys.argv)\n') == [('os', 1)]
    assert unused_imports('from x import Tensor\ndef f(a: "Float[Tensor, \'n\']"): pass\n') == []
    assert unused_imports("__all__ = ['f']\nfrom x import f\n") == []
    tree_src = 'def f():\n    from .core import set_seed\n'
    p = ROOT/'tests'/'_house_probe.py'
    try:
        p.write_text(tree_src)
        assert package_imports(p) == [('core', 2, False)]
    finally: p.unlink()
