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
