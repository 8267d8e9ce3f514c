"Chapter 00's `chunked_grads`: a batch's gradient in slices side by side in threads, the same whichever thread finishes first."
import threading, time
import pytest
import torch
from splat_and_distill.core import chunked_grads


def model_and_loss():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    unused = torch.nn.Parameter(torch.ones(3))
    loss = lambda b: (((net(b['x']) - b['y']) ** 2).mean(), dict(n=len(b['x']), tag=b['tag']))
    return net, [*net.parameters(), unused], loss


def batch(n=5):
    g = torch.Generator().manual_seed(1)
    return dict(x=torch.randn(n, 4, generator=g), y=torch.randn(n, 2, generator=g), tag='kept')


def test_one_slice_is_the_whole_batch_bit_for_bit():
    net, params, loss = model_and_loss()
    b = batch()
    loss(b)[0].backward()
    grads, parts = chunked_grads(loss, b, params)
    for p, g in zip(params[:-1], grads): assert torch.equal(p.grad, g)
    assert grads[-1] is None and parts == [(1.0, dict(n=5, tag='kept'))]


@pytest.mark.parametrize('chunks', [2, 3, 5])
def test_slices_weighted_by_size_in_slice_order(chunks):
    "Uneven slices (5 items) count by their size; the sum is the slices' gradients added in order, bit for bit, and the whole batch's to rounding."
    net, params, loss = model_and_loss()
    b = batch()
    grads, parts = chunked_grads(loss, b, params, chunks)
    cut = [round(i * 5 / chunks) for i in range(chunks + 1)]
    assert [s for s, _ in parts] == [(cut[i + 1] - cut[i]) / 5 for i in range(chunks)] and [l['n'] for _, l in parts] == [cut[i + 1] - cut[i] for i in range(chunks)]
    assert all(l['tag'] == 'kept' for _, l in parts)                                   # values that are not tensors pass unchanged
    seq = [torch.autograd.grad(loss(dict(b, x=b['x'][cut[i]:cut[i + 1]], y=b['y'][cut[i]:cut[i + 1]]))[0] * ((cut[i + 1] - cut[i]) / 5),
                               params[:-1]) for i in range(chunks)]
    whole = torch.autograd.grad(loss(b)[0], params[:-1])
    for j, g in enumerate(grads[:-1]):
        expected = seq[0][j]
        for s in seq[1:]: expected = expected + s[j]
        assert torch.equal(g, expected)
        torch.testing.assert_close(g, whole[j], rtol=1e-5, atol=1e-7)
    assert grads[-1] is None


def test_order_of_finishing_does_not_matter():
    "The first slice (this thread) is made slow: the others finish first, and the gradient is the same bit for bit."
    net, params, loss = model_and_loss()
    b = batch(6)
    main = threading.get_ident()
    def slow_first(part):
        if threading.get_ident() == main: time.sleep(0.05)
        return loss(part)
    a, _ = chunked_grads(loss, b, params, 3)
    c, _ = chunked_grads(slow_first, b, params, 3)
    assert all(torch.equal(x, y) for x, y in zip(a[:-1], c[:-1]))


def test_bad_chunks_and_errors_in_a_thread():
    net, params, loss = model_and_loss()
    for chunks in (0, 6):
        with pytest.raises(ValueError, match=f'chunks={chunks} must be between 1 and the batch size 5'): chunked_grads(loss, batch(), params, chunks)
    def fails_on_last(part):
        if len(part['x']) == 1 and torch.equal(part['x'], batch()['x'][4:]): raise RuntimeError('slice failed')
        return loss(part)
    with pytest.raises(RuntimeError, match='slice failed'): chunked_grads(fails_on_last, batch(), params, 5)


def test_slices_run_on_threads_kept_for_the_process(monkeypatch):
    "One pool per process and size, reused step after step (thread and allocator start-up once); a forked child (another pid) makes its own."
    from splat_and_distill import core
    net, params, loss = model_and_loss()
    seen = set()
    def record(part):
        seen.add(threading.current_thread().name)
        return loss(part)
    for _ in range(3): chunked_grads(record, batch(), params, 2)
    workers = {n for n in seen if n.startswith('chunked_grads')}
    assert len(workers) == 1 and core._slice_pool(1) is core._slice_pool(1)
    a, _ = chunked_grads(loss, batch(), params, 2)
    monkeypatch.setattr(core.os, 'getpid', lambda: -1)                      # as in a child forked from this process
    b, _ = chunked_grads(loss, batch(), params, 2)
    assert (-1, 1) in core._SLICE_POOLS and all(torch.equal(x, y) for x, y in zip(a[:-1], b[:-1]))
