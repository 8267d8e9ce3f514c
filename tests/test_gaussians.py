"Gaussians container and pixel-aligned Gaussians from depth."
import pytest
import torch
import torch.nn.functional as F
from splat_and_distill.cameras import intrinsics_from_fov, look_at, project_points
from splat_and_distill.gaussians import Gaussians, covariance, gaussians_from_depth


def _views(v=2, h=6, w=8):
    K = intrinsics_from_fov(60, w, h).expand(v, 3, 3)
    c2w = torch.stack([look_at(torch.tensor([x, -3., 1.]), torch.tensor([0., 0., 1.])) for x in torch.linspace(-0.5, 0.5, v)])
    return K, c2w


def test_covariance_is_rotated_scaled_identity():
    q = F.normalize(torch.randn(50, 4), dim=-1); s = torch.rand(50, 3) + 0.1
    cov = covariance(q, s)
    torch.testing.assert_close(cov, cov.transpose(-1, -2))
    ev = torch.linalg.eigvalsh(cov).sort(-1).values
    torch.testing.assert_close(ev, (s ** 2).sort(-1).values, rtol=1e-4, atol=1e-5)


def test_from_depth_order_positions_scales_and_invalid_pixels():
    K, c2w = _views()
    depth = 2 + torch.rand(2, 6, 8); depth[0, 2, 3] = float('nan'); depth[1, 5, 7] = -1
    feats = torch.randn(2, 4, 6, 8)
    g = gaussians_from_depth(depth, K, c2w, feats, scale_mult=0.7, opacity=0.8)
    assert (g.n, g.d) == (96, 4)
    g.check()
    for k, y, x in [(0, 0, 0), (1, 3, 5), (0, 5, 7)]:
        i = (k * 6 + y) * 8 + x
        uv, z = project_points(g.means[i:i + 1], K[k], c2w[k])
        torch.testing.assert_close(uv[0], torch.tensor([x + 0.5, y + 0.5]), atol=1e-4, rtol=0)
        torch.testing.assert_close(z[0], depth[k, y, x])
        torch.testing.assert_close(g.features[i], feats[k, :, y, x])
        torch.testing.assert_close(g.scales[i], torch.full((3,), 0.7) * depth[k, y, x] / K[k, 0, 0])
        assert g.opacities[i] == pytest.approx(0.8)
    for i in [(0 * 6 + 2) * 8 + 3, (1 * 6 + 5) * 8 + 7]:
        assert g.opacities[i] == 0 and g.scales[i].abs().sum() == 0 and torch.isfinite(g.means[i]).all()


def test_from_depth_batched_and_oriented():
    K, c2w = _views()
    depth = 2 + torch.rand(3, 2, 6, 8)
    q = F.normalize(torch.randn(3, 2, 6, 8, 4), dim=-1)
    g = gaussians_from_depth(depth, K.expand(3, -1, -1, -1), c2w.expand(3, -1, -1, -1), torch.randn(3, 2, 5, 6, 8),
                             quats=q, scales_rel=torch.tensor([1., 1., 0.1]))
    assert g.batch_shape == (3,) and g.n == 96
    torch.testing.assert_close(g.quats[1, 7], q[1, 0, 0, 7])
    assert torch.allclose(g.scales[..., 2], 0.1 * g.scales[..., 0])


def test_container_ops_and_errors():
    n = 10
    g = Gaussians(torch.randn(n, 3), F.normalize(torch.randn(n, 4), dim=-1), torch.rand(n, 3), torch.rand(n), torch.randn(n, 6))
    assert Gaussians.cat([g, g[:4]]).n == 14 and len(g[2:5]) == 3 and g[3].n == 1
    b = Gaussians.stack([g, g])
    assert Gaussians.cat([b, b]).means.shape == (2, 20, 3) and b.opacities.shape == (2, 10)
    with pytest.raises(ValueError, match='same number'): Gaussians.stack([g, g[:3]])
    with pytest.raises(ValueError, match='quats'): Gaussians(g.means, g.quats[:, :3], g.scales, g.opacities, g.features)
    with pytest.raises(ValueError, match='opacities'): Gaussians(g.means, g.quats, g.scales, g.opacities[:, None], g.features)
    with pytest.raises(ValueError, match='NaN'): Gaussians(g.means, g.quats, g.scales * float('nan'), g.opacities, g.features).check()
    with pytest.raises(ValueError, match='must be'): gaussians_from_depth(torch.ones(2, 4, 4), torch.eye(3).expand(2, 3, 3), torch.eye(4).expand(3, 4, 4), torch.ones(2, 1, 4, 4))
