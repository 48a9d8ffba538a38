"""MNIST as (image, addend) pairs, held whole on the training device.

Representation
    image   uint8 28x28 on the device; per batch, float 1x28x28 normalised with MNIST's mean/std
    addend  int64 0..9 (the model one-hot encodes it)
    digit   int64 0..9, the label of the image
    sum     int64 0..18 = digit + addend, a class index for the 19-way sum head

Generation
    Training pairs each image with an addend that is a pure function of (seed, epoch, index): every process,
    every resumed run and every device draws the same pair, and each epoch draws fresh addends.
    Evaluation is exhaustive: every image with each of the ten addends, so its numbers carry no sampling noise.
"""

from __future__ import annotations

import errno
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import MNIST
from torchvision.datasets.utils import check_integrity

from adder.distributed import first_failure
from adder.errors import first_line
from adder.model import NUM_ADDENDS

log = logging.getLogger(__name__)

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class DataError(RuntimeError):
    """The MNIST files are missing or damaged; the message says which file and what to do."""


def load_mnist(data_dir: str | Path, train: bool, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one MNIST split, through torchvision.

    torchvision extracts the *.gz archives (after an md5 check) or downloads them; anything that goes wrong
    becomes one DataError that names the folder or file and says what to do.
    """
    raw = Path(data_dir) / "MNIST" / "raw"
    split = "train" if train else "t10k"
    for archive, md5 in MNIST.resources:
        # torchvision would answer a damaged archive with a download attempt; say what is wrong instead.
        unpacked = raw / archive.removesuffix(".gz")
        if not unpacked.exists() and (raw / archive).exists() and not check_integrity(str(raw / archive), md5):
            raise DataError(f"{raw / archive} is damaged (md5 mismatch): delete it so that it is downloaded again")
    extracted = [(raw / archive.removesuffix(".gz")).exists() for archive, _ in MNIST.resources]
    present = all(done or (raw / archive).exists() for done, (archive, _) in zip(extracted, MNIST.resources))
    extracting = present and not all(extracted)  # torchvision will write the extracted files beside the archives
    if not present and not download:
        raise DataError(f"MNIST is not in {raw}: put the four official *-ubyte.gz files there")
    try:
        mnist = MNIST(root=str(data_dir), train=train, download=download)
    except Exception as err:  # torchvision raises RuntimeError, URLError, AssertionError, ValueError...
        reason = first_line(err)
        if not present:
            # torchvision's message lists the mirrors it tried; its last line says why the last one failed.
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            raise DataError(f"MNIST is not in {raw} and downloading it failed ({lines[-1] if lines else reason}). "
                            f"Without network, copy the four official *-ubyte.gz files there.") from err
        if extracting and isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS,
                                                                     errno.ENOSPC):
            # torchvision extracts the archives beside themselves: nothing is damaged, the folder refused a write.
            advice = ("the extracted files need 55 MB: free some space, or copy the four *-ubyte.gz files into a "
                      "DIR/MNIST/raw/ on another disk" if err.errno == errno.ENOSPC else
                      "the folder must be writable; or copy the four *-ubyte.gz files into a writable DIR/MNIST/raw/")
            raise DataError(f"cannot extract the MNIST archives in {raw} ({err.strerror}: {err.filename}): {advice} "
                            f"and pass --data_dir DIR") from err
        raise DataError(f"cannot read MNIST {split} files in {raw} ({reason}): delete the damaged "
                        f"{split}-*-ubyte files there so that they are extracted or downloaded again") from err
    images, labels = mnist.data, mnist.targets  # torchvision has checked the types: uint8, and int64 from uint8
    expected = 60_000 if train else 10_000
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(
            f"{raw / f'{split}-images-idx3-ubyte'}: expected images of 28x28 matching the "
            f"{len(labels)} labels, got {tuple(images.shape)}; delete the file to re-extract it."
        )
    if len(labels) and labels.max() > 9:
        raise DataError(f"{raw / f'{split}-labels-idx1-ubyte'}: labels outside 0..9; delete it to re-extract it.")
    if len(images) != expected:
        # Not an error (tests use small files), but a real user should notice a partial data set.
        log.warning(f"note: MNIST {split} split in {raw} has {len(images)} images (the official one has {expected})")
    return images, labels


def load_mnist_on_every_process(accelerator, data_dir: str | Path,
                                *splits: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """load_mnist for each of `splits` ("train" or "test") on every process of `accelerator`: the main
    process first (it downloads and extracts), then each other node's first process (no shared disk needed),
    then the others, which only read. If any process fails, every process raises a DataError with the first
    failing process's message."""
    if not set(splits) <= {"train", "test"}:
        raise ValueError(f"MNIST's splits are 'train' and 'test', not {splits}")
    loaded, failure = [], None
    with accelerator.main_process_first(), accelerator.local_main_process_first():
        try:  # caught inside, so that every process still meets the others at both barriers
            loaded = [load_mnist(data_dir, train=split == "train", download=accelerator.is_local_main_process)
                      for split in splits]
        except (DataError, OSError) as err:
            failure = str(err)
    failure = first_failure(accelerator, failure)
    if failure:
        raise DataError(failure)
    return loaded


def split_train_val(
    images: torch.Tensor, labels: torch.Tensor, val_size: int, split_seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Hold out `val_size` random training images for model selection; the split depends only on split_seed."""
    if not 0 < val_size < len(images):
        raise ValueError(f"val_size must be between 1 and {len(images) - 1}, got {val_size}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(split_seed))
    val, train = order[:val_size], order[val_size:]
    return (images[train], labels[train]), (images[val], labels[val])


# splitmix64 constants, written as the signed int64 values torch stores.
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _wrap(x):
    """Python ints wrap to the signed int64 range, as int64 tensors do by themselves."""
    return x if isinstance(x, torch.Tensor) else (x + 2**63) % 2**64 - 2**63


def _shift_right(x, bits: int):
    """Logical right shift of int64 values (>> is arithmetic on tensors and on negative ints)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x):
    """splitmix64's mixing function, on int64 tensors or on Python ints, with the same bits for both."""
    x = _wrap(x + _GOLDEN)
    x = _wrap((x ^ _shift_right(x, 30)) * _MIX1)
    x = _wrap((x ^ _shift_right(x, 27)) * _MIX2)
    return x ^ _shift_right(x, 31)


def counter_hash(index: torch.Tensor, *keys: int | torch.Tensor, draws: int | None = None) -> torch.Tensor:
    """A 53-bit pseudo-random integer per index, a pure function of (keys, index) on any device.

    Counter-based rather than a stateful generator: the value for one sample does not depend on which
    process draws it, in which order, or whether the run was resumed. Keys that are Python ints are mixed on
    the host (no kernels); a key may also be a 0-d int64 tensor on the device, which a CUDA graph reads in
    place (adder/step.py), with the same result. The draws and the per-index mixing run on the device, so
    nothing is copied from the host. With `draws`, returns (draws, *index.shape): draw k is keyed by (*keys, k).
    """
    h = 0
    for key in keys:
        h = _splitmix64(_wrap(h + key))
    if draws is not None:
        h = _splitmix64(torch.arange(draws, device=index.device) + h).view(draws, *[1] * index.dim())
    return _shift_right(_splitmix64(index.long() + h), 11)


def counter_uniform(index: torch.Tensor, *keys: int | torch.Tensor, draws: int | None = None) -> torch.Tensor:
    """Uniform floats, one per index (and draw), from counter_hash: [0, 1) drawn in float64, so 1.0 itself
    only where float32 rounds up (about once in 2**25 draws)."""
    return counter_hash(index, *keys, draws=draws).double().div_(2.0**53).float()


STREAM_ADDEND, STREAM_AUGMENT = 0, 1


def train_addends(index: torch.Tensor, seed: int, epoch: int | torch.Tensor) -> torch.Tensor:
    """The addend (0..9) paired with training image `index` in `epoch`."""
    return counter_hash(index, seed, epoch, STREAM_ADDEND) % NUM_ADDENDS


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [0, 1], where augmentation works."""
    return images_u8.unsqueeze(1).float() / 255.0


def standardize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> MNIST's mean 0 and standard deviation 1, as every MNIST model sees its input."""
    return (images - MNIST_MEAN) / MNIST_STD


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28), normalised like every MNIST model."""
    return standardize(to_unit(images_u8))


def random_warp(images: torch.Tensor, index: torch.Tensor, seed: int, epoch: int | torch.Tensor, rotate: float,
                shift: float, zoom: float) -> torch.Tensor:
    """Batched small rotations, shifts and zooms on the device, drawn per (seed, epoch, index): up to `rotate`
    degrees either way, `shift` image widths in each direction, `zoom` (a fraction) in or out; the flags of
    the same names. Digits are never flipped (a flipped 2 is not a 2). Works on images in [0, 1] so that the
    zero padding is the black background.
    """
    u = counter_uniform(index, seed, epoch, STREAM_AUGMENT, draws=4) * 2 - 1  # (4, B), each in [-1, 1]
    angle = u[0] * math.radians(rotate)
    scale = 1 + u[1] * zoom
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # affine_grid works in [-1, 1] coordinates, so a shift of `shift` image widths is 2 * shift.
    theta = torch.stack(
        [torch.stack([cos, -sin, u[2] * 2 * shift], -1), torch.stack([sin, cos, u[3] * 2 * shift], -1)], -2
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class DeviceMNIST:
    """One MNIST split as two device tensors; batches are made by indexing, with no per-sample Python."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device | str = "cpu"):
        self.images = images.to(device)  # uint8 (N, 28, 28): 43 MB for the 55,000 training images
        self.labels = labels.to(device)
        self.device = self.images.device

    def __len__(self) -> int:
        return len(self.labels)

    def train_batch(self, index: torch.Tensor, seed: int, epoch: int | torch.Tensor, augment: dict | None = None):
        """(image, addend, digit, sum) for training images `index` in `epoch` (an int, or a 0-d int64 tensor
        on the device: see counter_hash)."""
        images = to_unit(self.images[index])
        if augment:
            images = random_warp(images, index, seed, epoch, **augment)
        images = standardize(images)
        digits = self.labels[index]
        addends = train_addends(index, seed, epoch)
        return images, addends, digits, digits + addends

    def eval_batch(self, index: torch.Tensor):
        """(image, all ten addends (B, 10), digit): the exhaustive pairs of images `index`."""
        addends = torch.arange(NUM_ADDENDS, device=self.device).expand(len(index), NUM_ADDENDS)
        return normalize(self.images[index]), addends, self.labels[index]


def train_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int,
                  device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """This process's index batches for one epoch: every image exactly once across all processes.

    One shuffle per (seed, epoch), the same on every process, is cut into global batches of
    batch_size * world_size, and each global batch into world_size shards that differ by at most one image.
    Every process therefore takes the same number of steps (DDP needs that) and nothing is padded or
    dropped. The epoch's last global batch is the remainder (216 images of 55,000 at batch 512), merged into
    the one before when it would leave a process fewer than two images. The shuffle is drawn on the CPU
    (the same on every device) and moved to `device` once per epoch. (A DataLoader prepared by accelerate
    would instead pad the last batch with repeated images, so that some images would be seen twice per epoch.)
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).to(device)
    global_batches = list(order.split(batch_size * world_size))
    if len(global_batches) > 1 and len(global_batches[-1]) < 2 * world_size:
        # Too small to give every process at least two images: merged, so that no process takes an empty
        # step or one whose gradient comes from a single image.
        global_batches[-2:] = [torch.cat(global_batches[-2:])]
    return [batch.tensor_split(world_size)[rank] for batch in global_batches]


def eval_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[torch.Tensor]:
    """This process's contiguous shard of 0..n-1, in batches: disjoint, nothing padded or repeated."""
    return list(torch.arange(n).tensor_split(world_size)[rank].split(batch_size))
