"""Every chapter ends the way a reader expects: a Summary and a Try this (each as a heading or a bold line)."""
import json, re
from pathlib import Path
import pytest

CHAPTERS = sorted((Path(__file__).resolve().parents[1]/'nbs').glob('[0-9]*.ipynb'))
SECTION = lambda name: re.compile(rf'^(#+ |\*\*){name}', re.M)

def markdown(path: Path) -> str:
    return '\n'.join(''.join(c['source']) for c in json.loads(path.read_text())['cells'] if c['cell_type'] == 'markdown')

def test_the_check_can_fail():
    assert not SECTION('Summary').search('Some text\n## Summaries of runs'.replace('Summaries', 'Results'))
    assert SECTION('Try this').search('text\n**Try this**\n* x') and SECTION('Summary').search('## Summary\n')

@pytest.mark.parametrize('path', CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_summary_and_try_this(path):
    md = markdown(path)
    missing = [s for s in ('Summary', 'Try this') if not SECTION(s).search(md)]
    assert not missing, f'{path.name} has no {" and no ".join(missing)} section'

def test_exported_cells_are_short():
    "A reader meets the library in cells: exported cells are 20 lines on average over all chapters, none over 60 (bench/cell_stats.py prints the table)."
    import statistics, sys
    sys.path.insert(0, str(CHAPTERS[0].parents[1]/'bench'))
    from cell_stats import exported_cells
    sizes = {p.stem: exported_cells(p) for p in CHAPTERS}
    every = [n for v in sizes.values() for n in v]
    long = {k: max(v) for k, v in sizes.items() if v and max(v) > 60}
    assert statistics.mean(every) <= 20, f'exported cells average {statistics.mean(every):.1f} lines (at most 20): split the longest'
    assert not long, f'exported cells over 60 lines: {long}'
