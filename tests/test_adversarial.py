import pytest
import torch

from harness.family.adversarial import Alternation
from harness.family.registry import get_family
from harness.scoring.pixel_mmd import median_bandwidth, pixel_mmd


def run(schedule: Alternation, losses: list[float]) -> str:
    turns = ""
    for loss in losses:
        who = schedule.turn
        turns += who
        schedule.done(who, torch.tensor(loss))
    return turns


def test_ratio_schedule_k_discriminator_steps_per_generator_step():
    assert run(Alternation({"d_steps": 3}), [0.0] * 8) == "dddgdddg"
    assert run(Alternation({"d_steps": 1}), [0.0] * 6) == "dgdgdg"  # the reports: alternate every batch


def test_threshold_schedule_switches_below_thresholds_and_at_the_cap():
    schedule = Alternation({"schedule": "threshold", "d_threshold": 0.5, "g_threshold": 1.0, "max_consecutive": 3})
    #          d: 0.9 0.7 0.4 -> under 0.5, switch; g: 2.0 1.5 3.0 -> cap of 3, switch; d: 0.1 -> switch
    assert run(schedule, [0.9, 0.7, 0.4, 2.0, 1.5, 3.0, 0.1, 0.5]) == "dddgggdg"


def test_the_schedule_position_is_saved_with_the_weights(tmp_path):
    family = get_family("gan")
    params = family.defaults | {"d_steps": 3}
    model = family.build(params, 1, 32)
    model.schedule.done("d", torch.tensor(0.0))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    again = family.build(params, 1, 32)
    again.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert again.schedule.state() == {"turn": "d", "count": 1}


def test_pixel_mmd_tells_distributions_apart():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(200, 1, 16, 16, generator=g), torch.rand(200, 1, 16, 16, generator=g)
    dark = torch.rand(200, 1, 16, 16, generator=g) * 0.5
    same, different = pixel_mmd(a, b), pixel_mmd(dark, b)
    assert abs(same) < 0.01 and different > 0.1
    bandwidth = median_bandwidth(b)
    assert pixel_mmd(dark, b, bandwidth) == pytest.approx(different)  # the kernel comes from the references only
    with pytest.raises(ValueError, match="sample shape"):
        pixel_mmd(torch.rand(4, 3, 16, 16), b)


def test_pixel_mmd_pools_large_images():
    g = torch.Generator().manual_seed(1)
    big = torch.rand(50, 3, 64, 64, generator=g)
    assert abs(pixel_mmd(big, torch.rand(50, 3, 64, 64, generator=g))) < 0.05
