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

EVIDENCE = ROOT/'nbs'/'results'/'evidence'/'study.json'

def test_readme_evidence_tables_are_the_committed_study():
    "The README's evidence tables (each variant − teacher, default − each control) are rendered from the committed evidence study."
    from splat_and_distill.demo import difference_rows, EVIDENCE_COLUMNS
    res = json.loads(EVIDENCE.read_text())
    readme = (ROOT/'README.md').read_text()
    for rows in ({f'{v} − teacher': s for v, s in res['summary'].items()}, {f'default − {c}': s for c, s in res['controls'].items()}):
        assert difference_rows(rows, EVIDENCE_COLUMNS) in readme, 'README evidence table differs from nbs/results/evidence/study.json: paste difference_rows(...)'

def test_evidence_study_is_the_protocol():
    "Published evidence: the default and every control, at least 5 seeds, probed on the fresh scenes only it reads, summaries recomputable."
    from splat_and_distill.demo import study_summaries, CONTROLS
    res = json.loads(EVIDENCE.read_text())
    assert len(res['config']['seeds']) >= 5 and set(res['runs']) == {'default', *CONTROLS}
    assert all(sorted(map(int, r)) == sorted(res['config']['seeds']) for r in res['runs'].values()), 'every variant ran every seed'
    assert res['config']['probe_overrides']['eval_split'] == 'fresh'
    scenes = {tuple(r['models']['student']['eval_scenes']['seeds']) for v in res['runs'].values() for r in v.values()}
    assert len(scenes) == 1 and min(next(iter(scenes))) >= 3_000_000, 'every student was measured on the same fresh scenes'
    again = json.loads(json.dumps(study_summaries(res['teacher'], res['runs'], res['config']['concat'])))
    assert again['summary'] == res['summary'] and again['controls'] == res['controls']

def test_scaling_point_is_recomputable():
    "The 1,200-step scaling point: four times the evidence study's steps, the same fresh scenes, summaries recomputable."
    from splat_and_distill.demo import study_summaries
    ev, res = json.loads(EVIDENCE.read_text()), json.loads((ROOT/'nbs'/'results'/'scaling'/'steps1200'/'study.json').read_text())
    assert res['config']['train_steps'] == 4 * ev['config']['train_steps'] and set(res['runs']) == {'default', 'self_target'}
    scenes = lambda r: {tuple(x['models']['student']['eval_scenes']['seeds']) for v in r['runs'].values() for x in v.values()}
    assert scenes(res) == scenes(ev)
    again = json.loads(json.dumps(study_summaries(res['teacher'], res['runs'], False)))
    assert again['summary'] == res['summary'] and again['controls'] == res['controls']

def test_loss_matched_fit3d_is_the_protocol():
    "FiT3D with each objective and Splat and Distill with FiT3D's L1: five seeds each, the evidence study's fresh scenes, the objective each run used."
    lm = ROOT/'nbs'/'results'/'fit3d'/'loss_matched'
    ev = json.loads(EVIDENCE.read_text())
    fresh = {tuple(x['models']['student']['eval_scenes']['seeds']) for v in ev['runs'].values() for x in v.values()}
    for obj in ('dino', 'l1'):
        f = json.loads((lm/f'fit3d_{obj}.json').read_text())
        assert sorted(map(int, f['runs'])) == [0, 1, 2, 3, 4] and all(r['stage2']['objective'] == obj for r in f['runs'].values())
        assert f['probe_overrides'] == {'eval_split': 'fresh'} and set(f['teacher']) == set(f['runs'])
        assert {tuple(r['models']['student']['eval_scenes']['seeds']) for r in f['runs'].values()} == fresh
    s = json.loads((lm/'snd_l1'/'study.json').read_text())
    assert set(s['runs']) == {'l1_objective'} and sorted(map(int, s['runs']['l1_objective'])) == [0, 1, 2, 3, 4]
    assert all(r['overrides'] == {'objective': 'l1'} for r in s['runs']['l1_objective'].values())
    assert {tuple(r['models']['student']['eval_scenes']['seeds']) for r in s['runs']['l1_objective'].values()} == fresh

def test_scenes_scaling_points_are_recomputable():
    "32 and 128 distillation scenes at the evidence study's 300 steps: default and self_target, the same fresh scenes, summaries recomputable."
    from splat_and_distill.demo import study_summaries
    ev = json.loads(EVIDENCE.read_text())
    scenes = lambda r: {tuple(x['models']['student']['eval_scenes']['seeds']) for v in r['runs'].values() for x in v.values()}
    for n in (32, 128):
        res = json.loads((ROOT/'nbs'/'results'/'scaling'/f'scenes{n}'/'study.json').read_text())
        assert res['config']['train_scenes'] == n and res['config']['train_steps'] == ev['config']['train_steps']
        assert set(res['runs']) == {'default', 'self_target'} and scenes(res) == scenes(ev)
        again = json.loads(json.dumps(study_summaries(res['teacher'], res['runs'], False)))
        assert again['summary'] == res['summary'] and again['controls'] == res['controls']

def test_long_scaling_point_is_recomputable():
    "The 4,800-step point: sixteen times the evidence study's steps, default and self_target on the same seeds and fresh scenes, summaries recomputable."
    from splat_and_distill.demo import study_summaries
    ev, res = json.loads(EVIDENCE.read_text()), json.loads((ROOT/'nbs'/'results'/'scaling'/'steps4800'/'study.json').read_text())
    assert res['config']['train_steps'] == 16 * ev['config']['train_steps'] and set(res['runs']) == {'default', 'self_target'}
    assert sorted(res['runs']['default']) == sorted(res['runs']['self_target']) == sorted(map(str, res['config']['seeds']))
    scenes = lambda r: {tuple(x['models']['student']['eval_scenes']['seeds']) for v in r['runs'].values() for x in v.values()}
    assert scenes(res) == scenes(ev)
    again = json.loads(json.dumps(study_summaries(res['teacher'], res['runs'], False)))
    assert again['summary'] == res['summary'] and again['controls'] == res['controls']
