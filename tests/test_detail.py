"""The detail descriptor beside the domain network (harness/scoring/detail.py): known answers at the pixel scale."""

import pytest
import torch
import torch.nn.functional as F

from harness.scoring.detail import PER_CHANNEL, DetailFeatures, describe, levels, without_level
from harness.scoring.scores import FeatureStats, frechet_distance


def smooth_faces(n: int = 64, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Blobs with soft edges and a little texture, in [0, 1]: images with detail at every scale."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    x = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    return (0.5 * x + 0.03 * torch.randn(n, 1, size, size, generator=g) + 0.25).clamp(0, 1)


def test_levels_run_from_the_full_size_down_to_8_pixels():
    assert levels(32) == [32, 16, 8] and levels(64) == [64, 32, 16, 8] and levels(8) == [8]
    features = DetailFeatures(3, 32)
    assert features.width == 3 * PER_CHANNEL * 3 and features(torch.rand(2, 3, 32, 32)).shape == (2, features.width)
    assert list(features.blocks(130)) == ["32px", "16px", "8px"] and features.blocks(130)["32px"] == slice(130, 166)


def test_a_face_moved_by_a_pixel_has_the_detail_it_had():
    """The parity classes swap and the sort undoes it: moving every image by a pixel (its edge
    repeated) changes the detail's distribution by a small fraction of what sigma-8 grain does."""
    x = smooth_faces(400)
    moved = torch.cat([x[..., :1], x[..., :-1]], dim=-1)
    grain = (x + 8 / 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)

    def fd(images: torch.Tensor) -> float:
        return frechet_distance(FeatureStats.of(torch.cat(describe(images, 32), 1)),
                                FeatureStats.of(torch.cat(describe(x, 32), 1)))

    assert fd(moved) < 0.1 * fd(grain)
    assert torch.equal(describe(torch.roll(torch.zeros(2, 1, 32, 32).index_fill_(-1, torch.tensor([5, 9]), 1.0), 1, -1), 32)[0],
                       describe(torch.zeros(2, 1, 32, 32).index_fill_(-1, torch.tensor([5, 9]), 1.0), 32)[0])  # stripes


def test_a_pixel_checkerboard_is_seen_as_checkerboard_detail_only_at_the_finest_level():
    x = smooth_faces()
    board = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2).float() * 2 - 1
    damaged = (x + 16 / 255 * board).clamp(0, 1)
    before, after = describe(x, 32), describe(damaged, 32)
    change = (after[0] - before[0]).mean(0).view(3, 4)  # (horizontal, vertical, checkerboard) x sorted parity
    assert change[2].min() > 1.0 and change[:2].abs().max() < 0.5 * change[2].min()  # log1p(16) - log1p(small)
    assert (after[1] - before[1]).abs().max() < 0.05  # averaged away at 16 px


def test_a_2x_blow_up_has_no_detail_at_one_parity():
    x = smooth_faces()
    blocky = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    smallest = describe(blocky, 32)[0].view(-1, 3, 4)[:, :, 0]  # the sorted classes' smallest: log1p(0) = 0
    assert smallest.abs().max() < 1e-9 and describe(x, 32)[0].view(-1, 3, 4)[:, :, 0].min() > 0.1


def test_calibration_makes_losing_a_level_cost_what_was_asked():
    x = smooth_faces(200)
    detail = DetailFeatures(1, 32)
    unweighted = detail.calibrate(x, [30.0, 20.0, 10.0])
    assert all(u > 0 for u in unweighted)
    real = detail(x.double())
    for level, cost in enumerate([30.0, 20.0, 10.0]):
        lost = detail(without_level(x.double(), level))
        columns = detail.blocks()[f"{levels(32)[level]}px"]
        fd = frechet_distance(FeatureStats.of(lost[:, columns]), FeatureStats.of(real[:, columns]))
        assert abs(fd - cost) < 1e-6 * cost


def test_the_domain_network_weighs_each_octave_by_what_its_own_features_charge_for_one():
    """calibrate_detail: losing an octave of detail costs detail_ratio x the learned features' cost of
    a lost octave (the images halved at the network's input side), times 32 / side above 32 px."""
    from harness.scoring.extractors import RECIPE, DomainNet

    for size in (32, 64):
        torch.manual_seed(0)
        net = DomainNet(1, size, 0, 0).eval()
        x = smooth_faces(200, size)
        quality = net.calibrate_detail(x)
        with torch.no_grad():
            learned = lambda images: FeatureStats.of(net.embed(images.float()))  # noqa: E731
            seen = frechet_distance(learned(without_level(x.double(), 1)), learned(x))
            assert quality["learned_lost_octave_fd"] == pytest.approx(seen, rel=1e-4)
            features = net(x)
            for level, side in enumerate(levels(size)):
                columns = net.blocks()[f"{side}px"]
                lost = net(without_level(x.double(), level).float())[:, columns]
                cost = frechet_distance(FeatureStats.of(lost), FeatureStats.of(features[:, columns]))
                assert cost == pytest.approx(RECIPE["detail_ratio"] * seen * min(1.0, 32 / side), rel=1e-3), (size, side)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_detail_is_the_same_on_a_gpu():
    x = smooth_faces(32)
    detail = DetailFeatures(1, 32)
    detail.calibrate(x, [3.0, 2.0, 1.0])
    on_gpu = detail.to("cuda")
    assert on_gpu.weights.device.type == "cuda"
    assert torch.allclose(on_gpu(x.cuda()).cpu(), DetailFeatures.forward(detail.cpu(), x), atol=1e-5)
