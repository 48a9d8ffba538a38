"""Your own picture of a digit -> a 28x28 digit as MNIST made them, so that the model reads it as it read MNIST.

A picture of any size, any PIL mode (grayscale, RGB, transparent, palette, 16-bit), a drawing or a photo of
ink on paper, goes through what MNIST's own preprocessing did to its digits (see `to_mnist`).

    from adder.digit_image import read_image
    digit = read_image("my_digit.png")          # uint8 (28, 28), white digit on black, like one MNIST image
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageOps

SIZE, BOX = 28, 20  # MNIST: a 28x28 field, the digit fitted into a 20x20 box within it
MAX_PIXELS = 4000 * 4000  # more is a scene or a scan of a page, not a picture of one digit
MIN_CONTRAST = 0.15  # ink differs from its paper by at least this part of the brightness range (38 of 255)
BORDER = 0.02  # the outermost 2 % of rows and columns show the paper's colour (light or dark)
# Stroke widths in pixels of the 28x28 field, measured on MNIST's 10,000 test digits with _stroke_width: the
# median is 2.0, and 1 in 200 is thinner than 1.0.
MNIST_STROKE, THINNEST_STROKE = 2.0, 1.0


class DigitImageError(ValueError):
    """A picture that cannot become a digit; the message says why."""


def image_files(paths: list[str | Path]) -> list[Path]:
    """The given files, and for each folder the image files in it (by extension, sorted by name)."""
    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in extensions)
            except OSError as err:
                raise DigitImageError(f"{path}: cannot list the folder ({err.strerror})") from err
            if not found:
                raise DigitImageError(f"{path}: folder holds no image files")
            files += found
        else:
            files.append(path)
    return files


def read_image(path: str | Path) -> torch.Tensor:
    """The picture at `path` as an MNIST digit: uint8 (28, 28) (see `to_mnist`).

    Raises DigitImageError, naming the file, for a missing file, a file PIL cannot read, a picture larger
    than 4000x4000 pixels (refused from its header, before any decoding) and a blank picture.
    """
    path = Path(path)
    if not path.is_file():
        raise DigitImageError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            # PIL only warns about a header of up to 2x its MAX_IMAGE_PIXELS; refuse it like a larger one.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height <= MAX_PIXELS:
                    image = ImageOps.exif_transpose(image)  # a copy, upright: photos are often stored sideways
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DigitImageError(f"{path}: far too large for a picture of one digit (at most 4000x4000 pixels)") from None
    except PermissionError:
        raise DigitImageError(f"{path}: not allowed to read it") from None
    except Exception as err:  # PIL's decoders fail on a damaged file in many ways, depending on the format
        raise DigitImageError(f"{path}: not an image, or a damaged one ({type(err).__name__})") from None
    if width * height > MAX_PIXELS:
        raise DigitImageError(f"{path}: {width}x{height} pixels is too large for a picture of one digit "
                              f"(at most 4000x4000); crop it to the digit")
    try:
        return to_mnist(image)
    except DigitImageError as err:
        raise DigitImageError(f"{path}: {err}") from None


def to_mnist(image: Image.Image) -> torch.Tensor:
    """A picture of one digit -> uint8 (28, 28), white on black, preprocessed the way MNIST's digits were.

    Reproduces the MNIST database's normalisation (LeCun, Cortes & Burges, "The MNIST database of
    handwritten digits", http://yann.lecun.com/exdb/mnist/): "the images were size normalized to fit in a
    20x20 pixel box while preserving their aspect ratio. The resulting images contain grey levels as a
    result of the anti-aliasing technique used by the normalization algorithm. The images were centered in
    a 28x28 image by computing the center of mass of the pixels, and translating the image so as to
    position this point at the center of the 28x28 field."

    MNIST started from clean binary scans; a user's picture is first brought to white ink on black paper:
      1. grayscale in [0, 1]; a transparent background is laid onto paper of the opposite brightness to the
         opaque strokes (dark strokes on a transparent canvas are dark ink on white paper);
      2. ink and paper separated by Otsu's threshold; the paper is the side the border pixels are on, and a
         light paper is inverted;
      3. the paper level (its median plus three robust standard deviations, so that grey paper, its texture
         and JPEG noise become black) maps to 0 and the ink's median to 255;
      4. strokes too thin for the digit's size (a fine pen on a large canvas) are widened to MNIST's median
         stroke, since MNIST's writers used pens of about one width for digits of about one size.
    Then MNIST's steps: the ink's bounding box (where the ink is at least half its typical level) is scaled
    so that its longer side is 20 pixels, each new pixel the mean of the area it covers (anti-aliasing), and
    pasted into 28x28 with its centre of mass on pixel (14, 14), where MNIST's own files have it.

    Raises DigitImageError for a picture with no ink on it.
    """
    ink = _ink_levels(_grayscale(image))
    top, left, bottom, right = _box(ink > 0.5)
    # The digit with as wide a margin as the field leaves around its box: the faint edges of the strokes lie
    # outside the half-ink box, and thickened strokes need the room.
    margin = int(np.ceil(max(bottom - top, right - left) * (SIZE - BOX) / 2 / BOX))
    digit = _thicken_thin_strokes(
        np.asarray(Image.fromarray(ink).crop((left - margin, top - margin, right + margin, bottom + margin))))
    top, left, bottom, right = _box(digit > 0.5)
    scale = BOX / max(bottom - top, right - left)
    size = (max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale)))
    digit = np.asarray(Image.fromarray(digit).resize(size, Image.Resampling.BOX))

    centre_row = np.average(np.arange(digit.shape[0]), weights=digit.sum(axis=1))
    centre_col = np.average(np.arange(digit.shape[1]), weights=digit.sum(axis=0))
    field = Image.new("F", (SIZE, SIZE))
    field.paste(Image.fromarray(digit), (round(SIZE / 2 - centre_col), round(SIZE / 2 - centre_row)))
    return torch.from_numpy(np.round(np.asarray(field) * 255).astype(np.uint8))


def _grayscale(image: Image.Image) -> np.ndarray:
    """Brightness in [0, 1], float32 (H, W), with any transparency laid onto paper."""
    if image.mode.startswith("I;16"):
        return np.asarray(image, np.float32) / 65535
    if image.mode in ("I", "F"):  # 32-bit pixels have no fixed range: stretch what is there
        gray = np.asarray(image, np.float32)
        return (gray - gray.min()) / max(float(gray.max() - gray.min()), 1e-12)
    try:
        if not (image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info):
            return np.asarray(image.convert("L"), np.float32) / 255
        rgba = image.convert("RGBA")
    except ValueError:  # PIL converts most modes; the rest (LAB, HSV) are rare in picture files
        raise DigitImageError(f"pictures of mode {image.mode} are not supported; save it as RGB") from None
    gray = np.asarray(rgba.convert("L"), np.float32) / 255
    alpha = np.asarray(rgba.getchannel("A"), np.float32) / 255
    if alpha.max() == 0:
        raise DigitImageError("blank image: fully transparent")
    paper = 1.0 if np.average(gray, weights=alpha) < 0.5 else 0.0
    return alpha * gray + (1 - alpha) * paper


def _ink_levels(gray: np.ndarray) -> np.ndarray:
    """Brightness in [0, 1] -> ink in [0, 1] (float32): 0 on the paper, 1 for the typical ink stroke."""
    if gray.max() - gray.min() < MIN_CONTRAST:
        raise DigitImageError("blank image: no ink on it (it is one flat colour)")
    threshold = _otsu_threshold(gray)
    band = max(1, round(BORDER * min(gray.shape)))
    inside = np.zeros_like(gray, bool)
    inside[band:-band, band:-band] = True
    if np.median(gray[~inside]) > threshold:  # light paper: MNIST's ink is the bright side
        gray, threshold = 1 - gray, 1 - threshold
    paper, ink = gray[gray <= threshold], gray[gray > threshold]
    if ink.size == 0 or np.median(ink) - np.median(paper) < MIN_CONTRAST:
        raise DigitImageError("blank image: no ink on it stands out from the background")
    paper_level = np.median(paper)
    # 1.4826 x the median absolute deviation estimates the standard deviation, unswayed by stray ink.
    paper_level = min(paper_level + 3 * 1.4826 * np.median(np.abs(paper - paper_level)), threshold)
    return np.clip((gray - paper_level) / (np.median(ink) - paper_level), 0, 1).astype(np.float32)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Top, left, bottom, right (exclusive) of the True pixels."""
    rows, cols = np.nonzero(mask)
    return rows.min(), cols.min(), rows.max() + 1, cols.max() + 1


def _stroke_width(mask: np.ndarray) -> float:
    """The mean width of the strokes of a binary picture: twice their area over their outline's length (for a
    long stroke, area = length x width and the outline runs along both sides)."""
    outline = sum(np.count_nonzero(np.diff(mask, axis=axis, prepend=False, append=False)) for axis in (0, 1))
    return 2 * np.count_nonzero(mask) / outline


def _thicken_thin_strokes(ink: np.ndarray) -> np.ndarray:
    """Strokes that would be thinner than MNIST's thinnest once the digit is 20 pixels tall, widened to
    MNIST's median stroke: a digit drawn with a fine pen on a large canvas would otherwise fade to a faint
    line at 28x28."""
    mask = ink > 0.5
    top, left, bottom, right = _box(mask)
    extent, width = max(bottom - top, right - left), _stroke_width(mask)
    if width * BOX / extent >= THINNEST_STROKE:
        return ink
    # Widening by 2r pixels also enlarges the digit by 2r: solve (width + 2r) / (extent + 2r) = MNIST_STROKE / BOX.
    radius = round((MNIST_STROKE * extent - BOX * width) / (2 * (BOX - MNIST_STROKE)))
    # The brightest pixel within a size x size square, as two 1-D passes (rows, then columns): PIL's
    # MaxFilter gives the same but looks at all size**2 pixels, and on a large canvas the size is large.
    size = 2 * radius + 1
    ink = sliding_window_view(np.pad(ink, radius), size, axis=0).max(axis=-1)
    return sliding_window_view(ink, size, axis=1).max(axis=-1)


def _otsu_threshold(gray: np.ndarray) -> float:
    """Otsu's threshold: the brightness that splits the pixels into the two classes of the largest
    between-class variance (N. Otsu, IEEE Trans. Systems, Man, and Cybernetics 9(1), 1979)."""
    counts, edges = np.histogram(gray, bins=256, range=(0.0, 1.0))
    levels = (edges[:-1] + edges[1:]) / 2
    count_below, sum_below = np.cumsum(counts), np.cumsum(counts * levels)  # bins 0..k below threshold k
    count_above, sum_above = count_below[-1] - count_below, sum_below[-1] - sum_below
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty class has no mean: nan, skipped below
        between = count_below * count_above * (sum_below / count_below - sum_above / count_above) ** 2
    return float(edges[1 + np.nanargmax(between)])
