"""bench/fast_paths.py: each replaced hot spot gives the numbers of the code it replaced (timings are the bench's business, not checked here;
the correspondence rows' difference counts kept matches that differ: none on these random features; the depth head's is relative)."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
import fast_paths


def test_fast_paths_agree_with_what_they_replaced():
    res = fast_paths.main(['--threads', '1', '--repeats', '1'])
    assert len(res) == 9, [r['name'] for r in res]
    for r in res:
        assert r['max_diff'] < 1e-5, r                                   # same values to float rounding
        assert r['before_ms'] > 0 and r['after_ms'] > 0, r
