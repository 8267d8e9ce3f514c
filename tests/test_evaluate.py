"Statistics of the study tables (chapter 10b): paired t-intervals and p-values, Holm's correction, bold only where Holm-significant, the scene bootstrap."
import math
import numpy as np
import pytest
from scipy import stats
from splat_and_distill.evaluate import (holm, paired_t, paired_comparison, paired_summary, compare_variants, scene_values,
    scene_bootstrap, summary_table, diff_interval, metric_digits, SUMMARY_LEGEND, STUDY_COLUMNS)

COLS = [('consistency.gap', 'gap ↑', True), ('depth.abs_rel', 'AbsRel ↓', False)]


def _res(gap, abs_rel=0.2, per_scene=None, seeds=None):
    r = {'consistency': {'gap': gap}, 'depth': {'abs_rel': abs_rel}}
    if per_scene is not None: r['consistency']['per_scene'] = {'gap': list(per_scene)}
    if seeds is not None: r['eval_scenes'] = {'split': 'test', 'seeds': list(seeds)}
    return r


def test_holm_hand_computed():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04; running max keeps the order: 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-12)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])                   # capped at 1, then monotone
    h = holm([0.01, math.nan, 0.04])                                          # NaN is no test: m = 2
    assert h[0] == pytest.approx(0.02) and math.isnan(h[1]) and h[2] == pytest.approx(0.04)
    assert holm([]) == [] and holm([0.2]) == pytest.approx([0.2])


def test_holm_never_below_raw_and_keeps_order():
    p = np.random.default_rng(0).uniform(0, 0.2, 12)
    q = np.array(holm(p))
    assert (q >= p - 1e-15).all() and (q <= 1).all()
    order = np.argsort(p)
    assert (np.diff(q[order]) >= -1e-15).all()


def test_paired_t_matches_scipy():
    a, b = np.array([0.52, 0.552, 0.514, 0.53]), np.array([0.50, 0.53, 0.49, 0.52])
    r, ref = paired_t(a - b), stats.ttest_rel(a, b)
    assert r['n'] == 4 and r['diff'] == pytest.approx((a - b).mean())
    assert r['p'] == pytest.approx(ref.pvalue, rel=1e-10)
    assert r['ci'] == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-10)
    half = stats.t.ppf(0.975, 3) * (a - b).std(ddof=1) / 2                   # by the formula: t_{0.975, n-1} s / sqrt(n)
    assert r['ci'][1] - r['diff'] == pytest.approx(half)


def test_paired_t_degenerate_cases():
    one = paired_t([0.3])
    assert one['n'] == 1 and math.isnan(one['p']) and all(math.isnan(x) for x in one['ci'])
    assert paired_t([0., 0., 0.])['p'] == 1. and paired_t([0.1, 0.1])['p'] == 0.


def test_two_std_is_not_significance():
    "Two seeds whose differences are beyond 2 std of each other (the old rule's bold) are far from significant."
    teacher = {0: _res(0.50), 1: _res(0.50)}
    runs = {0: {'models': {'student': _res(0.51)}}, 1: {'models': {'student': _res(0.52)}}}
    s = paired_summary(teacher, runs, columns=COLS)['consistency.gap']
    assert abs(s['delta'][0]) > 2 * s['delta'][1]                             # bold under the old rule
    assert s['p'] == pytest.approx(0.2048, abs=1e-3) and not s['better'] and not s['worse']
    assert '**' not in summary_table({'student': paired_summary(teacher, runs, columns=COLS)})


def test_bold_only_when_holm_significant():
    noise = [0.0, 0.03, -0.01]
    def row(gap_d, abs_rel_d):
        teacher = {k: _res(0.5 + n, 0.2 + n) for k, n in enumerate(noise)}
        runs = {k: {'models': {'student': _res(0.5 + n + gap_d[k], 0.2 + n + abs_rel_d[k])}} for k, n in enumerate(noise)}
        return paired_summary(teacher, runs, columns=COLS)
    s = row([0.02, 0.022, 0.024], [0.01, 0.02, 0.005])       # the gap clearly better (p 0.003); AbsRel up, p 0.12
    g, d = s['consistency.gap'], s['depth.abs_rel']
    assert g['p'] < 0.005 and g['p_holm'] == pytest.approx(2 * g['p']) and g['better'] and not g['worse']
    assert d['p'] > 0.1 and not d['worse'] and not d['better']
    for key in ('teacher', 'model', 'delta', 'seeds', 'better', 'worse', 'n', 'diff', 'ci', 'p', 'p_holm'): assert key in g
    table = summary_table({'student': s}, COLS)
    assert f"**{diff_interval(g, 3)}**" in table and f"**{diff_interval(d, 3)}**" not in table
    assert diff_interval(g, 3) == f"+0.022 [{g['ci'][0]:.3f}, {g['ci'][1]:.3f}]"
    # each p-value below 0.05 on its own (0.026 and 0.030), but not after Holm's correction for two tests: nothing bold
    s = row([0.01, 0.014, 0.018], [-0.01, -0.016, -0.019])
    assert all(r['p'] < 0.05 < r['p_holm'] and not (r['better'] or r['worse']) for r in s.values())
    assert '**' not in summary_table({'student': s}, COLS)


def test_worse_direction_and_lower_is_better():
    teacher = {k: _res(0.5, 0.20 + 0.01 * k) for k in range(4)}
    runs = {k: {'models': {'student': _res(0.5, 0.25 + 0.01 * k + 0.001 * (k % 2))}} for k in range(4)}
    d = paired_summary(teacher, runs, columns=COLS)['depth.abs_rel']
    assert d['diff'] > 0 and d['worse'] and not d['better']                  # AbsRel up: worse


def test_one_seed_no_interval_never_bold():
    s = paired_summary({0: _res(0.5)}, {0: {'models': {'student': _res(0.9)}}}, columns=COLS)
    g = s['consistency.gap']
    assert g['n'] == 1 and math.isnan(g['p']) and math.isnan(g['p_holm']) and not g['better']
    assert '| student − teacher | +0.400 | +0.000 |' in summary_table({'student': s}, COLS)


def test_compare_variants_is_a_minus_b():
    a = {k: {'models': {'student': _res(0.6 + 0.01 * k)}} for k in range(3)}
    b = {k: {'models': {'student': _res(0.5 + 0.01 * k + 0.001 * k * k)}} for k in range(3)}
    v = compare_variants(a, b, columns=COLS)['consistency.gap']
    assert v['diff'] == pytest.approx(np.mean([0.1 - 0.001 * k * k for k in range(3)]))
    assert v['teacher'][0] == pytest.approx(np.mean([0.5 + 0.01 * k + 0.001 * k * k for k in range(3)]))   # 'teacher' holds B
    assert v == paired_comparison({k: r['models']['student'] for k, r in a.items()}, {k: r['models']['student'] for k, r in b.items()}, COLS)['consistency.gap']
    assert '| default − control |' in summary_table({'default': compare_variants(a, b, columns=COLS)}, COLS, baseline='control')


def test_string_seed_keys_pair_like_ints():
    "Results read back from JSON have string seed keys."
    teacher = {str(k): _res(0.5 + 0.01 * k) for k in range(3)}
    runs = {str(k): {'models': {'student': _res(0.52 + 0.01 * k + 0.001 * k)}} for k in range(3)}
    assert paired_summary(teacher, runs, columns=COLS)['consistency.gap']['seeds'] == [0, 1, 2]


def test_scene_values_lookup():
    r = {'corr': {'mrr': 0.1, 'per_scene': {'mrr': [0.1, 0.2]}}, 'real': {'corr': {'per_scene': {'recall_5px': [1.]}}}}
    assert scene_values(r, 'corr.mrr') == [0.1, 0.2] and scene_values(r, 'real.corr.recall_5px') == [1.]
    assert scene_values(r, 'depth.abs_rel') is None and scene_values(r, 'corr.recall_5px') is None


def test_scene_bootstrap_interval():
    effect = np.array([0., 0., 0., 0., 0., 0., 0.04, 0.04])
    base = {k: _res(0.5, per_scene=0.5 + np.zeros(8), seeds=range(8)) for k in range(3)}
    better = {k: _res(0.51, per_scene=0.5 + effect + 0.001 * (k - 1), seeds=range(8)) for k in range(3)}
    sb = scene_bootstrap(better, base, 'consistency.gap')
    assert sb['mean'] == pytest.approx(0.01) and sb['scenes'] == 8 and sb['n_boot'] == 2000
    assert sb['ci'][0] <= 1e-12 and sb['ci'][1] >= 0.018 and sb['ci'][0] <= sb['mean'] <= sb['ci'][1]
    assert scene_bootstrap(better, base, 'consistency.gap') == sb            # fixed seed
    # by brute force: the same resampling drawn by hand
    means = effect[np.random.default_rng(0).integers(0, 8, (2000, 8))].mean(1)
    assert sb['ci'] == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    uniform = {k: _res(0.51, per_scene=0.51 + np.zeros(8), seeds=range(8)) for k in range(3)}
    assert scene_bootstrap(uniform, base, 'consistency.gap')['ci'] == pytest.approx((0.01, 0.01))   # no scene spread: no width
    assert scene_bootstrap(better, base, 'depth.abs_rel') is None
    with pytest.raises(ValueError, match='different test scenes'):
        scene_bootstrap(better, {0: _res(0.5, per_scene=np.zeros(8), seeds=range(1, 9))}, 'consistency.gap')


def test_summary_reports_scene_bootstrap_row():
    base = {k: _res(0.5 + 0.001 * k, per_scene=0.5 + np.zeros(8), seeds=range(8)) for k in range(3)}
    runs = {k: {'models': {'student': _res(0.52 + 0.001 * k, per_scene=0.52 + 0.01 * np.arange(8) / 7, seeds=range(8))}} for k in range(3)}
    s = paired_summary(base, runs, columns=COLS)
    assert 'scene_bootstrap' in s['consistency.gap'] and 'scene_bootstrap' not in s['depth.abs_rel']
    table = summary_table({'student': s}, COLS)
    lo, hi = s['consistency.gap']['scene_bootstrap']['ci']
    assert f'| student − teacher, scenes | [{lo:+.3f}, {hi:+.3f}] | - |' in table


def test_digits_columns_and_legend():
    assert (metric_digits('corr.recall_10px'), metric_digits('corr.recall_2p8tok'), metric_digits('pose.auc_10')) == (1, 1, 1)
    assert (metric_digits('corr.mrr'), metric_digits('corr.hard_margin'), metric_digits('consistency.gap'), metric_digits('normals.rmse')) == (3, 3, 3, 1)
    keys = [k for k, _, _ in STUDY_COLUMNS]
    for k in ('corr.mrr', 'corr.hard_margin', 'consistency.gap_centred', 'smoothness.cos_neighbour', 'corr.recall_2p8tok', 'pose.auc_10'):
        assert k in keys
    assert 'Holm' in SUMMARY_LEGEND and 'Bold' in SUMMARY_LEGEND and '2 std' not in SUMMARY_LEGEND


def test_stored_summary_without_intervals_is_refused():
    old = {'student': {'consistency.gap': dict(teacher=(0.5, 0.), model=(0.52, 0.), delta=(0.02, 0.001), seeds=[0, 1], better=True, worse=False)}}
    with pytest.raises(ValueError, match=r"'consistency.gap' has no t-interval.*paired_summary\(teacher, runs, model\)"):
        summary_table(old)
