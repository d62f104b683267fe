"""ekinet.datasets: the real files (checksums, shapes, known counts and values), the embedded MNIST subset, the IDX
reader on hand-written fixtures, corrupt and malformed files, the verified fetch and download path (file:// URLs,
no network), and the preprocessing helpers.

The real files come from $EKINET_DATA if set, else <repo>/../shared/data, else /work/shared/data; they are
required (CI provides them), so a missing folder fails rather than skips.
"""

import gzip
import hashlib
import importlib.util
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import real_data_dir
from ekinet import datasets

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
PACKAGE_DATA = Path(datasets.__file__).parent / "data"


@pytest.fixture(scope="module")
def real():
    return real_data_dir()


@pytest.fixture(scope="module")
def mnist_train(real):
    return datasets.load_mnist("train", data_dir=real, download=False)


@pytest.fixture(scope="module")
def mnist_test(real):
    return datasets.load_mnist("test", data_dir=real, download=False)


@pytest.fixture
def no_env(monkeypatch):
    """No EKINET_DATA / XDG_CACHE_HOME from the caller's environment."""
    monkeypatch.delenv("EKINET_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def install(monkeypatch, root, folder, file, data):
    """Write `data` to root/folder/file and register its sha256, so that a loader accepts this fixture file."""
    data = data.encode() if isinstance(data, str) else data
    path = Path(root) / folder / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if folder not in datasets.CHECKSUMS:
        monkeypatch.setitem(datasets.CHECKSUMS, folder, {})
    monkeypatch.setitem(datasets.CHECKSUMS[folder], file, sha256_bytes(data))
    return path


# IDX written here from the format's definition (not by the module under test).
IDX_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}


def idx_bytes(array, code=None):
    array = np.asarray(array)
    code = IDX_CODES[array.dtype.name] if code is None else code
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# ---------------------------------------------------------------------------------------------------------------
# Real files


def test_real_files_match_published_checksums_and_registry(real):
    sums = dict(
        reversed(line.split(None, 1)) for line in (real / "SHA256SUMS").read_text().splitlines() if line.strip()
    )
    for relative, expected in sums.items():
        assert sha256_bytes((real / relative).read_bytes()) == expected, relative
    for folder, files in datasets.CHECKSUMS.items():
        for file, expected in files.items():
            assert sums[f"{folder}/{file}"] == expected, f"registry {folder}/{file} differs from SHA256SUMS"
            assert datasets.fetch(folder, file, data_dir=real, download=False) == real / folder / file
    assert set(datasets.MIRRORS) == set(datasets.CHECKSUMS)


def test_mnist_train(mnist_train):
    x, y = mnist_train.x, mnist_train.y
    assert x.shape == (60000, 784) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == MNIST_TRAIN_COUNTS
    assert y[:5].tolist() == [5, 0, 4, 1, 9]
    assert (mnist_train.name, mnist_train.task, mnist_train.num_classes) == ("mnist-train", "classification", 10)
    assert len(mnist_train) == 60000


def test_mnist_test_unflattened_float64(real, mnist_test):
    images = datasets.load_mnist("test", data_dir=real, download=False, flatten=False, dtype=np.float64)
    assert images.x.shape == (10000, 1, 28, 28) and images.x.dtype == np.float64
    assert np.bincount(images.y).tolist() == MNIST_TEST_COUNTS
    assert images.y[:5].tolist() == [7, 2, 1, 0, 4]
    np.testing.assert_array_equal(images.x.reshape(10000, -1).astype(np.float32), mnist_test.x)
    # exactly k / 255 for every pixel value k
    assert np.all(np.isin(np.unique(images.x), np.arange(256) / 255.0))


def test_fashion_mnist(real):
    train = datasets.load_fashion_mnist("train", data_dir=real, download=False)
    test = datasets.load_fashion_mnist("test", data_dir=real, download=False, flatten=False)
    assert train.x.shape == (60000, 784) and test.x.shape == (10000, 1, 28, 28)
    assert np.bincount(train.y).tolist() == [6000] * 10
    assert np.bincount(test.y).tolist() == [1000] * 10
    assert train.y[:3].tolist() == [9, 0, 0]
    assert 0.0 <= train.x.min() and train.x.max() == 1.0
    assert train.name == "fashion-mnist-train"


def test_boston(real):
    boston = datasets.load_boston(data_dir=real, download=False)
    assert boston.x.shape == (506, 13) and boston.y.shape == (506,)
    assert boston.x.dtype == boston.y.dtype == np.float64
    assert boston.feature_names == datasets.BOSTON_FEATURES and boston.feature_names[0] == "CRIM"
    assert boston.feature_names[-1] == "LSTAT"
    assert boston.task == "regression" and boston.num_classes is None
    first = [0.00632, 18.0, 2.31, 0, 0.538, 6.575, 65.2, 4.09, 1, 296.0, 15.3, 396.9, 4.98]
    np.testing.assert_array_equal(boston.x[0], first)
    assert boston.y[0] == 24.0 and boston.y[-1] == 11.9
    assert boston.y.min() == 5.0 and boston.y.max() == 50.0


def test_series(real):
    melbourne = datasets.load_series("melbourne", data_dir=real, download=False)
    assert len(melbourne) == 3650 and melbourne.values.dtype == np.float64
    assert melbourne.times.dtype == np.dtype("datetime64[D]") and melbourne.unit == "degC"
    assert melbourne.times[0] == np.datetime64("1981-01-01") and melbourne.times[-1] == np.datetime64("1990-12-31")
    assert melbourne.values[:3].tolist() == [20.7, 17.9, 18.8] and melbourne.values[-1] == 13.0
    missing = np.setdiff1d(np.arange(melbourne.times[0], melbourne.times[-1] + 1), melbourne.times)
    assert missing.tolist() == [np.datetime64("1984-12-31").item(), np.datetime64("1988-12-31").item()]
    assert 0.0 <= melbourne.values.min() and melbourne.values.max() < 30.0

    sunspots = datasets.load_series("sunspots", data_dir=real, download=False)
    assert len(sunspots) == 2820 and sunspots.times.dtype == np.dtype("datetime64[M]")
    assert sunspots.times[0] == np.datetime64("1749-01") and sunspots.times[-1] == np.datetime64("1983-12")
    assert sunspots.values[:3].tolist() == [58.0, 62.6, 70.0] and sunspots.values[-1] == 33.4
    assert np.all(np.diff(sunspots.times) == np.timedelta64(1, "M"))
    assert sunspots.values.min() >= 0.0
    with pytest.raises(ValueError, match="melbourne, sunspots"):
        datasets.load_series("airline")


# ---------------------------------------------------------------------------------------------------------------
# Embedded MNIST subset


def test_mnist_small_shapes_and_balance():
    train = datasets.load_mnist_small("train")
    test = datasets.load_mnist_small("test", flatten=False, dtype=np.float64)
    assert train.x.shape == (6000, 784) and train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert test.x.shape == (1000, 1, 28, 28) and test.x.dtype == np.float64
    assert np.bincount(train.y).tolist() == [600] * 10 and np.bincount(test.y).tolist() == [100] * 10
    assert train.x.min() == 0.0 and train.x.max() == 1.0
    assert PACKAGE_DATA.joinpath("mnist_small.npz").stat().st_size < 2_000_000


def test_mnist_small_is_real_mnist_and_reproducible(mnist_train, mnist_test):
    spec = importlib.util.spec_from_file_location("make_mnist_small", PACKAGE_DATA / "make_mnist_small.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with np.load(PACKAGE_DATA / "mnist_small.npz") as npz:
        assert "MNIST" in str(npz["source"]) and int(npz["seed"]) == script.SEED
        for split, full, stream in (("train", mnist_train, 0), ("test", mnist_test, 1)):
            index = npz[f"{split}_index"]
            per_class = len(index) // 10
            rng = np.random.default_rng([script.SEED, stream])
            np.testing.assert_array_equal(index, script.stratified_indices(full.y, per_class, rng))
            small = datasets.load_mnist_small(split)
            np.testing.assert_array_equal(small.x, full.x[index])
            np.testing.assert_array_equal(small.y, full.y[index])


# ---------------------------------------------------------------------------------------------------------------
# IDX reader


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_idx_round_trip(tmp_path, rng, dtype, compress):
    if np.dtype(dtype).kind == "f":
        array = rng.standard_normal((3, 4, 5)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True).astype(dtype)
    data = idx_bytes(array)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(data) if compress else data)
    got = datasets.read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative and got.flags.writeable
    np.testing.assert_array_equal(got, array)


def test_idx_one_dimensional_and_empty(tmp_path):
    (tmp_path / "labels").write_bytes(idx_bytes(np.arange(7, dtype=np.uint8)))
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "labels"), np.arange(7))
    (tmp_path / "empty").write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    assert datasets.read_idx(tmp_path / "empty").shape == (0, 28, 28)


GOOD = idx_bytes(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
CORRUPT = {
    "empty file": (b"", "too short"),
    "short magic": (b"\x00\x00", "too short"),
    "bad magic": (b"\x01\x00" + GOOD[2:], "not an IDX file"),
    "unknown type code": (GOOD[:2] + b"\x0a" + GOOD[3:], "not an IDX file"),
    "zero dimensions": (GOOD[:3] + b"\x00" + GOOD[4:], "not an IDX file"),
    "truncated header": (GOOD[:9], "truncated IDX header"),
    "truncated data": (GOOD[:-1], "truncated"),
    "trailing data": (GOOD + b"\x00", "trailing bytes"),
    "wrong dims": (GOOD[:12] + struct.pack(">I", 6) + GOOD[16:], "truncated"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("case", list(CORRUPT))
def test_idx_corrupt(tmp_path, case, compress):
    data, message = CORRUPT[case]
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(datasets.DatasetError, match=message) as info:
        datasets.read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda z: z[:-20],
        lambda z: z[:-4],
        lambda z: z[:12],
        lambda z: z[:30] + bytes(b ^ 0x5A for b in z[30:60]) + z[60:],
    ],
    ids=["truncated stream", "truncated trailer", "truncated header", "corrupt deflate"],
)
def test_idx_bad_gzip(tmp_path, rng, mangle):
    data = idx_bytes(rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8))
    path = tmp_path / "bad.gz"
    path.write_bytes(mangle(gzip.compress(data)))
    with pytest.raises(datasets.DatasetError, match="gzip") as info:
        datasets.read_idx(path)
    assert str(path) in str(info.value)


def test_idx_gzip_header_claiming_too_much(tmp_path):
    huge = b"\x00\x00\x08\x03" + struct.pack(">3I", 60000, 4096, 4096)
    path = tmp_path / "huge.gz"
    path.write_bytes(gzip.compress(huge))
    with pytest.raises(datasets.DatasetError, match="can hold"):
        datasets.read_idx(path)


def test_mnist_loader_checks_counts_and_image_size(tmp_path, monkeypatch):
    root = tmp_path / "data"
    images = np.zeros((5, 28, 28), np.uint8)
    install(monkeypatch, root, "mnist", "t10k-images-idx3-ubyte.gz", gzip.compress(idx_bytes(images)))
    install(monkeypatch, root, "mnist", "t10k-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(datasets.DatasetError, match="5 images but .* 4 labels"):
        datasets.load_mnist("test", data_dir=root, download=False)
    small = gzip.compress(idx_bytes(np.zeros((4, 27, 27), np.uint8)))
    install(monkeypatch, root, "mnist", "t10k-images-idx3-ubyte.gz", small)
    with pytest.raises(datasets.DatasetError, match=r"shape \(N, 28, 28\); got \(4, 27, 27\)"):
        datasets.load_mnist("test", data_dir=root, download=False)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        datasets.load_mnist("validation", data_dir=root, download=False)
    with pytest.raises(ValueError, match="floating"):
        datasets.load_mnist("test", data_dir=root, download=False, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Data directory, checksums, download


def test_data_dir_resolution(tmp_path, monkeypatch, no_env):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.data_dir() == tmp_path / "home" / ".cache" / "ekinet"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.data_dir() == tmp_path / "xdg" / "ekinet"
    monkeypatch.setenv("EKINET_DATA", str(tmp_path / "env"))
    assert datasets.data_dir() == tmp_path / "env"
    assert datasets.data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert datasets.data_dir("~/x") == tmp_path / "home" / "x"


def test_env_var_is_used_by_loaders(real, monkeypatch):
    monkeypatch.setenv("EKINET_DATA", str(real))
    assert len(datasets.load_series("sunspots", download=False)) == 2820


def test_missing_file_without_download(tmp_path, monkeypatch, no_env):
    monkeypatch.setenv("EKINET_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_mnist("test", download=False)
    message = str(info.value)
    for part in ("t10k-images-idx3-ubyte.gz", str(tmp_path), "EKINET_DATA", "download=True", "data_dir"):
        assert part in message
    with pytest.raises(FileNotFoundError, match="the data_dir argument"):
        datasets.fetch("sunspots", "monthly-sunspots.csv", data_dir=tmp_path / "other", download=False)


def test_unknown_registry_entries(tmp_path):
    with pytest.raises(ValueError, match="known folders: .*mnist"):
        datasets.fetch("cifar", "x", data_dir=tmp_path)
    with pytest.raises(ValueError, match="known files: .*train-images"):
        datasets.fetch("mnist", "train-images.idx3-ubyte", data_dir=tmp_path)


def test_wrong_checksum_is_never_trusted(real, tmp_path):
    source = real / "sunspots" / "monthly-sunspots.csv"
    path = tmp_path / "sunspots" / "monthly-sunspots.csv"
    path.parent.mkdir()
    data = bytearray(source.read_bytes())
    data[-1:] = b"5"  # 33.4 -> 33.5: still a valid CSV, but not the original
    path.write_bytes(bytes(data))
    for _ in range(2):  # the bad digest is remembered, not a "verified" flag
        with pytest.raises(datasets.ChecksumError, match="expected c4ec8cc5") as info:
            datasets.load_series("sunspots", data_dir=tmp_path)
        assert str(path) in str(info.value) and "Delete it" in str(info.value)
    assert path.exists()  # a user's file is reported, not deleted
    shutil.copyfile(source, path)
    os.utime(path, ns=(1, 1))
    assert datasets.load_series("sunspots", data_dir=tmp_path).values[-1] == 33.4


def test_verification_is_cached_per_file_state(tmp_path, monkeypatch):
    path = install(monkeypatch, tmp_path, "toy", "a.bin", b"hello")
    calls = []
    original = datasets._sha256
    monkeypatch.setattr(datasets, "_sha256", lambda p: calls.append(p) or original(p))
    for _ in range(3):
        assert datasets.fetch("toy", "a.bin", data_dir=tmp_path) == path
    assert len(calls) == 1
    os.utime(path, ns=(10**9, 10**9))  # touched: hashed again
    datasets.fetch("toy", "a.bin", data_dir=tmp_path)
    assert len(calls) == 2
    path.write_bytes(b"hellO")
    os.utime(path, ns=(2 * 10**9, 2 * 10**9))
    with pytest.raises(datasets.ChecksumError):
        datasets.fetch("toy", "a.bin", data_dir=tmp_path)


def test_download_from_mirrors(real, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(real / "sunspots" / "monthly-sunspots.csv", mirror)
    dead = (tmp_path / "no-such-mirror").as_uri() + "/"
    monkeypatch.setitem(datasets.MIRRORS, "sunspots", [dead, mirror.as_uri() + "/"])
    root = tmp_path / "cache"
    path = datasets.fetch("sunspots", "monthly-sunspots.csv", data_dir=root)
    assert path == root / "sunspots" / "monthly-sunspots.csv"
    assert path.read_bytes() == (mirror / "monthly-sunspots.csv").read_bytes()
    assert os.listdir(path.parent) == ["monthly-sunspots.csv"]  # no temporary file left
    series = datasets.load_series("sunspots", data_dir=root, download=False)
    assert len(series) == 2820


def test_download_checksum_mismatch_is_deleted(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "housing.csv").write_text("1,2,3,4,5,6,7,8,9,10,11,12,13,14\n")
    monkeypatch.setitem(datasets.MIRRORS, "boston_housing", [mirror.as_uri() + "/"])
    root = tmp_path / "cache"
    with pytest.raises(datasets.ChecksumError, match="wrong sha256") as info:
        datasets.load_boston(data_dir=root)
    assert mirror.as_uri() in str(info.value) and "deleted" in str(info.value)
    assert os.listdir(root / "boston_housing") == []


def test_download_network_failure_names_urls(tmp_path, monkeypatch):
    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):  # go straight to the closed local port
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT", 5.0)
    urls = [(tmp_path / "gone").as_uri() + "/", "http://127.0.0.1:9/"]
    monkeypatch.setitem(datasets.MIRRORS, "melbourne_temp", urls)
    root = tmp_path / "cache"
    with pytest.raises(datasets.DownloadError) as info:
        datasets.load_series("melbourne", data_dir=root)
    assert isinstance(info.value, OSError)
    for url in urls:
        assert url + "daily-min-temperatures.csv" in str(info.value)
    assert os.listdir(root / "melbourne_temp") == []


def test_malformed_mirror_url_leaves_no_file_or_descriptor(tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.MIRRORS, "boston_housing", ["not-a-url/"])
    root = tmp_path / "cache"
    descriptors = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(datasets.DownloadError, match="not-a-url/housing.csv"):
            datasets.load_boston(data_dir=root)
    assert len(os.listdir("/proc/self/fd")) == descriptors
    assert os.listdir(root / "boston_housing") == []


def test_a_directory_where_the_file_belongs_is_named(tmp_path):
    (tmp_path / "boston_housing" / "housing.csv").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="housing.csv should be the file boston_housing/housing.csv"):
        datasets.load_boston(data_dir=tmp_path)
    assert os.listdir(tmp_path / "boston_housing") == ["housing.csv"]


# ---------------------------------------------------------------------------------------------------------------
# Malformed CSV files

BOSTON_ROW = "0.00632,18.00,2.310,0,0.5380,6.5750,65.20,4.0900,1,296.0,15.30,396.90,4.98,24.00"


@pytest.mark.parametrize(
    "text, message",
    [
        (f"{BOSTON_ROW}\n{BOSTON_ROW}\n{BOSTON_ROW[:-6]}\n", "line 3: 13 columns, expected 14"),
        (f"{BOSTON_ROW}\n{BOSTON_ROW.replace('18.00', 'abc')}\n", "line 2: 'abc' is not a number"),
        (f"{BOSTON_ROW.replace('18.00', 'nan')}\n", "line 1: 'nan' is not a finite number"),
        (f"{BOSTON_ROW.replace('18.00,', '18.00,,')}\n", "line 1: 15 columns"),
        ("\n\n", "no data rows"),
    ],
    ids=["column count", "non-numeric", "nan", "empty field", "empty"],
)
def test_boston_malformed(tmp_path, monkeypatch, text, message):
    path = install(monkeypatch, tmp_path, "boston_housing", "housing.csv", text)
    with pytest.raises(datasets.DatasetError, match=message) as info:
        datasets.load_boston(data_dir=tmp_path, download=False)
    assert str(path) in str(info.value)


def test_boston_whitespace_separated(real, tmp_path, monkeypatch):
    original = datasets.load_boston(data_dir=real, download=False)
    text = (real / "boston_housing" / "housing.csv").read_text().replace(",", "   ")
    install(monkeypatch, tmp_path, "boston_housing", "housing.csv", text + "\n\n")
    spaced = datasets.load_boston(data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(spaced.x, original.x)
    np.testing.assert_array_equal(spaced.y, original.y)


@pytest.mark.parametrize(
    "text, message",
    [
        ('"Month","Spots"\n"1749-01",58.0\n', r"line 1: header \['Month', 'Spots'\]"),
        ("", "line 1: header None"),
        ('"Month","Sunspots"\n"1749-01",58.0\n"1749-02",?0.2\n', "line 3: '\\?0.2' is not a number"),
        ('"Month","Sunspots"\r\n"1749-01",58.0\r\n"1749-2",62.6\r\n', "line 3: bad month '1749-2'"),
        ('"Month","Sunspots"\n"1749-01",58.0\n"1749-13",62.6\n', "line 3: bad month '1749-13'"),
        ('"Month","Sunspots"\n"1749-01",58.0\n"1749-02",62.6,1\n', "line 3: 3 columns, expected 2"),
        ('"Month","Sunspots"\n"1749-02",58.0\n"1749-01",62.6\n', "line 3: 1749-01 does not follow 1749-02"),
        ('"Month","Sunspots"\n\n', "no data rows"),
    ],
    ids=["header", "empty", "non-numeric", "date format", "month 13", "columns", "order", "no rows"],
)
def test_series_malformed(tmp_path, monkeypatch, text, message):
    path = install(monkeypatch, tmp_path, "sunspots", "monthly-sunspots.csv", text)
    with pytest.raises(datasets.DatasetError, match=message) as info:
        datasets.load_series("sunspots", data_dir=tmp_path, download=False)
    assert str(path) in str(info.value)


def test_series_quoted_values_and_blank_lines(tmp_path, monkeypatch):
    text = '"Date","Temp"\r\n"1981-01-01","20.7"\r\n\r\n"1981-01-02",17.9\r\n'
    install(monkeypatch, tmp_path, "melbourne_temp", "daily-min-temperatures.csv", text)
    series = datasets.load_series("melbourne", data_dir=tmp_path, download=False)
    assert series.values.tolist() == [20.7, 17.9]
    assert series.times.tolist() == [np.datetime64("1981-01-01").item(), np.datetime64("1981-01-02").item()]


# ---------------------------------------------------------------------------------------------------------------
# Dataset, dispatcher


def toy_dataset(n=20):
    return datasets.Dataset(np.arange(2 * n, dtype=float).reshape(n, 2), np.arange(n) % 3, "toy", "classification", 3)


def test_dataset_subset_split_one_hot():
    data = toy_dataset()
    assert len(data.subset([3, 1])) == 2 and data.subset([3, 1]).y.tolist() == [0, 1]
    assert len(data.subset(data.y == 0)) == 7 and len(data.subset(slice(5))) == 5
    rest, held = data.split(0.25, rng=1)
    assert (len(rest), len(held)) == (15, 5)
    assert sorted(rest.x[:, 0].tolist() + held.x[:, 0].tolist()) == data.x[:, 0].tolist()
    assert np.all(np.diff(held.x[:, 0]) > 0)  # original order kept
    again = data.split(0.25, rng=1)[1]
    np.testing.assert_array_equal(again.x, held.x)
    assert not np.array_equal(data.split(0.25, rng=2)[1].x, held.x)
    assert held.name == "toy" and held.num_classes == 3
    hot = data.one_hot()
    assert hot.shape == (20, 3) and hot.dtype == np.float32
    np.testing.assert_array_equal(hot.argmax(axis=1), data.y)
    assert hot.sum() == 20
    assert "toy" in repr(data) and "(20, 2)" in repr(data)


def test_dataset_errors():
    data = toy_dataset()
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        data.split(1.0)
    with pytest.raises(ValueError, match="empty part"):
        data.split(0.01)
    with pytest.raises(ValueError, match="boolean mask"):
        data.subset(np.ones(3, bool))
    with pytest.raises(ValueError, match="x has 2 examples but y has 3"):
        datasets.Dataset(np.zeros((2, 1)), np.zeros(3), "bad", "regression")
    with pytest.raises(ValueError, match="num_classes >= 1"):
        datasets.Dataset(np.zeros((2, 1)), np.zeros(2, int), "bad", "classification")
    with pytest.raises(ValueError, match="'classification' or 'regression'"):
        datasets.Dataset(np.zeros((2, 1)), np.zeros(2), "bad", "clustering")
    with pytest.raises(ValueError, match="feature_names"):
        datasets.Dataset(np.zeros((2, 3)), np.zeros(2), "bad", "regression", feature_names=("a", "b"))
    with pytest.raises(ValueError, match="needs class labels"):
        datasets.Dataset(np.zeros((2, 1)), np.zeros(2), "reg", "regression").one_hot()
    with pytest.raises(ValueError, match="outside \\[0, 2\\)"):
        datasets.Dataset(np.zeros((2, 1)), np.array([0, 2]), "c", "classification", 2).one_hot()
    with pytest.raises(ValueError, match=r"one integer class label.*float64 \(whole-valued floats"):
        datasets.Dataset(np.zeros((2, 1)), np.array([1.5, 0.0]), "c", "classification", 2)
    with pytest.raises(ValueError, match=r"one integer class label.*shape \(2, 2\)"):
        datasets.Dataset(np.zeros((2, 1)), np.eye(2, dtype=int), "c", "classification", 2)
    with pytest.raises(ValueError, match=r"x holds one number or array of numbers per example.*dtype <U1"):
        datasets.Dataset(np.array(["a", "b"]), np.zeros(2), "s", "regression")
    listed = datasets.Dataset([[0.5], [1.5]], [1.0, 2.0], "lists", "regression")  # array-likes become arrays
    assert listed.x.shape == (2, 1) and listed.y.dtype == np.float64
    with pytest.raises(ValueError, match="a Dataset's x contains 1 NaN/Inf"):
        datasets.Dataset([[np.nan], [1.0]], [1.0, 2.0], "nan", "regression")
    with pytest.raises(ValueError, match="a Dataset's y contains 2 NaN/Inf"):
        datasets.Dataset([[0.0], [1.0]], [np.inf, -np.inf], "inf", "regression")


def test_time_series_converts_and_checks_its_arrays():
    series = datasets.TimeSeries([1, 2.5], list(np.array(["2000-01-01", "2000-01-02"], "datetime64[D]")), "toy", "m")
    assert series.values.dtype == np.float64 and series.times.dtype.kind == "M" and len(series) == 2
    import datetime

    dated = datasets.TimeSeries([1.0, 2.0], [datetime.date(2000, 1, 1), datetime.date(2000, 1, 2)], "toy", "m")
    assert dated.times.dtype.kind == "M" and dated.times[1] - dated.times[0] == np.timedelta64(1, "D")
    assert datasets.TimeSeries([1.0], ["2000-01-01"], "toy", "m").times.dtype.kind == "M"
    with pytest.raises(ValueError, match="times must be datetimes .*: Error parsing datetime string"):
        datasets.TimeSeries([1.0], ["yesterday"], "toy", "m")
    with pytest.raises(ValueError, match=r"times must be datetimes \(datetime64, .*\); got dtype int64"):
        datasets.TimeSeries([1.0, 2.0], np.array([0, 1]), "toy", "m")
    with pytest.raises(ValueError, match="values contains 1 NaN/Inf"):
        datasets.TimeSeries([1.0, np.nan], np.array(["2000-01-01", "2000-01-02"], "datetime64[D]"), "toy", "m")


def test_load_dispatcher(real):
    assert datasets.available() == ("mnist", "fashion-mnist", "mnist-small", "boston")
    assert datasets.load("mnist-small").name == "mnist-small-train"
    assert datasets.load("MNIST_small", "test", flatten=False).x.shape == (1000, 1, 28, 28)
    for name in datasets.available():  # the same keywords work for every name
        assert len(datasets.load(name, data_dir=real, download=False)) > 0
    assert datasets.load("fashion-mnist", "test", data_dir=real, download=False).name == "fashion-mnist-test"
    assert datasets.load("boston", data_dir=real, download=False).x.shape == (506, 13)
    with pytest.raises(ValueError, match="no train/test split"):
        datasets.load("boston", "test")
    with pytest.raises(ValueError, match="known: mnist, fashion-mnist, mnist-small, boston"):
        datasets.load("cifar10")


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing


def test_standardizer(rng):
    x = rng.normal(5.0, 3.0, size=(200, 4))
    x[:, 1] = 7.0  # constant
    x[:, 2] = 0.0  # all zero
    scaler = datasets.Standardizer()
    z = scaler.fit_transform(x)
    np.testing.assert_allclose(z[:, [0, 3]].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[:, [0, 3]].std(axis=0), 1.0, rtol=1e-12)
    assert np.all(z[:, [1, 2]] == 0.0)
    np.testing.assert_allclose(scaler.inverse_transform(z), x, rtol=1e-13, atol=1e-13)
    new = np.array([[5.0, 8.0, 1.0, 5.0]])
    assert scaler.transform(new)[0, 1] == 1.0 and scaler.transform(new)[0, 2] == 1.0  # centred, not amplified
    z32 = scaler.transform(x.astype(np.float32))
    assert z32.dtype == np.float32
    assert scaler.transform(x.astype(int)).dtype == np.float64
    assert "features=(4,)" in repr(scaler)


def test_standardizer_errors():
    scaler = datasets.Standardizer()
    with pytest.raises(RuntimeError, match="before fit"):
        scaler.transform(np.zeros((2, 2)))
    scaler.fit(np.arange(6.0).reshape(3, 2))
    with pytest.raises(ValueError, match=r"fitted on \(N, \*\(2,\)\)"):
        scaler.transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        datasets.Standardizer().fit(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="x contains 1 NaN/Inf"):
        scaler.transform(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="values contains 1 NaN/Inf"):
        datasets.windows(np.array([1.0, np.nan, 3.0, 4.0, 5.0]), 2)
    with pytest.raises(ValueError, match="at least one example"):
        datasets.Standardizer().fit(np.zeros((0, 3)))


def test_minmax_scale():
    values = np.array([2.0, 4.0, 6.0])
    scaled, (lo, hi) = datasets.minmax_scale(values)
    assert scaled.tolist() == [0.0, 0.5, 1.0] and (lo, hi) == (2.0, 6.0)
    again, bounds = datasets.minmax_scale(np.array([4.0, 10.0]), lo=lo, hi=hi)
    assert again.tolist() == [0.5, 2.0] and bounds == (2.0, 6.0)
    assert datasets.minmax_scale(np.array([0, 5], dtype=np.int32))[0].dtype == np.float64
    assert datasets.minmax_scale(np.array([0, 5], dtype=np.float32))[0].dtype == np.float32
    with pytest.raises(ValueError, match="lo < hi"):
        datasets.minmax_scale(np.ones(4))
    with pytest.raises(ValueError, match="empty"):
        datasets.minmax_scale(np.array([]))


def epoch(n, batch_size, **kwargs):
    return [b.tolist() for b in datasets.batches(n, batch_size, **kwargs)]


def test_batches():
    ordered = epoch(23, 5)
    assert ordered[0] == [0, 1, 2, 3, 4] and ordered[-1] == [20, 21, 22] and len(ordered) == 5
    shuffled = epoch(23, 5, rng=7)
    assert sorted(sum(shuffled, [])) == list(range(23)) and [len(b) for b in shuffled] == [5, 5, 5, 5, 3]
    assert shuffled == epoch(23, 5, rng=7)  # reproducible from the seed
    assert shuffled != epoch(23, 5, rng=8) and shuffled != ordered
    generator = np.random.default_rng(3)
    first, second = epoch(23, 5, rng=generator), epoch(23, 5, rng=generator)
    assert first != second and sorted(sum(second, [])) == list(range(23))  # a new order each epoch
    replay = np.random.default_rng(3)
    assert [epoch(23, 5, rng=replay), epoch(23, 5, rng=replay)] == [first, second]
    dropped = epoch(23, 5, rng=7, drop_last=True)
    assert dropped == shuffled[:4]
    assert epoch(0, 4) == [] and epoch(3, 10, drop_last=True) == []
    with pytest.raises(ValueError, match="batch_size >= 1"):
        datasets.batches(10, 0)
    with pytest.raises(TypeError):
        datasets.batches(10.5, 2)


def test_windows():
    X, Y = datasets.windows(np.arange(10.0), 3, horizon=2)
    assert X.shape == (6, 3, 1) and Y.shape == (6, 2) and X.dtype == Y.dtype == np.float64
    assert X[0, :, 0].tolist() == [0, 1, 2] and Y[0].tolist() == [3, 4]
    assert X[-1, :, 0].tolist() == [5, 6, 7] and Y[-1].tolist() == [8, 9]
    X1, Y1 = datasets.windows(np.arange(5, dtype=np.int32), 4)
    assert X1.shape == (1, 4, 1) and Y1.tolist() == [[4.0]] and X1.dtype == np.float64
    assert datasets.windows(np.arange(5, dtype=np.float32), 2)[0].dtype == np.float32
    X1[0, 0, 0] = 99.0  # writable, independent arrays, not overlapping views of the series
    assert Y1[0, 0] == 4.0
    with pytest.raises(ValueError, match="too short"):
        datasets.windows(np.arange(4.0), 4)
    with pytest.raises(ValueError, match="1-D"):
        datasets.windows(np.zeros((4, 2)), 2)
