import errno
import gzip
import re
import shutil

import pytest
import torch
import torchvision.datasets.utils
from torchvision.datasets import MNIST

from adder.data import (STREAM_ADDEND, DataError, DeviceMNIST, counter_hash, eval_batches, load_mnist, random_warp,
                        split_train_val, train_addends, train_batches)
from conftest import make_mnist_dir, write_idx

PINNED_ADDENDS = [6, 7, 3, 1, 1, 7, 7, 4, 5, 2, 3, 9]


def test_loads_idx_files_through_torchvision(tmp_path):
    make_mnist_dir(tmp_path, n_train=30, n_test=7)
    images, labels = load_mnist(tmp_path, train=True, download=False)
    assert images.shape == (30, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (30,) and labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() <= 9
    test_images, _ = load_mnist(tmp_path, train=False, download=False)
    assert len(test_images) == 7


def test_extracts_and_verifies_the_official_archives(real_mnist):
    images, labels = load_mnist(real_mnist, train=False, download=True)  # md5-checked gz, extracted locally
    assert images.shape == (10_000, 28, 28)
    assert torch.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_missing_data_names_the_folder(tmp_path):
    with pytest.raises(DataError, match=f"MNIST is not in {tmp_path / 'MNIST' / 'raw'}"):
        load_mnist(tmp_path, train=True, download=False)


def test_missing_data_and_no_network_is_a_clear_error(tmp_path, monkeypatch):
    # Port 9 on this machine refuses connections: a network that is down, without depending on the real one.
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError, match="downloading it failed"):
        load_mnist(tmp_path, train=True, download=True)


def test_truncated_image_file_is_a_clear_error(tmp_path):
    make_mnist_dir(tmp_path, n_train=30, n_test=7)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="cannot read MNIST train files"):
        load_mnist(tmp_path, train=True, download=False)


def test_wrong_magic_number_is_a_clear_error(tmp_path):
    make_mnist_dir(tmp_path, n_train=30, n_test=7)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x07\x03" + path.read_bytes()[4:])
    with pytest.raises(DataError, match="cannot read MNIST train files"):
        load_mnist(tmp_path, train=True, download=False)


def test_wrong_shape_is_a_clear_error(tmp_path):
    make_mnist_dir(tmp_path, n_train=30, n_test=7)
    write_idx(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte", torch.zeros(30, 20, 20).numpy())
    with pytest.raises(DataError, match="train-images-idx3-ubyte: expected images of 28x28"):
        load_mnist(tmp_path, train=True, download=False)


def test_corrupted_archive_is_refused_without_network(tmp_path, real_mnist):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(real_mnist / "MNIST" / "raw" / name, raw / name)
    damaged = raw / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(gzip.compress(b"not mnist"))  # a valid gzip with the wrong md5
    with pytest.raises(DataError, match=f"{damaged} is damaged"):
        load_mnist(tmp_path, train=False, download=True)  # refused before any download attempt


def test_a_folder_that_refuses_the_extraction_is_named_not_called_damaged(tmp_path, real_mnist, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for archive in (real_mnist / "MNIST" / "raw").glob("*.gz"):
        shutil.copyfile(archive, raw / archive.name)

    def read_only(from_path, to_path=None, remove_finished=False):  # as a read-only folder answers (root may write)
        raise PermissionError(errno.EACCES, "Permission denied", str(from_path).removesuffix(".gz"))

    monkeypatch.setattr(torchvision.datasets.utils, "extract_archive", read_only)
    with pytest.raises(DataError, match=re.escape(f"cannot extract the MNIST archives in {raw} (Permission denied: "
                                                  f"{raw / 'train-images-idx3-ubyte'}): the folder must be writable")):
        load_mnist(tmp_path, train=False, download=True)


def test_validation_split_is_fixed_and_disjoint():
    images = torch.arange(100).view(100, 1, 1).expand(100, 28, 28).to(torch.uint8)
    labels = torch.arange(100) % 10
    (tr_a, _), (va_a, _) = split_train_val(images, labels, 20)
    (tr_b, _), (va_b, _) = split_train_val(images, labels, 20)
    assert torch.equal(va_a, va_b)
    ids_train, ids_val = set(tr_a[:, 0, 0].tolist()), set(va_a[:, 0, 0].tolist())
    assert len(ids_val) == 20 and not ids_train & ids_val and len(ids_train | ids_val) == 100
    with pytest.raises(ValueError, match="val_size"):
        split_train_val(images, labels, 100)


def test_addend_is_a_function_of_seed_epoch_index():
    index = torch.arange(100_000)
    addends = train_addends(index, seed=3, epoch=2)
    assert addends.dtype == torch.int64 and addends.min() == 0 and addends.max() == 9
    # The same (seed, epoch, index) gives the same addend whichever subset or order a process asks for.
    subset = torch.tensor([99_999, 5, 17, 5])
    assert torch.equal(train_addends(subset, seed=3, epoch=2), addends[subset])
    assert not torch.equal(train_addends(index, seed=3, epoch=3), addends)  # fresh each epoch
    assert not torch.equal(train_addends(index, seed=4, epoch=2), addends)
    # Uniform over 0..9: chi-square with 9 degrees of freedom, 99.9th percentile is 27.9.
    counts = torch.bincount(addends, minlength=10).double()
    assert ((counts - 10_000) ** 2 / 10_000).sum() < 27.9


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_training_sees_every_image_once_per_epoch(world_size):
    n, batch_size = 1001, 64
    shards = [train_batches(n, batch_size, seed=0, epoch=1, rank=r, world_size=world_size) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1, "every process must take the same number of steps"
    seen = torch.cat([b for shard in shards for b in shard])
    assert sorted(seen.tolist()) == list(range(n))
    assert min(len(b) for shard in shards for b in shard) >= 2  # BatchNorm needs two samples
    other_epoch = torch.cat(train_batches(n, batch_size, seed=0, epoch=2, rank=0, world_size=1))
    assert not torch.equal(other_epoch, torch.cat(train_batches(n, batch_size, 0, 1, 0, 1)))


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_evaluation_shards_are_disjoint_and_complete(world_size):
    shards = [torch.cat(eval_batches(51, 8, r, world_size)) for r in range(world_size)]
    assert sorted(torch.cat(shards).tolist()) == list(range(51))


def test_batches_pair_each_image_with_its_label_and_sum(tiny_mnist):
    images, labels = load_mnist(tiny_mnist, train=True, download=False)
    data = DeviceMNIST(images, labels)
    index = torch.tensor([3, 0, 7])
    x, addends, digits, sums = data.train_batch(index, seed=0, epoch=1)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(digits, labels[index]) and torch.equal(sums, digits + addends)
    x_eval, all_addends, eval_digits = data.eval_batch(index)
    assert torch.equal(all_addends, torch.arange(10).expand(3, 10)) and torch.equal(eval_digits, labels[index])
    assert torch.allclose(x_eval, x)  # same normalisation on both paths


def test_augmentation_is_deterministic_and_identity_when_off():
    images = torch.rand(8, 1, 28, 28)
    index = torch.arange(8)
    a = random_warp(images, index, seed=0, epoch=1, rotate=15, shift=0.1, zoom=0.1)
    b = random_warp(images, index, seed=0, epoch=1, rotate=15, shift=0.1, zoom=0.1)
    assert torch.equal(a, b) and not torch.allclose(a, images)
    same = random_warp(images, index, seed=0, epoch=1, rotate=0, shift=0, zoom=0)
    assert torch.allclose(same, images, atol=1e-5)


def splitmix64(state: int) -> int:
    """Vigna's splitmix64 output for `state`, in plain unsigned Python ints: the reference counter_hash follows."""
    z = (state + 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def test_addends_are_pinned():
    # The pairs a seed gives are part of a run's record: a change here would silently change every result.
    assert train_addends(torch.arange(12), seed=42, epoch=1).tolist() == PINNED_ADDENDS
    # And they are splitmix64's (checked against its published first output): keys folded in, then the index.
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    key = 0
    for part in (42, 1, STREAM_ADDEND):  # seed, epoch, stream
        key = splitmix64((key + part) % 2**64)
    assert [(splitmix64(i + key) >> 11) % 10 for i in range(12)] == PINNED_ADDENDS


def test_several_draws_equal_separately_keyed_draws():
    index = torch.arange(50)
    many = counter_hash(index, 7, 3, draws=4)
    assert many.shape == (4, 50)
    for k in range(4):
        assert torch.equal(many[k], counter_hash(index, 7, 3, k))


def test_an_epoch_held_in_a_tensor_gives_the_same_batch(tiny_mnist):
    # A CUDA graph reads the epoch from a tensor (adder/step.py): same addends, same augmentation.
    data = DeviceMNIST(*load_mnist(tiny_mnist, train=True, download=False))
    index = torch.randperm(len(data))[:64]
    augment = {"rotate": 10, "shift": 0.1, "zoom": 0.1}
    for epoch in (1, 17):
        by_int = data.train_batch(index, seed=42, epoch=epoch, augment=augment)
        by_tensor = data.train_batch(index, seed=42, epoch=torch.tensor(epoch), augment=augment)
        assert all(torch.equal(a, b) for a, b in zip(by_int, by_tensor))
