"""Every accepted file layout, written here, read back pixel-exact and upright; and every bad input."""

import gzip
import re
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from conftest import SHARED_DATA
from harness.core.errors import UserError
from harness.data.datasets import (
    ImageSplits,
    from_model_range,
    get_dataset,
    infer_dataset,
    load_dataset,
    load_images,
    resolve_options,
    to_model_range,
)
from harness.data.formats import TEST, TRAIN

N, H = 6, 16
IMAGES = np.random.default_rng(0).integers(0, 256, (N, H, H), dtype=np.uint8)  # asymmetric: any flip shows


def column_major(images: np.ndarray) -> np.ndarray:
    """(N, F) rows as MATLAB writes them: fea(i, :) = reshape(img, 1, []) flattens column by column."""
    return np.stack([img.flatten(order="F") for img in images])


def write_mat73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file: HDF5 with a 512-byte MATLAB header, arrays stored with their axes reversed."""
    classes = {"uint8": "uint8", "float64": "double", "float32": "single", "uint16": "uint16"}
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in arrays.items():
            dataset = f.create_dataset(name, data=np.ascontiguousarray(array.T))
            dataset.attrs["MATLAB_class"] = np.bytes_(classes[array.dtype.name])
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Fri Nov 20 10:00:00 2026 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header.ljust(512, b"\0"))


def stack(loaded) -> np.ndarray:
    return loaded.images[:, 0].numpy()


LAYOUTS = {
    "NF": (lambda: column_major(IMAGES), {}),
    "FN": (lambda: column_major(IMAGES).T, {}),
    "NHW": (lambda: IMAGES, {}),
    "HWN": (lambda: np.moveaxis(IMAGES, 0, 2), {}),
    "NF row-major": (lambda: IMAGES.reshape(N, -1), {"order": "C"}),
    "NF floats in [0, 1]": (lambda: column_major(IMAGES) / 255.0, {}),
    "HWN floats in [0, 255]": (lambda: np.moveaxis(IMAGES, 0, 2).astype(np.float32), {}),
}


@pytest.mark.parametrize("version", ["v5", "v7.3"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_mat_layouts_load_pixel_exact_and_upright(tmp_path, version, layout):
    make, options = LAYOUTS[layout]
    path = tmp_path / "faces.mat"
    arrays = {"fea": make(), "gnd": np.arange(N, dtype=np.uint8)[:, None]}
    if version == "v5":
        scipy.io.savemat(path, arrays)
    else:
        write_mat73(path, arrays)
    loaded = load_images("ck", resolve_options("ck", {"path": str(path), **options}))
    assert loaded.images.dtype == torch.uint8 and loaded.images.shape == (N, 1, H, H)
    assert np.array_equal(stack(loaded), IMAGES)
    assert loaded.source["format"].startswith(version) and loaded.source["key"] == "fea"


def test_mat_v73_is_read_with_its_axes_reversed(tmp_path):
    path = tmp_path / "faces.mat"
    write_mat73(path, {"fea": column_major(IMAGES)})
    with h5py.File(path, "r") as f:
        assert f["fea"].shape == (H * H, N)  # as HDF5 stores MATLAB's (N, H*W)
    assert np.array_equal(stack(load_images("mat", resolve_options("mat", {"path": str(path)}))), IMAGES)


def test_rgb_stacks_and_npz_arrays(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (N, H, H, 3), dtype=np.uint8)
    np.savez(tmp_path / "nhwc.npz", pictures=rgb)
    loaded = load_images("npz", resolve_options("npz", {"path": str(tmp_path / "nhwc.npz")}))
    assert loaded.source["layout"] == "NHWC" and np.array_equal(loaded.images.numpy(), rgb.transpose(0, 3, 1, 2))
    scipy.io.savemat(tmp_path / "hwcn.mat", {"x": np.moveaxis(rgb, 0, 3)})  # MATLAB's (H, W, 3, N)
    loaded = load_images("mat", resolve_options("mat", {"path": str(tmp_path / "hwcn.mat")}))
    assert np.array_equal(loaded.images.numpy(), rgb.transpose(0, 3, 1, 2))


@pytest.mark.skipif(not (SHARED_DATA / "PIE_32x32.mat").exists(), reason="../shared/data/PIE_32x32.mat is absent")
def test_pie_faces_load_upright():
    data = load_dataset("mat", {"path": str(SHARED_DATA / "PIE_32x32.mat")})
    faces = torch.cat([data.train, data.val, data.test]).float()[:, 0] / 255
    assert faces.shape == (1700, 32, 32)
    mean = faces.mean(0)
    left_right = (mean - mean.flip(1)).abs().mean()
    top_bottom = (mean - mean.flip(0)).abs().mean()
    assert left_right < 0.75 * top_bottom  # a face is mirror-symmetric left to right, not top to bottom
    eyes_row = mean[:, 8:24].mean(1).argmin()
    assert eyes_row < 14  # the darkest band across the middle, the eyes, is in the upper half
    assert data.label_names == ("gnd",) and data.label_classes == {"gnd": 10}  # the person, read from gnd
    people = torch.cat([data.labels[s][:, 0] for s in ("train", "val", "test")])
    assert sorted(people.unique().tolist()) == list(range(10)) and len(people) == 1700


def test_class_labels_beside_the_images_are_read_and_others_are_not(tmp_path):
    import scipy.io

    faces = np.random.default_rng(0).integers(0, 255, (40, 64), dtype=np.uint8)
    scipy.io.savemat(tmp_path / "labelled.mat", {"fea": faces, "gnd": np.repeat(np.arange(1, 5), 10)[:, None]})
    loaded = load_images("mat", resolve_options("mat", {"path": str(tmp_path / "labelled.mat")}))
    assert loaded.label_classes == {"gnd": 4} and loaded.labels[:, 0].tolist() == [float(i // 10) for i in range(40)]
    scipy.io.savemat(tmp_path / "ids.mat", {"fea": faces, "gnd": np.arange(40)[:, None]})  # one class per image
    assert load_images("mat", resolve_options("mat", {"path": str(tmp_path / "ids.mat")})).labels is None


@pytest.mark.parametrize("arrays, options, message", [
    ({"gnd": np.arange(50, dtype=np.uint8)[:, None]}, {}, r"has no image-like array \(numeric arrays: gnd \(50, 1\) uint8\)"),
    ({"a": IMAGES, "b": IMAGES}, {}, r"several image-like arrays: a \(6, 16, 16\), b \(6, 16, 16\); pick one with key"),
    ({"a": IMAGES}, {"key": "fea"}, r"has no numeric array 'fea'; it has: a \(6, 16, 16\) uint8"),
    ({"fea": np.zeros((10, 1200), np.uint8)}, {}, "flat images of 1200 .*not square; give image_shape"),
    ({"fea": np.zeros((16, 16, 16), np.uint8)}, {}, "could be layout NHW or HWN and neighbouring pixels do not tell them apart"),
    ({"fea": np.full((6, 256), 300.0)}, {}, r"values range from 300 to 300; expected \[0, 1\] or \[0, 255\]"),
    ({"fea": np.full((6, 256), -0.5)}, {}, r"values range from -0.5"),
    ({"fea": np.full((6, 256), np.nan)}, {}, "NaN or infinite"),
    ({"fea": np.zeros((6, 256), np.uint8)}, {"layout": "NHW"}, "layout: NHW needs a 3-D array"),
    ({"fea": np.zeros((6, 30, 40), np.uint8)}, {"layout": "NHW"}, "the images are 30x40, not square; set size"),
])
def test_bad_mat_contents(tmp_path, arrays, options, message):
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, arrays)
    with pytest.raises(UserError, match=message) as caught:
        load_images("mat", resolve_options("mat", {"path": str(path), **options}))
    assert "\n" not in str(caught.value)


def synthetic_faces(n: int, size: int) -> np.ndarray:
    from harness.data.synthfaces import generate
    return generate(n, size, seed=3)[0][:, 0].numpy()  # (n, size, size) uint8


@pytest.mark.fault
@pytest.mark.parametrize("n, side", [(400, 64), (400, 32), (1024, 20)])
@pytest.mark.parametrize("layout", ["NF", "FN"])
def test_a_square_by_square_mat_array_is_read_the_way_that_gives_pictures(tmp_path, capsys, n, side, layout):
    """(4096, 400) and (400, 1024): both sides are squares, so the shape alone allows NF and FN; only
    one reading gives pictures (n = 1024 images of 20x20 makes the other reading 400 images of 32x32)."""
    faces = synthetic_faces(n, side)
    flat = column_major(faces)  # (n, side*side)
    scipy.io.savemat(tmp_path / "faces.mat", {"fea": flat if layout == "NF" else flat.T})
    loaded = load_images("mat", resolve_options("mat", {"path": str(tmp_path / "faces.mat")}))
    assert loaded.source["layout"] == layout
    assert np.array_equal(stack(loaded), faces)  # pixel exact and upright
    err = capsys.readouterr().err
    line = next(text for text in err.splitlines() if "read as layout" in text)
    other = "FN" if layout == "NF" else "NF"
    assert re.search(rf"read as layout {layout}: neighbouring pixels correlate 0\.[89]\d as {layout}, -?0\.[0-3]\d as {other}", line)


@pytest.mark.fault
def test_layouts_that_look_alike_are_still_refused(tmp_path):
    noise = np.random.default_rng(5).integers(0, 256, (256, 256), dtype=np.uint8)  # no reading is smoother
    scipy.io.savemat(tmp_path / "noise.mat", {"fea": noise})
    with pytest.raises(UserError, match=r"could be layout NF or FN and neighbouring pixels do not tell them apart "
                                        r"\(they correlate -?0\.\d\d as N?F?N?, -?0\.\d\d as .*\); give layout"):
        load_images("mat", resolve_options("mat", {"path": str(tmp_path / "noise.mat")}))


def test_non_square_images_with_their_shape_and_a_size(tmp_path):
    wide = np.random.default_rng(2).integers(0, 256, (4, 30, 40), dtype=np.uint8)
    path = tmp_path / "wide.mat"
    scipy.io.savemat(path, {"fea": column_major(wide)})
    loaded = load_images("mat", resolve_options("mat", {"path": str(path), "image_shape": [30, 40], "size": 24}))
    assert loaded.images.shape == (4, 1, 24, 24)


def test_unreadable_and_truncated_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("ck", {"path": str(tmp_path / "absent.mat")})
    with pytest.raises(UserError, match="needs the path to a .mat file"):
        load_dataset("ck", {})
    good = tmp_path / "good.mat"
    scipy.io.savemat(good, {"fea": column_major(IMAGES)})
    cut = tmp_path / "cut.mat"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot read .*cut.mat as a MATLAB file .*truncated"):
        load_dataset("ck", {"path": str(cut)})
    (tmp_path / "text.mat").write_text("not a matlab file at all" * 10)
    with pytest.raises(UserError, match="cannot read"):
        load_dataset("ck", {"path": str(tmp_path / "text.mat")})
    v73 = tmp_path / "v73.mat"
    write_mat73(v73, {"fea": column_major(IMAGES)})
    cut73 = tmp_path / "cut73.mat"
    cut73.write_bytes(v73.read_bytes()[:2048])
    with pytest.raises(UserError, match="cannot read .*cut73.mat"):
        load_dataset("ck", {"path": str(cut73)})
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(UserError, match="cannot read .*broken.npz as a .npz file"):
        load_dataset("npz", {"path": str(tmp_path / "broken.npz")})


@pytest.mark.parametrize("options, message", [
    ({"layout": "XYZ"}, "layout: 'XYZ' is not a layout; valid: auto, NHW"),
    ({"order": "K"}, "order: 'K': use 'F'"),
    ({"image_shape": [30]}, r"image_shape: expected \[height, width\]"),
    ({"size": 3}, "size: 3 is not an image size"),
    ({"channels": 3}, "unknown option 'channels' for dataset 'ck'"),
])
def test_bad_array_options_are_refused_before_reading(options, message):
    with pytest.raises(UserError, match=message):
        resolve_options("ck", {"path": "x.mat", **options})


# ---- CelebA ---------------------------------------------------------------------------------------

def celeba_image(index: int) -> Image.Image:
    """178x218 like CelebA: red top half, blue bottom half, a green bar on the left."""
    pixels = np.zeros((218, 178, 3), np.uint8)
    pixels[:109, :, 0] = 200 + index
    pixels[109:, :, 2] = 200
    pixels[:, :30, 1] = 255
    return Image.fromarray(pixels)


def make_celeba(root: Path, n: int = 10, nested: bool = False, corrupt: int = 0, partition: bool = True) -> Path:
    folder = root / "img_align_celeba" / ("img_align_celeba" if nested else "")
    folder.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    for i, name in enumerate(names):
        if i < corrupt:
            (folder / name).write_bytes(b"\xff\xd8\xff\xe0 this is not a whole JPEG")
        else:
            celeba_image(i).save(folder / name, quality=95)
    if partition:
        codes = [0] * (n - 4) + [1, 1, 2, 2]
        (root / "list_eval_partition.txt").write_text("".join(f"{name} {c}\n" for name, c in zip(names, codes)))
    return root


@pytest.mark.parametrize("nested", [False, True])
def test_celeba_layouts_with_the_official_split(tmp_path, nested):
    data = load_dataset("celeba", {"path": str(make_celeba(tmp_path, nested=nested))})
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 2) and data.description["split"] == "official"
    image = data.train[0].float()
    assert image.shape == (3, 64, 64)
    top, bottom = image[:, 5:25, 40:60].mean((1, 2)), image[:, 40:60, 40:60].mean((1, 2))
    assert top[0] > 150 and top[2] < 50 and bottom[2] > 150 and bottom[0] < 50  # red above blue: upright
    assert image[1, 30, 2] > 200 and image[1, 30, 60] < 50  # the green bar stays on the left


def test_celeba_crop_sizes_and_model_ranges(tmp_path):
    data = load_dataset("celeba", {"path": str(make_celeba(tmp_path)), "size": 112})
    assert data.train.shape[1:] == (3, 112, 112)
    x = data.train[:2]
    tanh = to_model_range(x, (-1.0, 1.0))
    assert torch.allclose(tanh, (x.float() / 255 - 0.5) / 0.5)  # ToTensor + Normalize(0.5, 0.5)
    assert tanh.min() >= -1 and tanh.max() <= 1 and to_model_range(x).max() <= 1 and to_model_range(x).min() >= 0
    assert torch.allclose(from_model_range(tanh, (-1.0, 1.0)), x.float() / 255)


def test_celeba_skips_corrupt_files_and_fails_when_all_are(tmp_path, capsys):
    data = load_dataset("celeba", {"path": str(make_celeba(tmp_path / "a", corrupt=2))})
    assert len(data.train) + len(data.val) + len(data.test) == 8 and data.description["skipped"] == 2
    assert "skipped 2 of 10 files" in capsys.readouterr().err
    with pytest.raises(UserError, match="none of the 10 image files"):
        load_dataset("celeba", {"path": str(make_celeba(tmp_path / "b", corrupt=10))})


def test_celeba_without_a_partition_file_is_split_by_seed(tmp_path):
    data = load_dataset("celeba", {"path": str(make_celeba(tmp_path, n=20, partition=False))})
    assert (len(data.train), len(data.val), len(data.test)) == (16, 2, 2) and data.description["split"] == "seeded 0"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no CelebA images under"):
        load_dataset("celeba", {"path": str(tmp_path / "empty")})


# ---- MNIST ----------------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    magic = 0x0800 + array.ndim  # unsigned byte data
    body = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        body = gzip.compress(body)
    path.write_bytes(body)


def make_mnist(root: Path, compress: bool) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(3)
    train, test = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", train, compress)
    write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, 20, dtype=np.uint8), compress)
    write_idx(raw / "t10k-images-idx3-ubyte", test, compress)
    write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 10, dtype=np.uint8), compress)
    return train, test


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path, compress):
    train, test = make_mnist(tmp_path, compress)
    loaded = load_images("mnist", resolve_options("mnist", {"path": str(tmp_path)}))
    assert np.array_equal(stack(loaded), np.concatenate([train, test]))  # row-major, pixel-exact
    assert loaded.split.tolist() == [TRAIN] * 20 + [TEST] * 10 and loaded.label_names == ("digit",)
    data = load_dataset("mnist", {"path": str(tmp_path)})
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 10)
    assert np.array_equal(data.test[:, 0].numpy(), test)
    assert load_dataset("mnist", {"path": str(tmp_path), "size": 32}).train.shape[1:] == (1, 32, 32)


def test_mnist_missing_files_say_where_to_put_them(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(UserError, match=r"no MNIST idx files train-labels-idx1-ubyte\[.gz\], t10k-images.*nothing is downloaded"):
        load_dataset("mnist", {"path": str(tmp_path)})


# ---- image folders ------------------------------------------------------------------------------

def test_image_folder_tree_gray_and_rgb(tmp_path, capsys):
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(gray).save(tmp_path / "a" / "0.png")
    Image.fromarray(rgb).save(tmp_path / "a" / "b" / "1.png")
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / "2.jpg")
    for i in range(3, 12):
        Image.fromarray(gray).save(tmp_path / f"{i}.PNG")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG nope")
    loaded = load_images("folder", resolve_options("folder", {"path": str(tmp_path), "size": 32, "channels": 1}))
    err = capsys.readouterr().err
    assert "skipped 1 of 13 files" in err and "images of 2 sizes" in err
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert loaded.images.shape == (12, 1, 32, 32)
    assert np.array_equal(loaded.images[[p.name for p in files if p.name != "broken.png"].index("0.png"), 0].numpy(), gray)
    rgb_loaded = load_images("folder", resolve_options("folder", {"path": str(tmp_path), "size": 32}))
    index = [p.name for p in files if p.name != "broken.png"].index("1.png")
    assert np.array_equal(rgb_loaded.images[index].numpy(), rgb.transpose(2, 0, 1))  # channels first, upright


def write_png16_rgb(path: Path, image: np.ndarray) -> None:
    """A 16-bit RGB PNG, written by hand: Pillow cannot write one."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.fault
def test_16_bit_pngs_are_scaled_not_saturated(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)  # dark to white
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"  # what the fix is for
    write_png16_rgb(tmp_path / "rgb16.png", np.stack([ramp, ramp[::-1], np.full_like(ramp, 30000)], -1))
    expected = np.round(ramp / 257.0)  # 65535 -> 255: scaled, where Pillow's convert("L") clips at 255
    for channels in (1, 3):
        loaded = load_images("folder", resolve_options("folder", {"path": str(tmp_path), "size": 32, "channels": channels}))
        gray, rgb = (loaded.images[i].numpy().astype(float) for i in range(2))  # sorted: gray16, rgb16
        assert np.abs(gray - expected).max() <= 1 and abs(gray.mean() - 127.5) < 1  # was 254 before the fix
        assert gray.min() == 0 and gray.max() == 255
        if channels == 3:
            assert np.abs(rgb[0] - expected).max() <= 1 and np.abs(rgb[1] - expected[::-1]).max() <= 1
            assert np.abs(rgb[2] - 30000 / 257).max() <= 1


@pytest.mark.fault
def test_images_far_smaller_than_the_size_are_refused_with_both_sizes(tmp_path):
    np.savez(tmp_path / "tiny.npz", images=np.zeros((6, 1, 2, 2), np.uint8))
    with pytest.raises(UserError, match=r"the images are 2x2, too small for size 32 .*at least 16 pixels a side") as caught:
        load_images("npz", resolve_options("npz", {"path": str(tmp_path / "tiny.npz"), "size": 32}))
    assert "\n" not in str(caught.value)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(UserError, match=r"tiny.png: the images are 2x2, too small for size 32"):
        load_images("folder", resolve_options("folder", {"path": str(tmp_path), "size": 32}))
    np.savez(tmp_path / "half.npz", images=np.zeros((6, 1, 16, 16), np.uint8))  # 2x upscaling is allowed
    assert load_images("npz", resolve_options("npz", {"path": str(tmp_path / "half.npz"), "size": 32})).images.shape[-1] == 32


def test_images_without_an_agreed_range_are_refused(tmp_path):
    Image.fromarray(np.full((16, 16), 70000, np.int32), mode="I").save(tmp_path / "deep.tif")
    (tmp_path / "deep.tif").rename(tmp_path / "deep.png")  # a TIFF under a .png name still decodes
    with pytest.raises(UserError, match=r"deep.png: a 32-bit integer image .*save it as 8-bit or 16-bit PNG"):
        load_images("folder", resolve_options("folder", {"path": str(tmp_path), "size": 16}))


def test_image_folder_mistakes(tmp_path):
    with pytest.raises(UserError, match="no .png/.jpg/.jpeg files"):
        load_dataset("folder", {"path": str(tmp_path)})
    with pytest.raises(UserError, match="channels: 2: use 1"):
        load_dataset("folder", {"path": str(tmp_path), "channels": 2})


def test_four_channel_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "rgba.npz", images=np.zeros((6, 4, 16, 16), np.uint8))
    with pytest.raises(UserError, match="cannot read array"):
        load_dataset("npz", {"path": str(tmp_path / "rgba.npz")})
    with pytest.raises(UserError, match="4 channels; the models take 1"):
        load_dataset("npz", {"path": str(tmp_path / "rgba.npz"), "layout": "NCHW"})


# ---- kinds, cache -------------------------------------------------------------------------------

def test_the_kind_of_data_is_inferred_from_the_path(tmp_path):
    scipy.io.savemat(tmp_path / "x.mat", {"fea": IMAGES})
    np.savez(tmp_path / "x.npz", images=IMAGES)
    make_mnist(tmp_path / "m", compress=True)
    make_celeba(tmp_path / "c")
    (tmp_path / "f").mkdir()
    assert [infer_dataset(str(tmp_path / p)) for p in ("x.mat", "x.npz", "m", "c", "f")] == ["mat", "npz", "mnist", "celeba", "folder"]
    (tmp_path / "x.txt").write_text("?")
    with pytest.raises(UserError, match="cannot tell what kind of data"):
        infer_dataset(str(tmp_path / "x.txt"))


def test_decoded_sets_are_cached_by_content_and_options(tmp_path, capsys):
    path, cache = tmp_path / "faces.mat", tmp_path / "cache"
    scipy.io.savemat(path, {"fea": column_major(IMAGES)})
    first = load_images("ck", resolve_options("ck", {"path": str(path)}), cache)
    files = list(cache.glob("ck-*.pt"))
    assert len(files) == 1 and first.source["cache"] == str(files[0])
    again = load_images("ck", resolve_options("ck", {"path": str(path)}), cache)
    assert torch.equal(again.images, first.images) and again.source["cache"] == str(files[0])
    load_images("ck", resolve_options("ck", {"path": str(path), "size": 8}), cache)  # other options: another entry
    scipy.io.savemat(path, {"fea": column_major(255 - IMAGES)})  # other content: another entry
    changed = load_images("ck", resolve_options("ck", {"path": str(path)}), cache)
    assert len(list(cache.glob("ck-*.pt"))) == 3 and np.array_equal(stack(changed), 255 - IMAGES)
    files[0].write_bytes(b"cut short")  # a cache damaged by a crash is rebuilt, not trusted
    scipy.io.savemat(path, {"fea": column_major(IMAGES)})
    rebuilt = load_images("ck", resolve_options("ck", {"path": str(path)}), cache)
    assert np.array_equal(stack(rebuilt), IMAGES) and "ignoring unreadable dataset cache" in capsys.readouterr().err


def test_every_registered_dataset_has_split_options():
    for name in ("synthfaces", "ck", "mat", "npz", "celeba", "mnist", "folder"):
        assert {"seed", "val_fraction", "test_fraction"} <= set(get_dataset(name).all_options)


def test_placement_keeps_splits_and_labels():
    images = torch.zeros(10, 1, 8, 8, dtype=torch.uint8)
    data = ImageSplits(images, images[:2], images[:2], {"train": torch.ones(10, 1)}).place(torch.device("cpu"))
    assert data.resident and data.labels["train"].shape == (10, 1) and data.nbytes == 14 * 64
