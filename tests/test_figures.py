"""Every committed figure shows something: no panel is blank, no panel repeats its neighbour.

A figure is read from the PNG outputs stored in the notebooks. Its panels are the blocks of ink separated by rows and
columns of background (white), found twice over (rows of panels, then the panels of a row, then titles apart from
images). A panel is *blank* when one colour covers more than 99% of it (a hole mask with no hole, an all-black map);
two neighbouring panels of the same size (to two pixels) are *repeats* when fewer than 1% of their pixels differ visibly. Panels that
are meant to look that way are listed in `INTENDED` with the reason, by cell id.
"""
import base64, io, json
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT/'nbs').glob('*.ipynb'))
MIN_PANEL = 40        # px: smaller blocks are text, ticks or colour bars
BLANK_SHARE = 0.99    # one colour (in 8-level bins) covering more than this of a panel: blank
REPEAT_SHARE = 0.01   # neighbours differing (by > 8 levels) on fewer than this share of pixels: a repeat
INTENDED = {'1059570f': 'chapter 12: a feature field at step 0 of its fit is constant (the figure shows it filling in)'}

def _runs(mask, min_len):
    "(start, stop) of the runs of True in a 1-D mask that are at least `min_len` long."
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_len]

def panels(img: np.ndarray, min_size: int = MIN_PANEL) -> list[np.ndarray]:
    "Crops of an RGB figure separated by background rows and columns: rows of panels, the panels in each, titles apart."
    ink = np.abs(img.astype(np.int16) - 255).max(-1) > 10
    out = []
    for r0, r1 in _runs(ink.any(1), min_size):
        for c0, c1 in _runs(ink[r0:r1].any(0), min_size):
            for a0, a1 in _runs(ink[r0:r1, c0:c1].any(1), min_size):
                crop = img[r0 + a0:r0 + a1, c0:c1]
                if min(crop.shape[:2]) >= min_size: out.append(crop)
    return out

def figure_problems(png: bytes) -> list[str]:
    "What is wrong with one stored figure: blank panels and repeated neighbours."
    img = np.asarray(Image.open(io.BytesIO(png)).convert('RGB'))
    ps, bad = panels(img), []
    for i, p in enumerate(ps):
        _, counts = np.unique((p // 8).reshape(-1, 3), axis=0, return_counts=True)
        if counts.max() / counts.sum() > BLANK_SHARE: bad.append(f'panel {i} ({p.shape[1]}x{p.shape[0]} px) is blank')
    for i, (a, b) in enumerate(zip(ps, ps[1:])):
        h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])   # panels of one grid differ by a pixel or two
        if max(a.shape[0], b.shape[0]) - h <= 2 and max(a.shape[1], b.shape[1]) - w <= 2 and \
                (np.abs(a[:h, :w].astype(np.int16) - b[:h, :w]).max(-1) > 8).mean() < REPEAT_SHARE:
            bad.append(f'panels {i} and {i + 1} are the same picture')
    return bad

def _png(fig) -> bytes:
    buf = io.BytesIO(); fig.savefig(buf, format='png', dpi=60); return buf.getvalue()

def test_the_check_can_fail():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64] / 64
    noise, holes = np.sin(6 * xx + 3 * yy ** 2) * np.cos(5 * yy), np.zeros((64, 64))   # a smooth picture, an empty mask
    holes[:1, :5] = 1                                        # 5 hole pixels of 4096: a black square to the eye
    fig, axs = plt.subplots(1, 4, figsize=(8, 2))
    for ax, im in zip(axs, [noise, holes, noise, noise]): ax.imshow(im, cmap='gray'); ax.set_title('x'); ax.axis('off')  # 2 and 3 repeat
    bad = figure_problems(_png(fig)); plt.close(fig)
    assert any('panel 1' in b and 'blank' in b for b in bad), bad
    assert any('panels 2 and 3' in b for b in bad), bad
    fig, axs = plt.subplots(1, 3, figsize=(6, 2))
    for ax in axs: ax.imshow(rng.random((64, 64)), cmap='viridis'); ax.axis('off')
    assert figure_problems(_png(fig)) == []; plt.close(fig)

@pytest.mark.parametrize('path', NBS, ids=[p.stem for p in NBS])
def test_no_blank_or_repeated_panel(path):
    nb, found = json.loads(path.read_text()), []
    for i, c in enumerate(nb['cells']):
        if c.get('id') in INTENDED: continue
        for o in c.get('outputs', []):
            png = o.get('data', {}).get('image/png')
            if png: found += [f'cell {i} ({c.get("id")}): {b}' for b in figure_problems(base64.b64decode(png))]
    assert not found, f'{path.name}: ' + '; '.join(found) + ' (show a view where the panel has content, or drop it)'
