"""FER2013 faces as uint8 arrays, cached, with labels in the RAVDESS emotion order.

    >>> from training.fer2013 import load_split
    >>> s = load_split("../shared/data/fer2013", "train")      # doctest: +SKIP
    >>> s.x.shape, s.x.dtype, s.y[:3]                           # doctest: +SKIP
    ((28709, 48, 48), dtype('uint8'), array([4, 4, 4]))

Layout: ``<root>/{train,validation}/<fer class>/*.jpg``, 48x48 grey (the Kaggle "Training" and
"PublicTest" splits). A split is decoded once and cached as ``.npz`` in ``cache_dir()/fer2013``,
keyed by a hash of its sorted file list (relative paths and sizes), so a changed folder is
decoded again and an unchanged one loads in well under a second.

Labels: FER2013's 7 classes map to 7 of the 8 RAVDESS emotions through ``FER_TO_RAVDESS``
(angry->angry, disgust->disgust, fear->fearful, happy->happy, neutral->neutral, sad->sad,
surprise->surprised). RAVDESS "calm" has **no** FER2013 samples: a model trained here keeps the
8-way output of the product (``Params.emotions``) but calm is never a target, so its calm unit
is untrained until the face branch is fine-tuned on RAVDESS video.

Unreadable or wrongly sized images are skipped and counted (``FerSplit.skipped``), never fatal.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.params import Params

log = logging.getLogger(__name__)

FER_SIZE = 48  # px, FER2013 images are 48x48 grey

# The one table: FER2013 class folder -> RAVDESS emotion name (Params.emotions). No "calm".
FER_TO_RAVDESS: dict[str, str] = {
    "angry": "angry",
    "disgust": "disgust",
    "fear": "fearful",
    "happy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "surprise": "surprised",
}

SPLITS = ("train", "validation")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def fer_label_index(fer_class: str, p: Params = Params()) -> int:
    """Index in ``p.emotions`` of a FER2013 class folder name."""
    if fer_class not in FER_TO_RAVDESS:
        raise KeyError(f"unknown FER2013 class {fer_class!r} (known: {', '.join(FER_TO_RAVDESS)})")
    return p.emotions.index(FER_TO_RAVDESS[fer_class])


@dataclass
class FerSplit:
    x: np.ndarray                 # (n, 48, 48) uint8 grey
    y: np.ndarray                 # (n,) int64 index into Params.emotions (never calm)
    files: list[str]              # (n,) paths relative to the split folder
    skipped: list[str] = field(default_factory=list)   # unreadable files, relative paths

    def __len__(self) -> int:
        return len(self.y)


def list_split(root: str | Path, split: str) -> list[tuple[str, str, int]]:
    """Sorted (relative path, fer class, size in bytes) of the images of one split."""
    d = Path(root) / split
    if not d.is_dir():
        raise FileNotFoundError(f"FER2013 split folder {d} is absent (expected <root>/{split}/<class>/*.jpg)")
    out = []
    for cls_dir in sorted(q for q in d.iterdir() if q.is_dir()):
        if cls_dir.name not in FER_TO_RAVDESS:
            log.warning("ignoring unknown FER2013 class folder %s", cls_dir)
            continue
        for f in sorted(cls_dir.iterdir()):
            if f.suffix.lower() in _IMAGE_SUFFIXES:
                out.append((f"{cls_dir.name}/{f.name}", cls_dir.name, f.stat().st_size))
    if not out:
        raise FileNotFoundError(f"no images under {d}/<class>/")
    return out


def files_key(listing: list[tuple[str, str, int]]) -> str:
    h = hashlib.sha256()
    for rel, _, size in listing:
        h.update(f"{rel}\t{size}\n".encode())
    return h.hexdigest()[:16]


def decode(path: Path) -> np.ndarray | None:
    """(48, 48) uint8 grey, or None when the file cannot be read as a 48x48 image."""
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None or img.shape != (FER_SIZE, FER_SIZE):
        return None
    return img


def load_split(root: str | Path, split: str, cache: Path | None = None, p: Params = Params(),
               progress: bool = False) -> FerSplit:
    """Decode (or load from the cache) one split; ``cache=None`` uses ``cache_dir()/fer2013``."""
    if cache is None:
        from training.paths import cache_dir
        cache = cache_dir() / "fer2013"
    listing = list_split(root, split)
    key = files_key(listing)
    f = Path(cache) / f"{split}_{key}.npz"
    if f.is_file():
        try:
            z = np.load(f, allow_pickle=False)
            s = FerSplit(z["x"], z["y"].astype(np.int64), list(z["files"]), list(z["skipped"]))
            log.info("FER2013 %s: %d images from cache %s (%d skipped)", split, len(s), f, len(s.skipped))
            return s
        except (OSError, KeyError, ValueError) as e:
            log.warning("FER2013 cache %s unreadable (%s): decoding again", f, e)
    d = Path(root) / split
    xs, ys, files, skipped = [], [], [], []
    it = listing
    if progress:
        from tqdm import tqdm
        it = tqdm(listing, desc=f"FER2013 {split}", unit="img", mininterval=2.0)
    for rel, cls, _ in it:
        img = decode(d / rel)
        if img is None:
            skipped.append(rel)
            continue
        xs.append(img)
        ys.append(fer_label_index(cls, p))
        files.append(rel)
    if skipped:
        log.warning("FER2013 %s: skipped %d unreadable images (first: %s)", split, len(skipped), skipped[0])
    x = np.stack(xs) if xs else np.zeros((0, FER_SIZE, FER_SIZE), np.uint8)   # (n, 48, 48)
    s = FerSplit(x, np.array(ys, np.int64), files, skipped)
    Path(cache).mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp.npz")
    np.savez(tmp, x=s.x, y=s.y, files=np.array(files, dtype=str), skipped=np.array(skipped, dtype=str))
    tmp.replace(f)
    log.info("FER2013 %s: %d images decoded, %d skipped, cached in %s", split, len(s), len(skipped), f)
    return s


def class_counts(y: np.ndarray, p: Params = Params()) -> dict[str, int]:
    c = np.bincount(y, minlength=p.num_classes)
    return {e: int(c[i]) for i, e in enumerate(p.emotions)}
