import gzip

import pytest
import torch

from dwrprune import DwrpruneError, create_dataset, make_loader
from dwrprune.training.data import read_idx, split_indices


def test_fashion_mnist_idx_splits(fmnist_dir):
    tr = create_dataset("fashion-mnist", "train", data_dir=fmnist_dir, val_fraction=0.1)
    va = create_dataset("fashion-mnist", "val", data_dir=fmnist_dir, val_fraction=0.1)
    te = create_dataset("fashion-mnist", "test", data_dir=fmnist_dir)
    assert (len(tr), len(va), len(te)) == (180, 20, 50)
    assert set(tr.indices).isdisjoint(va.indices)
    x, y = va[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= y < 10
    assert tr.info.num_classes == 10 and tr.info.in_channels == 1


def test_validation_split_is_deterministic():
    a, b = split_indices(1000, 0.1, seed=0), split_indices(1000, 0.1, seed=0)
    assert torch.equal(a[1], b[1]) and len(a[1]) == 100
    assert not torch.equal(a[1], split_indices(1000, 0.1, seed=1)[1])


def test_resolution_resizes_in_pipeline(fmnist_dir):
    va = create_dataset("fashion-mnist", "val", data_dir=fmnist_dir, resolution=21)
    assert va[0][0].shape == (1, 21, 21)


def test_plain_idx_files_are_accepted(tmp_path, fmnist_dir):
    for f in fmnist_dir.iterdir():
        (tmp_path / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
    ds = create_dataset("fashion-mnist", "test", data_dir=tmp_path)
    assert len(ds) == 50


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DwrpruneError, match="apt-get install dataset-fashion-mnist"):
        create_dataset("fashion-mnist", "train", data_dir=tmp_path)
    with pytest.raises(DwrpruneError, match="does not exist"):
        create_dataset("fashion-mnist", "train", data_dir=tmp_path / "nope")


def test_truncated_idx_is_a_clear_error(fmnist_dir):
    p = fmnist_dir / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DwrpruneError, match="truncated"):
        read_idx(p)


@pytest.mark.parametrize("name,fixture,k", [("cifar10", "cifar10_dir", 10),
                                            ("cifar100", "cifar100_dir", 100)])
def test_cifar_pickles(name, fixture, k, request):
    root = request.getfixturevalue(fixture)
    tr = create_dataset(name, "trainval", data_dir=root)
    te = create_dataset(name, "test", data_dir=root, resolution=24)
    assert tr.info.num_classes == k and len(tr) == 100
    assert te[0][0].shape == (3, 24, 24)


def test_cifar_missing(tmp_path):
    with pytest.raises(DwrpruneError, match="data_batch_1"):
        create_dataset("cifar10", "train", data_dir=tmp_path)


def test_imagefolder(imagefolder_dir):
    tr = create_dataset("imagefolder", "train", data_dir=imagefolder_dir, resolution=32)
    te = create_dataset("imagefolder", "test", data_dir=imagefolder_dir, resolution=32)
    assert tr.info.num_classes == 3 and len(te) == 6
    assert te[0][0].shape == (3, 32, 32)


def test_imagefolder_needs_layout(tmp_path):
    with pytest.raises(DwrpruneError, match="train/"):
        create_dataset("imagefolder", "test", data_dir=tmp_path)


def test_synthetic_and_subset():
    ds = create_dataset("synthetic", "train", subset=50, num_classes=4, in_channels=2,
                        native_resolution=12)
    assert len(ds) == 50 and ds[0][0].shape == (2, 12, 12) and ds.info.num_classes == 4
    x, y = next(iter(make_loader(ds, batch_size=8, shuffle=True)))
    assert x.shape == (8, 2, 12, 12)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "mnist", "split": "train"}, "unknown dataset"),
    ({"name": "synthetic", "split": "dev"}, "unknown split"),
    ({"name": "synthetic", "split": "train", "resolution": 0}, "resolution"),
    ({"name": "synthetic", "split": "train", "val_fraction": 1.5}, "val_fraction"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(DwrpruneError, match=match):
        create_dataset(**kwargs)
