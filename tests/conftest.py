"Shared test setup: one thread, no network, headless plotting."
import os
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')
import torch
torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
# Triton kernels (chapter 06) run on CPU only in Triton's interpreter, which must be chosen before anything (torchvision,
# timm) first imports Triton
if not torch.cuda.is_available(): os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest

@pytest.fixture(scope='session')
def docs_site(tmp_path_factory):
    "The documentation site built once per test session (`bench/build_docs.py`); used by test_docs and test_browser."
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root/'bench'))
    import build_docs
    out = tmp_path_factory.mktemp('site')/'_docs'
    build_docs.build(out)
    return out
