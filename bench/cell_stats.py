"Exported-cell statistics per chapter: how many `#| export` cells, their mean and max line counts, and how many exceed 40 lines."
import argparse, json, statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def exported_cells(nb: Path) -> list[int]:
    "Line counts of a notebook's exported code cells (directive lines included, as a reader sees them)."
    cells = json.loads(nb.read_text())['cells']
    out = []
    for c in cells:
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        if c['cell_type'] == 'code' and any(l.strip().replace(' ', '') in ('#|export', '#|exports') for l in src.splitlines()):
            out.append(len(src.splitlines()))
    return out

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('nbs', nargs='*', help='notebook stems (default: every chapter)')
    a = p.parse_args(argv)
    paths = [ROOT/'nbs'/f'{s}.ipynb' for s in a.nbs] if a.nbs else sorted((ROOT/'nbs').glob('[0-9]*.ipynb'))
    allc = []
    print(f'{"notebook":<16} {"cells":>5} {"mean":>6} {"max":>5} {">40":>4}')
    for nb in paths:
        n = exported_cells(nb); allc += n
        if n: print(f'{nb.stem:<16} {len(n):>5} {statistics.mean(n):>6.1f} {max(n):>5} {sum(x > 40 for x in n):>4}')
    if allc: print(f'{"all":<16} {len(allc):>5} {statistics.mean(allc):>6.1f} {max(allc):>5} {sum(x > 40 for x in allc):>4}')

if __name__ == '__main__': main()
