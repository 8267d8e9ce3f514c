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
