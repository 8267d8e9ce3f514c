"bench/demo_profile.py: its accounting of nested sections, and a profile of the demo on tiny data (every stage and section, shares adding up, --compare)."
import json, sys, time
from pathlib import Path
import pytest
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
import demo_profile as dp

class FakeClock:
    "Stands in for the `time` module of the profiler: wall and CPU seconds move only when `_spin` says so."
    now = 0.
    def perf_counter(self): return self.now
    def process_time(self): return self.now / 2

def _spin(s: float): FakeClock.now += s

def test_nested_sections_counted_once(monkeypatch):
    "Own time of a section excludes what is nested in it; a section inside itself and one outside its `within` are not timed; a stage leaves out nested stages."
    monkeypatch.setattr(dp, 'time', FakeClock())
    prof = dp.Profiler()
    inner = dp.wrap(lambda: _spin(0.02), 'inner', prof)
    only_in_outer = dp.wrap(lambda: _spin(0.01), 'picky', prof, within=('outer',))
    def outer_body(depth=0):
        _spin(0.01); inner(); only_in_outer()
        if depth == 0: outer(1)                          # recursion: counted once
    outer = dp.wrap(outer_body, 'outer', prof)
    nested_stage = dp.wrap(lambda: (_spin(0.03), inner()), 'sub', prof, stage=True)
    with prof.section('stage A', stage=True):
        outer(); only_in_outer(); nested_stage()
        with pytest.raises(ZeroDivisionError): dp.wrap(lambda: 1 / 0, 'broken', prof)()
    assert len(prof.stack) == 1                           # every section closed, the failing one too
    st = dp.stage_tables(prof, {})
    assert set(st) == {'stage A', 'sub'}
    rows = {r['section']: r for r in st['stage A']['rows']}
    assert set(rows) == {'outer', 'outer/inner', 'outer/picky', 'broken', '(other)'}
    assert rows['outer']['calls'] == 1 and rows['outer/inner']['calls'] == 2 and rows['outer/picky']['calls'] == 2
    assert rows['outer']['wall'] == pytest.approx(0.02)                                # its own two spins of 10 ms
    assert rows['outer']['wall_incl'] == pytest.approx(0.02 + 0.04 + 0.02)
    assert rows['outer']['cpu_incl'] == pytest.approx(0.04) and rows['(other)']['wall'] == pytest.approx(0.01)
    assert st['sub']['wall_incl'] == pytest.approx(0.05) and st['stage A']['wall'] == pytest.approx(0.09)
    a = st['stage A']
    assert sum(r['wall'] for r in a['rows']) == pytest.approx(a['wall'])
    assert a['wall'] == pytest.approx(a['wall_incl'] - st['sub']['wall_incl'])        # the nested stage is its own table
    assert {r['section'] for r in st['sub']['rows']} == {'inner', '(other)'}

@pytest.fixture(scope='module')
def tiny_profile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('demo_profile')
    out = tmp / 'profile.json'
    sets = ['size=64', 'recon_size=32', 'n_views=9', 'recon_scenes=1', 'train_scenes=1', 'batch_size=2', 'out_dim=256',
            'probe_preset=tiny', 'blend_alpha=0.5', 'train_overrides={"ema_every": 1}']
    argv = ['--threads', '1', '--recon-steps', '2', '--train-steps', '2', '--no-progress', '--workdir', str(tmp),
            '--scene-cache', str(tmp / 'cache'), '--out', str(out), *[x for s in sets for x in ('--set', s)]]
    import torch
    from splat_and_distill import lift, render, train, distill
    names = lambda: [torch.Tensor.backward, lift.render, render.render, train.teacher_side, train.train, distill.DistillModel.forward,
                     distill.DistillModel.__dict__.get('tokens')]
    before = names()
    t = time.time()
    prof = dp.main(argv)
    seconds = time.time() - t
    assert names() == before                                                          # every wrapper removed again
    return prof, out, tmp, seconds

def test_tiny_demo_profile(tiny_profile):
    prof, out, tmp, seconds = tiny_profile
    assert json.loads(out.read_text())['stages'].keys() == prof['stages'].keys()
    assert list(tmp.glob('demo_profile_*')) == []                                    # the demo's output folder is removed
    st = prof['stages']
    assert prof['order'] == ['geometry', 'probe data', 'teacher probes', 'distillation', 'student probes', 'figures', 'demo plumbing']
    for name, s in st.items():                                                         # own times add up to each stage
        assert sum(r['wall'] for r in s['rows']) == pytest.approx(s['wall'], rel=1e-9), name
        assert sum(r['cpu'] for r in s['rows']) == pytest.approx(s['cpu'], rel=1e-9), name
        assert all(r['wall'] >= -1e-6 for r in s['rows']), name
        assert s['wall'] <= s['wall_incl'] + 1e-9
    total = sum(s['wall'] for s in st.values())                                        # stages partition the demo's run
    assert total == pytest.approx(st['demo plumbing']['wall_incl'], rel=1e-9)
    assert total == pytest.approx(prof['demo_timing_s']['total'], abs=0.5)             # what the demo itself measured
    assert total < seconds
    names = lambda stage: {r['section'].split('/')[-1] for r in st[stage]['rows']}
    assert {'data', 'reconstructor', 'loss', 'backward', 'optimiser', 'validation', 'checkpointing'} <= names('geometry')
    assert {'teacher', 'reconstructor', 'upsample', 'Gaussians', 'splat', 'blending', 'token sampling', 'data', 'student forward',
            'loss', 'backward', 'optimiser', 'EMA', 'validation', 'checkpointing'} <= names('distillation')
    rows = {r['section']: r for r in st['distillation']['rows']}
    assert rows['student step/EMA']['calls'] == 2 and rows['teacher side']['calls'] == 2
    assert rows['teacher side/lift+splat/splat']['wall_incl'] > 0
    probes = {'features', 'depth', 'normals', 'segmentation', 'correspondence', 'consistency', 'real'}
    assert probes <= {r['section'].split('/')[-1] for r in st['teacher probes']['rows'] if r['section'].startswith('probes: teacher/')}
    for model in ('student', 'student+teacher'):
        assert probes <= {r['section'].split('/')[-1] for r in st['student probes']['rows'] if r['section'].startswith(f'probes: {model}/')}
    assert st['distillation']['steps'] == 2 and st['geometry']['steps'] == 2
    assert prof['skipped'] == []                                                       # every name exists in this checkout
    assert prof['changed']['train_steps'] == 2 and prof['scene_cache']['rendered'] > 0
    e = prof['extrapolated']
    assert e['wall'] == pytest.approx(total + 2 * sum(st[k]['wall'] for k in dp.PER_SEED))   # 3 seeds from 1
    text = dp.render_profile(prof)                                                    # what main printed
    assert 'SHORTENED' in text and 'EXTRAPOLATED' in text and '== distillation' in text and 'ms/step' in text

def test_compare_prints_ratios(tiny_profile, tmp_path, capsys):
    prof, out, _, _ = tiny_profile
    b = json.loads(out.read_text())
    g = b['stages']['geometry']
    for r in g['rows']: r['wall'] *= 2; r['cpu'] *= 4
    g['wall'] *= 2; g['cpu'] *= 4
    b['stages']['distillation']['rows'].insert(0, dict(section='fused splat', depth=0, calls=1, wall=1., cpu=1., wall_incl=None,
                                                       cpu_incl=None, nested=False))
    (tmp_path / 'b.json').write_text(json.dumps(b))
    capsys.readouterr()
    text = dp.main(['--compare', str(out), str(tmp_path / 'b.json')])
    assert text == capsys.readouterr().out
    lines = text.splitlines()
    geo = next(l for l in lines if l.startswith('geometry '))
    assert geo.split()[-4:-3] == ['2.00'] and geo.split()[-1] == '4.00'               # wall and CPU ratios of the stage
    assert next(l for l in lines if l.startswith('probe data ')).split()[-1] == '1.00'
    assert any(l.startswith('fused splat') and l.split()[2:4] == ['-', '1.00'] for l in lines)   # a section only B has
