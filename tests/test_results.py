"The published numbers are the committed runs' numbers: the README's results table is generated from nbs/results/demo/results.json."
import json
from pathlib import Path
from splat_and_distill.evaluate import summary_table
from splat_and_distill.demo import demo_summary

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT/'nbs'/'results'/'demo'/'results.json'

def test_readme_table_is_the_committed_demo():
    res = json.loads(DEMO.read_text())
    readme = (ROOT/'README.md').read_text()
    assert summary_table(res['summary']) in readme, 'README results table differs from nbs/results/demo/results.json: paste summary_table(res["summary"])'
    for fact in (res['command'], res['date'][:10], f"{res['timing_s']['total'] / 60:.1f} min"):
        assert fact in readme, f'README does not state {fact!r} of the committed demo run'

def test_committed_summary_is_recomputable():
    "The summary stored with the demo is what its per-seed probe results give (nothing edited by hand)."
    res = json.loads(DEMO.read_text())
    again = json.loads(json.dumps(demo_summary(res['teacher'], res['runs'], res['config']['concat'])))
    assert again == res['summary']
    assert len(res['config']['seeds']) >= 3, 'published comparisons need at least 3 seeds'
