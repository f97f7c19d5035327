"""How far the labels alone carry a dataset: leave-one-subject-out logistic regression on the
difference images' pixels, with no encoder and no pre-training.

Every labeled sample of the LOSO lists (each subject's `_test.txt`, both views) is decoded,
shrunk to `--size` pixels a side, and its RGB and second-view pixels are concatenated into one
vector; for each subject, a standardiser and an L2-regularised logistic regression are fitted on
the other subjects' samples and predict that subject's. UF1 and UAR are pooled over all
predictions, as the LOSO scripts report them, once per inverse regularisation strength `--C`.

    python scripts/experiments/pixel_baseline.py --data_folder out/demo/default/data [--size 16] [--C 0.01 0.1 1]

A baseline that an encoder's frozen features do not beat says more about the features than about
the labels: docs/findings/realistic-regime.md has the synthetic data's numbers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import dataset  # noqa: E402
from evaluation.metrics import compute_metrics  # noqa: E402
from util import POSITIVE, POSITIVE_INT, ArgumentParser, UserError, run_cli  # noqa: E402


def pixel_vectors(samples: list[dataset.Sample], size: int) -> np.ndarray:
    """(N, 3 size^2 [+ size^2]) float32 in [-0.5, 0.5]: each sample's RGB pixels, then its second
    view's when it has one."""
    rows = []
    for sample in samples:
        parts = [dataset.decode_rgb(sample.rgb_path, size, sample.rgb_source).ravel() / 255.0]
        if sample.depth_path is not None:
            parts.append(dataset.decode_depth(sample.depth_path, size, sample.depth_source).ravel() / 65535.0)
        rows.append(np.concatenate(parts) - 0.5)
    return np.asarray(rows, dtype=np.float32)


def loso_predictions(x: np.ndarray, labels: np.ndarray, subjects: np.ndarray,
                     inverse_strength: float) -> np.ndarray:
    """Predicted label (N,) of every sample by a model fitted on the other subjects' samples;
    x (N, D), labels and subjects (N,)."""
    predictions = np.empty_like(labels)
    for subject in np.unique(subjects):
        test = subjects == subject
        scaler = StandardScaler().fit(x[~test])
        model = LogisticRegression(C=inverse_strength, max_iter=5000)
        model.fit(scaler.transform(x[~test]), labels[~test])
        predictions[test] = model.predict(scaler.transform(x[test]))
    return predictions


def check_size(size: int, sample: dataset.Sample) -> None:
    """A `UserError` when `size` is larger than the (first) sample's RGB image: the baseline shrinks
    images, and enlarging them would only cost memory (quadratically in `size`)."""
    try:
        with Image.open(sample.rgb_path) as image:
            width, height = image.size
    except OSError:
        return  # decoding reports the file
    if size > min(width, height):
        raise UserError(f"--size {size}: larger than the images ({width}x{height} px, e.g. {sample.rgb_path}); "
                        f"use at most {min(width, height)}")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_folder", type=str, required=True, help="root the list paths are relative to")
    parser.add_argument("--list_folder", type=str, default=None,
                        help="folder with v_rgb/ and the second view's lists (default: DATA_FOLDER/data)")
    parser.add_argument("--view", choices=sorted(dataset.SECOND_VIEW_LISTS), default="RGB_D",
                        help="second view of each sample (RGB: none)")
    parser.add_argument("--size", type=POSITIVE_INT, default=16,
                        help="side, in pixels, the images are shrunk to (at most the images' own side)")
    parser.add_argument("--C", type=POSITIVE, nargs="+", default=[0.01, 0.1, 1.0],
                        help="inverse regularisation strengths to report")
    args = parser.parse_args(argv)
    second = dataset.SECOND_VIEW_LISTS[args.view]
    list_folder = dataset.find_list_folder(args.data_folder, args.list_folder, second)
    samples = dataset.load_labeled(list_folder, Path(args.data_folder), dataset.subject_names(list_folder),
                                   second=second)
    if not samples:
        raise UserError(f"{list_folder / dataset.RGB_LISTS}: the test lists hold no sample")
    labels = np.array([sample.label for sample in samples])
    subjects = np.array([sample.subject for sample in samples])
    if len(np.unique(subjects)) < 2:
        raise UserError(f"{list_folder / dataset.RGB_LISTS}: LOSO needs at least two subjects with samples")
    n_classes = int(labels.max()) + 1
    dataset.check_labels(samples, n_classes)
    check_size(args.size, samples[0])
    x = pixel_vectors(samples, args.size)
    print(f"{len(samples)} samples, {len(np.unique(subjects))} subjects, per class "
          f"{np.bincount(labels, minlength=n_classes).tolist()}, {x.shape[1]} pixels each")
    for inverse_strength in args.C:
        metrics = compute_metrics(labels, loso_predictions(x, labels, subjects, inverse_strength), n_classes)
        print(f"C {inverse_strength:g}: acc {metrics['acc']:.3f}, UF1 {metrics['uf1']:.3f}, UAR {metrics['uar']:.3f}")


if __name__ == "__main__":
    run_cli(main)
