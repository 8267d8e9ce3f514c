"bench/gpu_check.py, the prepared first-GPU check: its plan on the CPU (--dry-run), and its step runner on trivial steps."
import sys
from pathlib import Path
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
import gpu_check  # noqa: E402


def test_dry_run_prints_the_plan_with_budgets(capsys, tmp_path):
    steps = gpu_check.main(['--dry-run', '--out', str(tmp_path / 'o')])
    out = capsys.readouterr().out
    names = ['gsplat_build', 'pytest_cuda', 'cells_06a', 'cells_08', 'bench_splat', 'train_step', 'train_step_bf16', 'snd_train_100']
    assert [s['name'] for s in steps] == names and all(f'{n} ' in out for n in names)
    assert sum(s['budget'] for s in steps) <= 480 and '480 s of budget' in out
    assert '--device cuda --ds 3,64,384' in out and 'amp=bf16' in out and 'dinov2_vits14:random' in out
    assert not (tmp_path / 'o').exists()                                   # a dry run writes nothing
    assert [s['name'] for s in gpu_check.main(['--dry-run', '--only', 'bench_splat'])] == ['bench_splat']


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message on a machine without a GPU')
def test_without_a_gpu_it_says_so():
    with pytest.raises(SystemExit, match='needs a CUDA GPU'): gpu_check.main(['--out', '/nonexistent/never'])


def test_step_runner_records_figures_failures_and_timeouts(tmp_path):
    py = sys.executable
    log = open(tmp_path / 'log', 'w')
    ok = gpu_check.run_step(dict(name='a', what='ok', budget=30, cmds=[[py, '-c', 'print("GPU_CHECK", \'{"x": 1}\')']]), log)
    bad = gpu_check.run_step(dict(name='b', what='fails', budget=30, cmds=[[py, '-c', 'raise SystemExit(3)']]), log)
    slow = gpu_check.run_step(dict(name='c', what='slow', budget=1, cmds=[[py, '-c', 'import time; time.sleep(20)']]), log)
    assert (ok['status'], ok['figures']) == ('ok', [{'x': 1}])
    assert bad['status'] == 'fail (rc 3)' and slow['status'] == 'timeout' and slow['wall_s'] < 10
    table = gpu_check.summary([ok, bad, slow])
    assert 'timeout' in table and '{"x": 1}' in table and table.splitlines()[-1].startswith('total')
