import pytest
import torch

from harness.core.errors import UserError
from harness.data import synthfaces
from harness.data.datasets import load_dataset, resolve_options, split_indices


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_and_range(size):
    images, factors = synthfaces.generate(40, size, seed=1)
    assert images.shape == (40, 1, size, size) and images.dtype == torch.uint8
    assert factors.shape == (40, len(synthfaces.FACTORS))
    expressions = factors[:, 0]
    assert expressions.min() >= 0 and expressions.max() < len(synthfaces.EXPRESSIONS)
    assert images.float().std() > 20  # not blank


def test_same_seed_same_faces_other_seed_other_faces():
    a, fa = synthfaces.generate(64, 32, seed=7)
    b, fb = synthfaces.generate(64, 32, seed=7)
    c, _ = synthfaces.generate(64, 32, seed=8)
    assert torch.equal(a, b) and torch.equal(fa, fb)
    assert not torch.equal(a, c)


def test_face_i_depends_only_on_seed_and_i():
    small, _ = synthfaces.generate(30, 32, seed=3)
    large, _ = synthfaces.generate(300, 32, seed=3, chunk=64)
    assert torch.equal(small, large[:30])


def test_faces_have_face_structure():
    """The average face is a bright oval on a darker background, with darker eyes than cheeks."""
    images, factors = synthfaces.generate(2000, 64, seed=0)
    mean = images.float().mean(dim=(0, 1)) / 255  # (64, 64)
    centre, corners = mean[24:40, 24:40].mean(), torch.stack([mean[:6, :6], mean[:6, -6:], mean[-6:, :6], mean[-6:, -6:]]).mean()
    assert centre > corners + 0.15
    eyes = mean[26:30, 14:22].mean() + mean[26:30, 42:50].mean()
    cheeks = mean[36:40, 14:22].mean() + mean[36:40, 42:50].mean()
    assert eyes < cheeks


def test_mouth_curvature_encodes_the_expression():
    """Happy mouths bend up at the corners, sad ones down: the corners differ, the forehead does not."""
    images, factors = synthfaces.generate(3000, 64, seed=0)
    happy = factors[:, 0] == synthfaces.EXPRESSIONS.index("happy")
    sad = factors[:, 0] == synthfaces.EXPRESSIONS.index("sad")
    assert (factors[happy, 1] > 0.5).all() and (factors[sad, 1] < -0.5).all()
    diff = (images[happy].float().mean(0) - images[sad].float().mean(0)).abs()[0]
    assert diff[44:54, 20:44].mean() > 2 * diff[8:16, 20:44].mean()


def test_synthfaces_dataset_splits_and_labels():
    data = load_dataset("synthfaces", {"n": 500, "size": 32})
    assert (len(data.train), len(data.val), len(data.test)) == (400, 50, 50)
    assert data.labels["val"].shape == (50, len(synthfaces.FACTORS)) and data.label_names == synthfaces.FACTORS
    again = load_dataset("synthfaces", {"n": 500, "size": 32})
    assert torch.equal(data.val, again.val)


def test_split_indices_partition_deterministically():
    train, val, test = split_indices(1000, 0.1, 0.2, seed=5)
    everything = torch.cat([train, val, test])
    assert (len(val), len(test)) == (100, 200) and torch.equal(everything.sort().values, torch.arange(1000))
    assert torch.equal(split_indices(1000, 0.1, 0.2, seed=5)[1], val)
    assert not torch.equal(split_indices(1000, 0.1, 0.2, seed=6)[1], val)


@pytest.mark.parametrize("given, message", [
    ({"sise": 32}, r"unknown option 'sise' for dataset 'synthfaces' \(did you mean 'size'\?\)"),
    ({"size": "32"}, "expected int"),
    ({"n": 1.5}, "expected int"),
])
def test_bad_dataset_options(given, message):
    with pytest.raises(UserError, match=message):
        resolve_options("synthfaces", given)


def test_bad_sizes_and_fractions():
    with pytest.raises(UserError, match="32 or 64"):
        load_dataset("synthfaces", {"size": 48})
    with pytest.raises(UserError, match="sum to less than 1"):
        load_dataset("synthfaces", {"n": 100, "val_fraction": 0.5, "test_fraction": 0.5})
