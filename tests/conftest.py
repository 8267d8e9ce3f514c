"Shared test setup: one thread, no network, headless plotting."
import os
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')
import torch
torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
