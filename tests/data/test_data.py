"""Data sources: CIFAR pickles (read safely), CIFAR-10-C arrays, image folders, digits, specs."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rws.data import (
    ImageDataset,
    Split,
    cifar_c_corruptions,
    load_cifar_c,
    load_dataset,
    load_digits,
    load_image_folder,
)
from rws.data.types import stratified_holdout
from rws.errors import (
    InputFileError,
    MalformedInputError,
    UnknownNameError,
    UnsafeInputError,
    UsageError,
)

# --- fake CIFAR folders in the released layout ------------------------------------------------


def _images(n: int, start: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 rows (n, 3072), the first byte tagging each image with a unique number."""
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(start, start + n) % 256
    return data


def _dump(path: Path, obj: object, protocol: int) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def make_cifar10(root: Path, *, per_class: int = 2, protocol: int = 2) -> dict[str, np.ndarray]:
    """Five train batches of ``10 * per_class`` images, a test batch and meta, with bytes keys."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    n = 10 * per_class
    for i in range(1, 6):
        data, labels = _images(n, (i - 1) * n, rng), [j % 10 for j in range(n)]
        batch = {b"batch_label": b"training batch", b"data": data, b"labels": labels}
        _dump(root / f"data_batch_{i}", batch, protocol)
        xs.append(data)
        ys.append(labels)
    test = _images(10, 200, rng)
    test_labels = list(range(10))
    _dump(root / "test_batch", {b"data": test, b"labels": test_labels}, protocol)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(root / "batches.meta", {b"label_names": names, b"num_vis": 3072}, protocol)
    return {
        "train_x": np.concatenate(xs),
        "train_y": np.concatenate(ys),
        "test_x": test,
        "test_y": np.array(test_labels),
    }


def _as_uint8_rows(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, 32, 32) in [0, 1] → the released uint8 rows (N, 3072)."""
    return (x * 255).round().to(torch.uint8).reshape(len(x), -1).numpy()


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_reads_back_exactly(tmp_path: Path, protocol: int) -> None:
    ref = make_cifar10(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = load_dataset(f"cifar10:{tmp_path}")  # the parent folder is accepted too
    assert isinstance(ds, ImageDataset) and ds.num_classes == 10
    assert ds.classes[:3] == ("airplane", "automobile", "bird")
    assert ds.test.x.dtype == torch.float32 and ds.test.x.shape == (10, 3, 32, 32)
    assert np.array_equal(_as_uint8_rows(ds.test.x), ref["test_x"])
    assert ds.test.y.tolist() == ref["test_y"].tolist()
    assert (len(ds.train), len(ds.val)) == (90, 10)  # 10 % of every class held out
    assert sorted(ds.val.y.tolist()) == list(range(10))
    rows = {int(r[0]): r for r in ref["train_x"]}
    seen = []
    for split in (ds.train, ds.val):
        for row, label in zip(_as_uint8_rows(split.x), split.y.tolist(), strict=True):
            tag = int(row[0])
            assert np.array_equal(row, rows[tag]) and label == ref["train_y"][tag]
            seen.append(tag)
    assert sorted(seen) == list(range(100))  # disjoint, complete
    again = load_dataset(f"cifar10:{tmp_path}")
    assert torch.equal(again.val.x, ds.val.x)  # the validation split is fixed


def test_cifar10_written_by_numpy_1x_and_resized(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    for f in tmp_path.iterdir():  # the global numpy 1.x writes (and the released files hold)
        f.write_bytes(f.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in (tmp_path / "test_batch").read_bytes()
    ds = load_dataset(f"cifar10:{tmp_path}", size=16)
    assert ds.train.x.shape == (90, 3, 16, 16)
    assert ds.train.x.min() >= 0.0 and ds.train.x.max() <= 1.0


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train, train_y = _images(300, 0, rng), [i % 100 for i in range(300)]
    test, test_y = _images(100, 0, rng), list(range(100))
    coarse = [i % 20 for i in range(300)]
    _dump(
        tmp_path / "train", {b"data": train, b"fine_labels": train_y, b"coarse_labels": coarse}, 2
    )
    _dump(tmp_path / "test", {b"data": test, b"fine_labels": test_y, b"coarse_labels": test_y}, 2)
    _dump(tmp_path / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, 2)
    ds = load_dataset(f"cifar100:{tmp_path}")
    assert ds.num_classes == 100 and ds.classes[99] == "c99"
    assert (len(ds.train), len(ds.val), len(ds.test)) == (200, 100, 100)
    assert np.array_equal(_as_uint8_rows(ds.test.x), test)
    assert ds.test.y.tolist() == test_y


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path, protocol: int) -> None:
    make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = {b"data": _RunsCommand(marker), b"labels": [0]}
    _dump(tmp_path / "data_batch_2", batch, protocol)
    with pytest.raises(
        UnsafeInputError, match=r"data_batch_2: the pickle refers to posix\.system"
    ) as e:
        load_dataset(f"cifar10:{tmp_path}")
    assert e.value.exit_code == 5
    assert not marker.exists()
    _dump(tmp_path / "data_batch_2", [_CallsEval()], protocol)
    with pytest.raises(UnsafeInputError, match=r"refers to (__builtin__|builtins)\.eval"):
        load_dataset(f"cifar10:{tmp_path}")


def test_codecs_other_than_latin1_are_refused(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    raw = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(raw.replace(b"latin1", b"rot_13", 1))
    with pytest.raises(UnsafeInputError, match=r"test_batch: the pickle calls _codecs\.encode"):
        load_dataset(f"cifar10:{tmp_path}")


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (
            lambda: {b"data": np.zeros((4, 1000), np.uint8), b"labels": [0] * 4},
            "shape \\(4, 1000\\)",
        ),
        (lambda: {b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, "must be a uint8"),
        (lambda: {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "4 images but 3"),
        (lambda: {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "outside 0..9"),
        (lambda: {b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, "integers"),
        (lambda: {b"labels": [0]}, "no 'data' entry"),
        (lambda: [1, 2, 3], "expected a pickled dict, found list"),
    ],
)
def test_misshaped_batches_name_the_file(tmp_path: Path, batch, message: str) -> None:
    make_cifar10(tmp_path)
    _dump(tmp_path / "data_batch_4", batch(), 2)
    with pytest.raises(MalformedInputError, match=f"data_batch_4: .*{message}") as e:
        load_dataset(f"cifar10:{tmp_path}")
    assert e.value.exit_code == 3


@pytest.mark.parametrize("keep", [0, 1, 100, -1])
def test_truncated_pickle_names_the_file(tmp_path: Path, keep: int) -> None:
    make_cifar10(tmp_path)
    path = tmp_path / "data_batch_3"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(MalformedInputError, match="data_batch_3: not a readable pickle"):
        load_dataset(f"cifar10:{tmp_path}")


def test_missing_cifar_files(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no CIFAR-10 python-version files here"):
        load_dataset(f"cifar10:{tmp_path}")
    make_cifar10(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(InputFileError, match="data_batch_5: no such file"):
        load_dataset(f"cifar10:{tmp_path}")
    with pytest.raises(InputFileError, match="missing: no such directory"):
        load_dataset(f"cifar100:{tmp_path / 'missing'}")


# --- CIFAR-10-C ---------------------------------------------------------------------------------


@pytest.fixture
def cifar_c(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(5 * 4, 32, 32, 3), dtype=np.uint8)  # 4 per severity
    labels = np.tile(np.array([3, 1, 4, 1], dtype=np.uint8), 5)
    np.save(tmp_path / "fog.npy", images)
    np.save(tmp_path / "snow.npy", images[::-1].copy())
    np.save(tmp_path / "labels.npy", labels)
    return tmp_path, images, labels


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_cifar_c_reads_severity_block_exactly(cifar_c, severity: int) -> None:
    root, images, labels = cifar_c
    split = load_cifar_c(root, "fog", severity)
    assert isinstance(split, Split) and split.x.shape == (4, 3, 32, 32)
    rows = slice(4 * (severity - 1), 4 * severity)
    back = (split.x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(back, images[rows])
    assert split.y.dtype == torch.int64 and split.y.tolist() == labels[rows].tolist()
    assert load_cifar_c(root, "fog", severity, size=8).x.shape == (4, 3, 8, 8)
    assert cifar_c_corruptions(root) == ["fog", "snow"]


def test_cifar_c_bad_arguments(cifar_c) -> None:
    root = cifar_c[0]
    for severity in (0, 6, 2.0, True):
        with pytest.raises(
            UsageError, match=f"severity must be an integer from 1 to 5, got {severity!r}"
        ):
            load_cifar_c(root, "fog", severity)
    assert load_cifar_c(root, "fog", np.int64(2)).x.shape == (4, 3, 32, 32)  # numpy integers too
    for name in ("../fog", "labels", ""):
        with pytest.raises(UsageError, match="is not a corruption name"):
            load_cifar_c(root, name, 1)
    with pytest.raises(
        InputFileError, match=r"frost.npy: no such corruption array \(found: fog, snow"
    ):
        load_cifar_c(root, "frost", 1)


def test_cifar_c_malformed_arrays_name_the_file(cifar_c) -> None:
    root, images, _ = cifar_c
    data = (root / "fog.npy").read_bytes()
    (root / "fog.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(MalformedInputError, match=r"fog\.npy: truncated: .* the header promises"):
        load_cifar_c(root, "fog", 1)
    (root / "fog.npy").write_bytes(b"this is not an array")
    with pytest.raises(MalformedInputError, match=r"fog\.npy: not a \.npy array"):
        load_cifar_c(root, "fog", 1)
    np.save(root / "fog.npy", images[..., 0])
    with pytest.raises(MalformedInputError, match=r"fog.npy: expected uint8 \(N, H, W, 3\)"):
        load_cifar_c(root, "fog", 1)
    np.save(root / "fog.npy", images.astype(np.float32))
    with pytest.raises(MalformedInputError, match="found float32"):
        load_cifar_c(root, "fog", 1)
    np.save(root / "fog.npy", images[:19])
    with pytest.raises(MalformedInputError, match="19 images is not 5 equal severity blocks"):
        load_cifar_c(root, "fog", 1)
    np.save(root / "labels.npy", np.zeros(7, np.uint8))
    with pytest.raises(MalformedInputError, match=r"labels\.npy: expected 20 integer labels"):
        load_cifar_c(root, "snow", 1)


def test_cifar_c_object_array_is_refused(cifar_c) -> None:
    root = cifar_c[0]
    np.save(root / "fog.npy", np.array([_CallsEval()], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeInputError, match=r"fog\.npy: holds Python objects"):
        load_cifar_c(root, "fog", 1)


# --- image folders (scikit-image sample photos) -------------------------------------------------

PHOTOS = {"astronaut": "astronaut.png", "camera": "camera.png", "cat": "chelsea.png"}


def _photo_crops(name: str) -> list[Image.Image]:
    import skimage

    photo = Image.open(Path(skimage.__file__).parent / "data" / PHOTOS[name])
    w, h = photo.size
    boxes = [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h)]
    boxes += [(w // 2, h // 2, w, h), (w // 4, h // 4, 3 * w // 4, 3 * h // 4)]
    return [photo.crop(b) for b in boxes]


def _expected_pixels(im: Image.Image, size: int) -> bytes:
    return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)).tobytes()


def _check_labels(ds: ImageDataset, expected: dict[bytes, str]) -> int:
    count = 0
    for split in (ds.train, ds.val, ds.test):
        pixels = (split.x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for img, label in zip(pixels, split.y.tolist(), strict=True):
            assert expected[img.tobytes()] == ds.classes[label]
            count += 1
    return count


def test_image_folder_from_sample_photos(tmp_path: Path) -> None:
    expected = {}
    for name in PHOTOS:
        (tmp_path / name).mkdir()
        for i, crop in enumerate(_photo_crops(name)):
            crop.save(tmp_path / name / f"{i}.{'jpg' if name == 'cat' else 'png'}")
            reread = Image.open(tmp_path / name / f"{i}.{'jpg' if name == 'cat' else 'png'}")
            expected[_expected_pixels(reread, 24)] = name
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()
    ds = load_dataset(f"folder:{tmp_path}", size=24)
    assert ds.classes == ("astronaut", "camera", "cat") and ds.num_classes == 3
    assert ds.train.x.shape[1:] == (3, 24, 24) and ds.train.x.dtype == torch.float32
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 3)  # per class: 3 / 1 / 1
    assert _check_labels(ds, expected) == 15
    grey = ds.train.x[ds.train.y == ds.classes.index("camera")]  # a greyscale PNG -> 3 channels
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    colour = ds.train.x[ds.train.y == ds.classes.index("astronaut")]
    assert not torch.equal(colour[:, 0], colour[:, 1])


def test_image_folder_with_train_and_test_dirs(tmp_path: Path) -> None:
    expected = {}
    for split, (lo, hi) in {"train": (0, 4), "test": (4, 5)}.items():
        for name in ("astronaut", "cat"):
            (tmp_path / split / name).mkdir(parents=True)
            for i, crop in enumerate(_photo_crops(name)[lo:hi]):
                crop.save(tmp_path / split / name / f"{i}.png")
                expected[_expected_pixels(crop, 16)] = name
    ds = load_image_folder(tmp_path, size=16, val_fraction=0.25)
    assert ds.classes == ("astronaut", "cat")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 2, 2)
    assert _check_labels(ds, expected) == 10
    (tmp_path / "test" / "dog").mkdir()
    with pytest.raises(MalformedInputError, match=r"test: class folders \['dog'\] are not among"):
        load_image_folder(tmp_path)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "a").mkdir()
    with pytest.raises(InputFileError, match="no image files in its class folders"):
        load_dataset(f"folder:{tmp_path}")
    _photo_crops("camera")[0].save(tmp_path / "a" / "good.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(MalformedInputError, match=r"broken\.png: not a readable image"):
        load_dataset(f"folder:{tmp_path}")


# --- digits, splits and specs -------------------------------------------------------------------


def test_digits_splits_are_fixed_and_partition_the_data() -> None:
    from sklearn.datasets import load_digits as sk_digits

    ds = load_digits()
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1077, 270, 450)
    assert ds.train.x.shape == (1077, 3, 32, 32) and ds.train.x.dtype == torch.float32
    assert ds.classes == tuple("0123456789")
    # Every image lands in exactly one split: the splits partition the 1,797 (as a multiset).
    small = load_digits(size=8)
    raw = sk_digits()
    key = lambda img: np.round(img * 16).astype(np.uint8).tobytes()  # noqa: E731
    got = Counter(key(x[0].numpy()) for s in (small.train, small.val, small.test) for x in s.x)
    assert got == Counter(key(img / 16.0) for img in raw.images)
    again = load_digits()
    assert torch.equal(again.val.x, ds.val.x) and torch.equal(again.test.y, ds.test.y)


def test_stratified_holdout_is_seeded_disjoint_and_per_class() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 30, 1])
    keep, held = stratified_holdout(labels, 0.2, seed=3)
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels)))
    assert np.bincount(labels[held], minlength=4).tolist() == [2, 4, 6, 0]
    assert np.array_equal(stratified_holdout(labels, 0.2, seed=3)[1], held)
    assert not np.array_equal(stratified_holdout(labels, 0.2, seed=4)[1], held)


def test_dataset_specs() -> None:
    with pytest.raises(
        UnknownNameError, match="unknown dataset 'imagenet:/x'; choose one of: cifar100:DIR, "
    ):
        load_dataset("imagenet:/x")
    with pytest.raises(UsageError, match="give a directory, as in cifar10:path/to/cifar10"):
        load_dataset("cifar10")
    with pytest.raises(UsageError, match="'digits' is built in and takes no directory"):
        load_dataset("digits:/x")
    assert load_dataset("digits", size=16).test.x.shape[-1] == 16


def test_old_imports_keep_working() -> None:
    from rws.data.digits import ImageDataset as OldDataset
    from rws.data.digits import Split as OldSplit

    assert OldDataset is ImageDataset and OldSplit is Split
