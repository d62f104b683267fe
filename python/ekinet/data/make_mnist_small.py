"""Build mnist_small.npz, the MNIST subset that ekinet.datasets.load_mnist_small reads.

A seeded, class-stratified sample of the original MNIST files: 600 digits of each class from the 60000 training
images and 100 of each class from the 10000 test images, kept in their original order and stored as uint8 with
np.savez_compressed (about 1.2 MB). Tests and examples get real digits with no network or data directory, and the
balanced classes make small-sample accuracies comparable.

The npz holds x_train (6000, 28, 28) uint8, y_train (6000,) uint8, x_test (1000, 28, 28), y_test (1000,),
train_index / test_index (each digit's position in the original file), seed and source (the provenance). The
arrays are reproducible from the seed (the zip timestamps inside the file are not). Rebuild from the repository
root with

    PYTHONPATH=python python python/ekinet/data/make_mnist_small.py --data-dir ../shared/data
"""

import argparse
from pathlib import Path

import numpy as np

from ekinet import datasets

SEED = 0
TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 100


def stratified_indices(labels, per_class, rng):
    """Sorted indices of `per_class` examples of each class 0..9, drawn without replacement."""
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(chosen))


def build(data_dir=None, *, seed=SEED):
    """The arrays of mnist_small.npz, from the verified MNIST files in `data_dir` (see ekinet.datasets.data_dir)."""
    arrays = {"seed": np.int64(seed)}
    sums = []
    for split, prefix, per_class, stream in (
        ("train", "train", TRAIN_PER_CLASS, 0),
        ("test", "t10k", TEST_PER_CLASS, 1),
    ):
        images_file, labels_file = f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"
        images = datasets.read_idx(datasets.fetch("mnist", images_file, data_dir))
        labels = datasets.read_idx(datasets.fetch("mnist", labels_file, data_dir))
        index = stratified_indices(labels, per_class, np.random.default_rng([seed, stream]))
        arrays[f"x_{split}"], arrays[f"y_{split}"], arrays[f"{split}_index"] = images[index], labels[index], index
        sums += [f"{f} (sha256 {datasets.CHECKSUMS['mnist'][f]})" for f in (images_file, labels_file)]
    arrays["source"] = np.array(
        "MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), http://yann.lecun.com/exdb/mnist/, commonly distributed "
        f"under CC BY-SA 3.0. Subset of {TRAIN_PER_CLASS} train and {TEST_PER_CLASS} test digits per class, "
        f"drawn by ekinet/data/make_mnist_small.py with numpy.random.default_rng([{seed}, 0 train / 1 test]) "
        "from " + "; ".join(sums) + ". train_index/test_index: positions in those files."
    )
    return arrays


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="directory holding mnist/ (default: $EKINET_DATA or the cache)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("mnist_small.npz"))
    args = parser.parse_args(argv)
    np.savez_compressed(args.out, **build(args.data_dir, seed=args.seed))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
