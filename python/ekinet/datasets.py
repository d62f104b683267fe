"""Data sets of the ekinet experiments: loaders, a verified download cache and small preprocessing helpers.

The files are the original public ones (MNIST, Fashion-MNIST, Boston housing, the Melbourne temperature and the
sunspot series), found at ``<data dir>/<folder>/<file>``, where the data directory is the ``data_dir`` argument,
else the ``EKINET_DATA`` environment variable, else ``$XDG_CACHE_HOME/ekinet`` (default ``~/.cache/ekinet``).
A missing file is downloaded from the mirrors in ``MIRRORS`` (unless ``download=False``), and every file, found or
downloaded, must match the sha256 in ``CHECKSUMS``: a loader never silently reads a corrupt or different file, so
results stay comparable across machines. ``load_mnist_small`` needs neither network nor data directory: it reads
a class-balanced 7000-digit subset of MNIST shipped inside the package.

>>> from ekinet import datasets
>>> train = datasets.load_mnist("train")                    # x (60000, 784) float32 in [0, 1], y (60000,) int64
>>> train, val = train.split(0.1, rng=0)                    # seeded 54000 / 6000 split
>>> rng = np.random.default_rng(0)
>>> for epoch in range(3):
...     for idx in datasets.batches(len(train), 64, rng=rng):  # a new order each epoch
...         xb, yb = train.x[idx], train.y[idx]
"""

import csv
import gzip
import hashlib
import importlib.resources
import io
import logging
import math
import operator
import os
import re
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np

from ._arrays import is_cupy

__all__ = [
    "CHECKSUMS",
    "ChecksumError",
    "Dataset",
    "DatasetError",
    "DownloadError",
    "MIRRORS",
    "Standardizer",
    "TimeSeries",
    "available",
    "batches",
    "data_dir",
    "fetch",
    "load",
    "load_boston",
    "load_fashion_mnist",
    "load_mnist",
    "load_mnist_small",
    "load_series",
    "minmax_scale",
    "read_idx",
    "windows",
]

_log = logging.getLogger(__name__)

ENV_VAR = "EKINET_DATA"

# sha256 of the original files (the same sums as shared/data/SHA256SUMS and as widely published for MNIST).
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    "melbourne_temp": {
        "daily-min-temperatures.csv": "8b9de63ed6789492bf497625e7f9beb96a63d367b4b0a21754006f749fa5e5da",
    },
    "sunspots": {
        "monthly-sunspots.csv": "c4ec8cc57d9f6fb6ecdb3e1f37f25b6f4badd5124c55931052b0cd2fc3bc71f3",
    },
    "boston_housing": {
        "housing.csv": "2682ca02e83b89467d7d0cdcbde7c0cc4d2566119be8ce8d84dad4f0fa20859a",
    },
}

_JBROWNLEE = "https://raw.githubusercontent.com/jbrownlee/Datasets/master/"

# Base URLs per folder, tried in order (a file's URL is base + file name). A plain module-level dict so that a
# user behind a proxy mirror, or a test with file:// URLs, can replace them.
MIRRORS = {
    "mnist": ["https://storage.googleapis.com/cvdf-datasets/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    "fashion_mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ],
    "melbourne_temp": [_JBROWNLEE],
    "sunspots": [_JBROWNLEE],
    "boston_housing": [_JBROWNLEE],
}

DOWNLOAD_TIMEOUT = 60.0  # seconds of network silence before a mirror is given up


class DatasetError(ValueError):
    """A data file is corrupt, truncated or not in the expected format."""


class ChecksumError(DatasetError):
    """A data file's sha256 differs from the registered one: it is damaged or not the original file."""


class DownloadError(OSError):
    """No mirror could deliver a file."""


# ----------------------------------------------------------------------------------------------------------------
# Data directory, registry, verified fetch


def data_dir(path=None):
    """The data directory: `path` if given, else $EKINET_DATA, else $XDG_CACHE_HOME/ekinet (~/.cache/ekinet)."""
    return _resolve_dir(path)[0]


def _resolve_dir(path):
    # (directory, where it came from): the origin goes into error messages, so a user sees why that directory.
    if path is not None:
        return Path(path).expanduser(), "the data_dir argument"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), f"the {ENV_VAR} environment variable"
    cache = os.environ.get("XDG_CACHE_HOME")
    if cache:
        return Path(cache).expanduser() / "ekinet", "the default cache $XDG_CACHE_HOME/ekinet"
    return Path.home() / ".cache" / "ekinet", "the default cache ~/.cache/ekinet"


def _expected_sha256(name, file):
    if name not in CHECKSUMS:
        raise ValueError(f"unknown data folder {name!r}; known folders: {', '.join(sorted(CHECKSUMS))}")
    files = CHECKSUMS[name]
    if file not in files:
        raise ValueError(f"unknown file {file!r} in {name!r}; known files: {', '.join(sorted(files))}")
    return files[file]


def _urls(name, file):
    return [base + file for base in MIRRORS.get(name, ())]


# Digests already computed in this process, keyed by (path, inode, size, mtime): loading MNIST again does not
# rehash 10 MB, while a replaced or rewritten file (new mtime or size) is hashed afresh.
_digests = {}


def _stat_key(path):
    st = os.stat(path)
    return (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _file_sha256(path):
    key = _stat_key(path)
    if key not in _digests:
        _digests[key] = _sha256(path)
    return _digests[key]


def fetch(name, file, data_dir=None, download=True):
    """Path of the verified file `<data dir>/<name>/<file>`, downloading it first if missing and `download`.

    name: a folder of CHECKSUMS ("mnist", "fashion_mnist", "melbourne_temp", "sunspots", "boston_housing").
    Raises ChecksumError if the file (found or downloaded) differs from the registered sha256, FileNotFoundError if
    it is missing and download is False, DownloadError if no mirror in MIRRORS[name] delivers it.
    """
    expected = _expected_sha256(name, file)
    root, origin = _resolve_dir(data_dir)
    path = root / name / file
    if path.is_file():
        got = _file_sha256(path)
        if got != expected:
            raise ChecksumError(
                f"{path} has sha256 {got}, expected {expected}: the file is damaged or not the original "
                f"{name}/{file}. Delete it (with download=True it is then downloaded again) or replace it with "
                "the original."
            )
        return path
    if path.exists():
        raise IsADirectoryError(f"{path} should be the file {name}/{file} but is a directory or another "
                                "non-file; move it away")
    urls = _urls(name, file)
    if not download:
        raise FileNotFoundError(
            f"{name}/{file} not found: looked for {path} (data directory {root}, from {origin}). Set the "
            f"{ENV_VAR} environment variable or pass data_dir= to a directory holding {name}/{file}, or pass "
            f"download=True to download it" + (f" from {urls[0]}" if urls else "") + "."
        )
    if not urls:
        raise DownloadError(f"{name}/{file} is missing from {path.parent} and MIRRORS[{name!r}] lists no URL")
    path.parent.mkdir(parents=True, exist_ok=True)
    _download(urls, path, expected)
    return path


def _download(urls, path, expected):
    # Each mirror is written to a temporary file next to the target and moved into place only once its sha256
    # matches, so an interrupted or wrong download never leaves a file that a later load would trust.
    failures, mismatches = [], 0
    for url in urls:
        _log.info("downloading %s to %s", url, path)
        try:
            tmp, got = _download_to_temp(url, path)
        except (OSError, HTTPException, ValueError) as exc:
            failures.append(f"{url}: {exc}")
            continue
        if got != expected:
            os.unlink(tmp)
            mismatches += 1
            failures.append(f"{url}: sha256 {got}, expected {expected} (download deleted)")
            continue
        try:
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        _digests[_stat_key(path)] = got
        return
    listing = "\n  ".join(failures)
    if mismatches == len(failures):
        raise ChecksumError(
            f"every download of {path.name} had the wrong sha256, so nothing was saved:\n  {listing}\n"
            f"The mirrors may serve a different version; put the original file at {path} or fix MIRRORS."
        )
    raise DownloadError(
        f"could not download {path.name} to {path.parent}; URLs tried:\n  {listing}\n"
        f"Check the network, or copy the file there by hand (or point {ENV_VAR} at a directory that has it)."
    )


def _download_to_temp(url, path):
    request = urllib.request.Request(url, headers={"User-Agent": "ekinet-datasets"})  # a bad URL raises here
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp, digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# IDX files

_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand more than this: bounds what a header may claim


def read_idx(path):
    """Read an IDX file (the MNIST format), gzip-compressed or plain, as an array in native byte order.

    The header is checked (magic 00 00 <type code> <ndim>, type codes 0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64, big-endian dimensions) and the data must fill exactly the declared
    shape; anything else (and a corrupt or truncated gzip stream) raises DatasetError naming the file.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not compressed:
            return _read_idx_stream(raw, path, size, compressed=False)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _read_idx_stream(stream, path, size, compressed=True)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DatasetError(
                f"{path}: the gzip stream is corrupt or truncated ({exc}); delete the file and download it again"
            ) from exc


def _read_into(stream, buffer):
    view = memoryview(buffer)
    done = 0
    while done < len(view):
        n = stream.readinto(view[done:])
        if not n:
            break
        done += n
    return done


def _read_idx_stream(stream, path, size, *, compressed):
    header = stream.read(4)
    if len(header) < 4:
        raise DatasetError(f"{path}: {len(header)} bytes, too short for an IDX header (4-byte magic number)")
    if header[:2] != b"\0\0" or header[2] not in _IDX_TYPES or header[3] == 0:
        codes = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise DatasetError(
            f"{path}: not an IDX file: magic number 0x{header.hex().upper()}, expected two zero bytes, a type "
            f"code ({codes}) and a nonzero number of dimensions"
        )
    dtype, ndim = _IDX_TYPES[header[2]], header[3]
    dims_bytes = stream.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header: {ndim} dimensions declared, the file ends inside them")
    shape = struct.unpack(f">{ndim}I", dims_bytes)
    nbytes = math.prod(shape) * dtype.itemsize
    declared = f"the header declares shape {shape} of {dtype.name} = {nbytes} bytes of data"
    if not compressed and nbytes != size - 4 - 4 * ndim:
        kind = "truncated" if nbytes > size - 4 - 4 * ndim else "has trailing bytes"
        raise DatasetError(f"{path}: {kind}: {declared}, the file holds {size - 4 - 4 * ndim}")
    if compressed and nbytes > _DEFLATE_MAX_RATIO * size:
        raise DatasetError(f"{path}: {declared}, more than a {size}-byte gzip file can hold")
    out = np.empty(shape, dtype)
    got = _read_into(stream, out.reshape(-1).view(np.uint8))
    if got < nbytes:
        raise DatasetError(f"{path}: truncated: {declared}, the file holds {got}")
    extra = len(stream.read())  # reading to the end also makes gzip check its CRC
    if extra:
        raise DatasetError(f"{path}: has trailing bytes: {declared}, the file holds {nbytes + extra}")
    return out.astype(dtype.newbyteorder("="), copy=False)


# ----------------------------------------------------------------------------------------------------------------
# Containers


def _check_labels(labels, num_classes):
    """Class labels are 1-D integers in [0, num_classes): float labels would be truncated by the training loop's
    integer cast and scored against their untruncated values."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        hint = " (whole-valued floats: pass y.astype(int))" if labels.dtype.kind == "f" else ""
        raise ValueError(f"a classification Dataset's y holds one integer class label per example; got shape "
                         f"{labels.shape}, dtype {labels.dtype}{hint}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels span [{labels.min()}, {labels.max()}], outside [0, {num_classes}) (num_classes)")


def _host_array(values, name):
    """A Dataset's x or y as a NumPy array of numbers (lists and other array-likes are converted)."""
    if is_cupy(values):
        raise TypeError(f"a Dataset's {name} is a host (NumPy) array; the Trainer moves it to the device: pass "
                        f"{name}.get()")
    values = np.asarray(values)
    if values.dtype.kind not in "biuf" or values.ndim == 0:
        raise ValueError(f"a Dataset's {name} holds one number or array of numbers per example; got shape "
                         f"{values.shape}, dtype {values.dtype}")
    return _numeric(values, f"a Dataset's {name}")


@dataclass(repr=False, eq=False)
class Dataset:
    """Examples `x` (N, ...) with targets `y` (N, ...): class labels (task "classification", `num_classes`
    classes) or real values (task "regression")."""

    x: np.ndarray
    y: np.ndarray
    name: str
    task: str
    num_classes: int | None = None
    feature_names: tuple | None = None

    def __post_init__(self):
        self.x, self.y = _host_array(self.x, "x"), _host_array(self.y, "y")
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} examples but y has {len(self.y)}; they must match")
        if self.task == "classification":
            if self.num_classes is None or int(self.num_classes) < 1:
                raise ValueError(f"a classification Dataset needs num_classes >= 1; got {self.num_classes!r}")
            _check_labels(np.asarray(self.y), self.num_classes)
        elif self.task == "regression":
            if self.num_classes is not None:
                raise ValueError(f"a regression Dataset has no classes; got num_classes={self.num_classes!r}")
        else:
            raise ValueError(f"task must be 'classification' or 'regression'; got {self.task!r}")
        if self.feature_names is not None:
            self.feature_names = tuple(self.feature_names)
            if self.x.ndim != 2 or len(self.feature_names) != self.x.shape[1]:
                raise ValueError(
                    f"{len(self.feature_names)} feature_names for x of shape {self.x.shape}; "
                    "expected one name per column of a 2-D x"
                )

    def __len__(self):
        return len(self.x)

    def __repr__(self):
        classes = f", num_classes={self.num_classes}" if self.num_classes is not None else ""
        return (
            f"Dataset({self.name!r}, task={self.task!r}, x={self.x.shape} {self.x.dtype}, "
            f"y={self.y.shape} {self.y.dtype}{classes})"
        )

    def subset(self, indices):
        """The examples at `indices` (integer indices, a boolean mask or a slice), as a new Dataset."""
        if not isinstance(indices, slice):
            indices = np.asarray(indices)
            if indices.dtype == bool and indices.shape != (len(self),):
                raise ValueError(f"a boolean mask must have shape ({len(self)},); got {indices.shape}")
            if indices.dtype != bool and not np.issubdtype(indices.dtype, np.integer):
                raise ValueError(f"indices must be integers, a boolean mask or a slice; got dtype {indices.dtype}")
        return Dataset(
            self.x[indices], self.y[indices], self.name, self.task, self.num_classes, self.feature_names
        )

    def split(self, fraction, *, rng=0):
        """(rest, held_out): a seeded random `fraction` of the examples held out (e.g. a validation set).

        rng: anything np.random.default_rng takes (the default 0 makes the split reproducible). Both parts keep
        the original order of their examples.
        """
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must lie strictly between 0 and 1; got {fraction}")
        n = len(self)
        held = round(fraction * n)
        if not 0 < held < n:
            raise ValueError(f"fraction {fraction} of {n} examples leaves an empty part; use a larger data set")
        order = np.random.default_rng(rng).permutation(n)
        return self.subset(np.sort(order[held:])), self.subset(np.sort(order[:held]))

    def one_hot(self, dtype=np.float32):
        """Labels as an (N, num_classes) one-hot array, e.g. targets for a squared loss."""
        if self.task != "classification":
            raise ValueError(f"one_hot needs class labels; {self.name!r} is a {self.task} data set")
        labels = np.asarray(self.y)
        out = np.zeros((len(labels), self.num_classes), dtype=dtype)
        out[np.arange(len(labels)), labels] = 1
        return out


@dataclass(repr=False, eq=False)
class TimeSeries:
    """A univariate series: `values` (float64) observed at `times` (datetime64), in `unit`."""

    values: np.ndarray
    times: np.ndarray
    name: str
    unit: str

    def __post_init__(self):
        self.values = _numeric(self.values, "values").astype(np.float64, copy=False)
        times = np.asarray(self.times)
        if times.dtype.kind in "OUS":  # datetime objects or ISO strings
            try:
                times = times.astype("datetime64")
            except (TypeError, ValueError) as error:
                raise ValueError(f"times must be datetimes (datetime64, datetime or ISO strings): {error}") from error
        if times.dtype.kind != "M":
            raise ValueError(f"times must be datetimes (datetime64, datetime or ISO strings); got dtype "
                             f"{times.dtype}")
        self.times = times
        if self.values.shape != self.times.shape or self.values.ndim != 1:
            raise ValueError(
                f"values {self.values.shape} and times {self.times.shape} must be 1-D arrays of the same length"
            )

    def __len__(self):
        return len(self.values)

    def __repr__(self):
        span = f"{self.times[0]} .. {self.times[-1]}" if len(self) else "empty"
        return f"TimeSeries({self.name!r}, {len(self)} values in {self.unit}, {span})"


# ----------------------------------------------------------------------------------------------------------------
# Loaders


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type (the pixels are scaled to [0, 1]); got {dtype}")
    return dtype


def _image_dataset(images, labels, name, flatten, dtype):
    x = np.divide(images, 255, dtype=_float_dtype(dtype))
    x = x.reshape(len(x), -1) if flatten else x[:, None, :, :]
    return Dataset(x, labels.astype(np.int64), name, "classification", num_classes=10)


def _load_idx_images(folder, name, split, data_dir, download, flatten, dtype):
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    _float_dtype(dtype)
    prefix = "train" if split == "train" else "t10k"
    images_path = fetch(folder, f"{prefix}-images-idx3-ubyte.gz", data_dir, download)
    labels_path = fetch(folder, f"{prefix}-labels-idx1-ubyte.gz", data_dir, download)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DatasetError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28); got {images.shape} {images.dtype}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetError(f"{labels_path}: expected uint8 labels of shape (N,); got {labels.shape} {labels.dtype}")
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{labels_path}: labels must lie in 0..9; found {labels.max()}")
    return _image_dataset(images, labels, f"{name}-{split}", flatten, dtype)


def load_mnist(split="train", *, data_dir=None, download=True, flatten=True, dtype=np.float32):
    """MNIST digits: x in [0, 1], shape (N, 784) if flatten else (N, 1, 28, 28) (channels first, for Conv2d);
    y int64 labels 0..9. N = 60000 (train) or 10000 (test)."""
    return _load_idx_images("mnist", "mnist", split, data_dir, download, flatten, dtype)


def load_fashion_mnist(split="train", *, data_dir=None, download=True, flatten=True, dtype=np.float32):
    """Fashion-MNIST (Zalando): as load_mnist, 10 clothing classes of 6000 train and 1000 test images each."""
    return _load_idx_images("fashion_mnist", "fashion-mnist", split, data_dir, download, flatten, dtype)


def load_mnist_small(split="train", *, flatten=True, dtype=np.float32):
    """A class-balanced MNIST subset shipped with the package (600 digits per class in train, 100 in test).

    For tests, examples and quick experiments with no network or data directory. The file data/mnist_small.npz
    holds uint8 images drawn with a fixed seed by data/make_mnist_small.py; its `train_index`/`test_index` arrays
    give each digit's position in the original MNIST files and `source` says where it came from. Otherwise as
    load_mnist.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    resource = importlib.resources.files(__package__).joinpath("data").joinpath("mnist_small.npz")
    with resource.open("rb") as f, np.load(f) as npz:
        images, labels = npz[f"x_{split}"], npz[f"y_{split}"]
    return _image_dataset(images, labels, f"mnist-small-{split}", flatten, dtype)


BOSTON_FEATURES = ("CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT")


def load_boston(*, data_dir=None, download=True):
    """Boston housing (Harrison & Rubinfeld 1978): x (506, 13) float64 features CRIM..LSTAT, y (506,) MEDV, the
    median home value in $1000s.

    Kept because the EKI literature benchmarks on it; note that feature B is derived from the proportion of
    Black residents, one reason scikit-learn removed this data set. Rows may be comma or whitespace separated.
    """
    path = fetch("boston_housing", "housing.csv", data_dir, download)
    width = len(BOSTON_FEATURES) + 1
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")] if "," in line else line.split()
        if len(fields) != width:
            raise DatasetError(f"{path}, line {number}: {len(fields)} columns, expected {width} (CRIM..LSTAT, MEDV)")
        rows.append([_number(field, path, number) for field in fields])
    if not rows:
        raise DatasetError(f"{path}: no data rows")
    table = np.array(rows, dtype=np.float64)
    return Dataset(table[:, :-1], table[:, -1], "boston", "regression", feature_names=BOSTON_FEATURES)


_SERIES = {
    # name: (folder, file, header, datetime unit, date pattern, value unit)
    "melbourne": ("melbourne_temp", "daily-min-temperatures.csv", ("Date", "Temp"), "D", r"\d{4}-\d{2}-\d{2}", "degC"),
    "sunspots": ("sunspots", "monthly-sunspots.csv", ("Month", "Sunspots"), "M", r"\d{4}-\d{2}", "sunspot number"),
}


def load_series(name, *, data_dir=None, download=True):
    """A univariate series: "melbourne" (daily minimum temperature in Melbourne, 1981-1990, 3650 days; the
    31 December of 1984 and 1988 are absent) or "sunspots" (monthly mean Zurich sunspot numbers, 1749-1983,
    2820 months)."""
    if name not in _SERIES:
        raise ValueError(f"unknown series {name!r}; known series: {', '.join(_SERIES)}")
    folder, file, header, unit, pattern, value_unit = _SERIES[name]
    path = fetch(folder, file, data_dir, download)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    first = next(reader, None)
    if first is None or tuple(f.strip() for f in first) != header:
        raise DatasetError(f"{path}, line 1: header {first}, expected {list(header)}")
    times, values, lines = [], [], []
    date_format = re.compile(pattern)
    for row in reader:
        line = reader.line_num
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise DatasetError(f"{path}, line {line}: {len(row)} columns, expected 2 ({', '.join(header)})")
        stamp = row[0].strip()
        try:
            if not date_format.fullmatch(stamp):
                raise ValueError(f"expected the form {pattern}")
            times.append(np.datetime64(stamp, unit))
        except ValueError as exc:
            raise DatasetError(f"{path}, line {line}: bad {header[0].lower()} {row[0]!r}: {exc}") from None
        values.append(_number(row[1], path, line))
        lines.append(line)
    times = np.array(times, dtype=f"datetime64[{unit}]")
    if len(times) == 0:
        raise DatasetError(f"{path}: no data rows after the header")
    backwards = np.flatnonzero(np.diff(times) <= np.timedelta64(0, unit))
    if backwards.size:
        line = lines[backwards[0] + 1]
        raise DatasetError(f"{path}, line {line}: {times[backwards[0] + 1]} does not follow {times[backwards[0]]}")
    return TimeSeries(np.array(values, dtype=np.float64), times, name, value_unit)


def _read_text(path):
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from None


def _number(field, path, line):
    try:
        value = float(field)
    except ValueError:
        raise DatasetError(f"{path}, line {line}: {field!r} is not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{path}, line {line}: {field!r} is not a finite number")
    return value


_LOADERS = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "mnist-small": load_mnist_small,
    "boston": load_boston,
}


def available():
    """Names that load() takes (time series: see load_series)."""
    return tuple(_LOADERS)


def load(name, split=None, **kwargs):
    """Load a Dataset by name (see available()); split is "train" (the default) or "test", except for "boston",
    which has none (hold out a part with Dataset.split). Other keywords go to the loader; data_dir and download
    are accepted for every name (the embedded "mnist-small" ignores them), so one call works for all names."""
    key = str(name).lower().replace("_", "-")
    if key not in _LOADERS:
        raise ValueError(
            f"unknown data set {name!r}; known: {', '.join(_LOADERS)} (time series: load_series('melbourne' or "
            "'sunspots'))"
        )
    if key == "boston":
        if split is not None:
            raise ValueError(f"boston has no train/test split; got split={split!r}. Use load('boston').split(0.2)")
        return load_boston(**kwargs)
    if key == "mnist-small":
        kwargs.pop("data_dir", None)
        kwargs.pop("download", None)
    return _LOADERS[key]("train" if split is None else split, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing


class Standardizer:
    """Per-feature standardisation z = (x - mean) / scale, fitted on the training data only.

    Statistics are taken over axis 0 in float64. A feature whose std is at most `tol` times its largest
    magnitude is constant: its scale is 1 rather than ~0, so it maps to 0 and unseen values there are not blown
    up by a huge factor (as a plain floor on the std would do).
    """

    def __init__(self, *, tol=1e-12):
        self.tol = tol
        self.mean = None
        self.scale = None

    def __repr__(self):
        state = f"features={self.mean.shape}" if self.mean is not None else "not fitted"
        return f"Standardizer({state})"

    def fit(self, x):
        """Take mean and scale per feature from x (N, ...); returns self."""
        x = _numeric(x, "x")
        if x.ndim < 1 or len(x) == 0:
            raise ValueError(f"fit needs at least one example along axis 0; got shape {x.shape}")
        x = x.astype(np.float64)
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale = np.where(std > self.tol * np.abs(x).max(axis=0), std, 1.0)
        return self

    def transform(self, x):
        """(x - mean) / scale, in x's floating dtype (float64 for integer x)."""
        x, dtype = self._check(x, "transform")
        return ((x - self.mean) / self.scale).astype(dtype, copy=False)

    def inverse_transform(self, z):
        """z * scale + mean: back to the original units (e.g. a network's standardised predictions)."""
        z, dtype = self._check(z, "inverse_transform")
        return (z * self.scale + self.mean).astype(dtype, copy=False)

    def fit_transform(self, x):
        """fit(x), then transform(x)."""
        return self.fit(x).transform(x)

    def _check(self, x, what):
        if self.mean is None:
            raise RuntimeError(f"Standardizer.{what} before fit: call fit(x_train) first")
        x = _numeric(x, "x")
        if x.shape[1:] != self.mean.shape:
            raise ValueError(f"{what}: x has shape {x.shape}; fitted on (N, *{self.mean.shape})")
        return x, (x.dtype if x.dtype.kind == "f" else np.float64)


def _numeric(x, what):
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numeric; got dtype {x.dtype}")
    bad = int(np.count_nonzero(~np.isfinite(x))) if x.dtype.kind == "f" else 0
    if bad:
        raise ValueError(f"{what} contains {bad} NaN/Inf value(s); clean or impute them first")
    return x


def minmax_scale(values, *, lo=None, hi=None):
    """(values - lo) / (hi - lo) and the (lo, hi) used: lo, hi default to the global min and max, so the values
    land in [0, 1]; pass the training (lo, hi) to scale test data the same way."""
    values = _numeric(values, "values")
    if values.size == 0 and (lo is None or hi is None):
        raise ValueError("cannot take the range of an empty array; pass lo and hi")
    lo = float(values.min()) if lo is None else float(lo)
    hi = float(values.max()) if hi is None else float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"need finite lo < hi; got lo={lo}, hi={hi} (constant or non-finite values?)")
    dtype = values.dtype if values.dtype.kind == "f" else np.float64
    return ((values - lo) / (hi - lo)).astype(dtype, copy=False), (lo, hi)


def batches(n, batch_size, *, rng=None, drop_last=False):
    """Index arrays of one epoch over n examples, each index exactly once: in order if rng is None, else in a
    random order without replacement.

    rng: a seed (the same order on every call) or a np.random.Generator (a new order on each call, i.e. each
    epoch; the sequence of epochs is reproducible from the generator's seed). drop_last drops a final batch
    smaller than batch_size.
    """
    n, batch_size = operator.index(n), operator.index(batch_size)
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1; got n={n}, batch_size={batch_size}")
    order = np.arange(n) if rng is None else np.random.default_rng(rng).permutation(n)
    stop = n - n % batch_size if drop_last else n
    return (order[start : start + batch_size] for start in range(0, stop, batch_size))


def windows(values, length, *, horizon=1):
    """Sliding windows of a series for sequence models: X[i] = values[i : i+length] as (length, 1), Y[i] the
    `horizon` values that follow. X (N, length, 1), Y (N, horizon), N = len(values) - length - horizon + 1."""
    values = _numeric(values, "values")
    length, horizon = operator.index(length), operator.index(horizon)
    if values.ndim != 1:
        raise ValueError(f"values must be a 1-D series; got shape {values.shape}")
    if length < 1 or horizon < 1:
        raise ValueError(f"need length >= 1 and horizon >= 1; got length={length}, horizon={horizon}")
    if len(values) < length + horizon:
        raise ValueError(
            f"a series of {len(values)} values is too short for windows of {length} plus a horizon of {horizon}"
        )
    dtype = values.dtype if values.dtype.kind == "f" else np.float64
    w = np.lib.stride_tricks.sliding_window_view(values.astype(dtype, copy=False), length + horizon)
    return w[:, :length, None].copy(), w[:, length:].copy()  # copies: the windows overlap in memory
