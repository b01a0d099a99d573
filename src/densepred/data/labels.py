"""Label sets of NYUD-v2 and Taskonomy, the official NYUD 894->40 class map, label boundaries.

Facts from the NYUD-v2 `classMapping40.mat` (Gupta et al.) and the Taskonomy semantic label list
(docs/data-formats.md §1.3 and §3.2). Everything here is a pure function of its input; the tables
are module constants, never mutated.

Training ids follow the multi-task convention (docs/data-formats.md §1.3 and §3.2): NYUD raw 0
(void) -> 255, 1..40 -> 0..39; Taskonomy 0 (uncertain) -> 255, 1..17 -> 0..16.
"""

from __future__ import annotations

import numpy as np

from densepred.tasks import IGNORE_INDEX

# 40-class NYUD-v2 names; NYU40_CLASSES[k - 1] is the name of class id k (0 = void).
NYU40_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub",
    "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip

# Taskonomy `segment_semantic` ids 0..17 (0 = uncertain, ignored in training; 1 = background).
TASKONOMY_CLASSES: tuple[str, ...] = (
    "uncertain", "background", "bottle", "chair", "couch", "potted plant", "bed", "dining table",
    "toilet", "tv", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
)  # fmt: skip

NYU_RAW_NUM_CLASSES = 894

# The first 40 of the 894 raw NYUD-v2 names (`names` in the .mat, `allClassName` in Gupta et al.'s
# `classMapping40.mat`). The rest are not recorded here; writers use a placeholder for them and
# readers never need names.
NYU_RAW_NAMES_KNOWN: dict[int, str] = {
    1: "book", 2: "bottle", 3: "cabinet", 4: "ceiling", 5: "chair", 6: "cone", 7: "counter",
    8: "dishwasher", 9: "faucet", 10: "fire extinguisher", 11: "floor", 12: "garbage bin",
    13: "microwave", 14: "paper towel dispenser", 15: "paper", 16: "pot", 17: "refridgerator",
    18: "stove burner", 19: "table", 20: "unknown", 21: "wall", 22: "bowl", 23: "magnet", 24: "sink",
    25: "air vent", 26: "box", 27: "door knob", 28: "door", 29: "scissor", 30: "tape dispenser",
    31: "telephone cord", 32: "telephone", 33: "track light", 34: "cork board", 35: "cup", 36: "desk",
    37: "laptop", 38: "air duct", 39: "basket", 40: "camera",
}  # fmt: skip

# `mapClass` of classMapping40.mat: entry k (1-based) is the 40-class id of raw label k.
_MAP_894_TO_40 = """
  1- 30: 40 40 3 22 5 40 12 38 40 40 2 39 40 40 26 40 24 40 7 40 1 40 40 34 38 29 40 8 40 40
 31- 60: 40 40 38 40 40 14 40 38 40 40 40 15 39 40 30 40 40 39 40 39 38 40 38 40 37 40 38 38 9 40
 61- 90: 40 38 40 11 38 40 40 40 40 40 40 40 40 40 40 40 40 40 38 13 40 40 6 40 23 40 39 10 16 40
 91-120: 40 40 40 38 40 40 40 40 40 40 40 40 40 38 40 39 40 40 40 40 39 38 40 40 40 40 40 40 18 40
121-150: 40 19 28 33 40 40 40 40 40 40 40 40 40 38 27 36 40 40 40 40 21 40 20 35 40 40 40 40 40 40
151-180: 40 40 38 40 40 40 4 32 40 40 39 40 39 40 40 40 40 40 17 40 40 25 40 39 40 40 40 40 40 40
181-210: 40 40 39 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 39 40 40 40 40 40 40
211-240: 40 40 40 39 38 38 40 40 39 40 39 40 38 39 38 40 40 40 40 40 40 40 40 40 40 39 40 38 40 40
241-270: 38 38 40 40 40 40 40 40 40 40 40 40 40 40 40 38 40 40 40 40 40 39 40 40 40 40 40 40 40 40
271-300: 40 40 40 40 40 40 40 39 40 40 40 40 40 40 40 40 40 40 40 40 39 40 40 40 38 40 40 39 40 40
301-330: 38 40 40 40 40 40 40 40 40 40 40 40 39 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40
331-360: 31 40 40 40 40 40 40 40 38 40 40 38 39 39 40 40 40 40 40 40 40 40 40 38 40 39 40 40 39 40
361-390: 40 40 38 40 40 40 40 40 40 40 40 38 39 40 40 40 40 40 40 38 40 40 40 40 40 40 40 40 40 40
391-420: 40 38 39 40 40 40 40 40 40 40 39 40 40 40 40 40 40 38 40 40 40 38 40 39 40 40 40 39 39 40
421-450: 40 40 40 40 40 40 40 40 40 39 40 40 40 40 40 40 40 40 40 40 40 40 39 39 40 40 39 39 40 40
451-480: 40 40 38 40 40 38 39 39 40 39 40 39 38 40 40 40 40 40 40 40 40 40 40 40 39 40 38 40 39 40
481-510: 40 40 40 40 39 39 40 40 40 40 40 40 39 39 40 40 38 39 39 40 40 40 40 40 40 40 40 40 39 39
511-540: 40 40 40 40 39 40 40 40 40 40 39 40 40 39 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 39
541-570: 38 40 40 40 40 40 40 40 39 38 39 40 38 39 40 39 40 39 40 40 40 40 40 40 40 40 38 40 40 40
571-600: 40 40 38 40 40 39 40 40 40 39 40 38 40 40 40 40 40 40 40 40 38 40 40 40 40 40 40 40 40 40
601-630: 40 40 40 40 40 40 40 39 38 40 40 38 40 40 38 40 40 40 40 40 40 40 40 40 39 40 40 40 40 40
631-660: 40 40 40 40 40 40 40 40 40 40 40 38 40 40 38 40 40 40 40 40 40 40 40 40 40 40 38 38 38 40
661-690: 40 40 38 40 40 40 38 38 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 38 40 40 40 40
691-720: 40 40 40 40 40 40 40 40 40 38 40 38 39 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40
721-750: 40 40 40 40 40 40 40 40 40 40 40 40 40 39 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40
751-780: 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 40 39 40 39 40 40 40 40 38 38 40 40
781-810: 40 38 40 40 40 40 40 40 40 40 40 40 40 40 40 40 39 40 40 39 40 40 39 39 40 40 40 40 40 40
811-840: 40 40 39 39 39 40 40 40 40 39 40 40 40 40 40 40 40 40 39 40 40 40 40 40 39 40 40 40 40 40
841-870: 40 40 40 40 40 40 40 40 40 38 40 40 40 40 40 40 40 39 40 40 38 40 39 40 40 40 40 38 40 40
871-894: 40 40 40 38 40 40 40 40 40 40 40 39 40 40 40 40 40 40 40 40 40 39 40 40
"""


def _parse_map_894_to_40() -> np.ndarray:
    values: list[int] = []
    for line in _MAP_894_TO_40.strip().splitlines():
        span, numbers = line.split(":")
        first, last = (int(v) for v in span.split("-"))
        row = [int(v) for v in numbers.split()]
        if len(row) != last - first + 1 or first != len(values) + 1:
            raise AssertionError(f"corrupt 894->40 table row {line!r}")
        values.extend(row)
    table = np.zeros(NYU_RAW_NUM_CLASSES + 1, dtype=np.uint8)
    table[1:] = values
    return table


# MAP_894_TO_40[raw] = 40-class id; index 0 (void) stays 0. Length 895.
MAP_894_TO_40: np.ndarray = _parse_map_894_to_40()
MAP_894_TO_40.setflags(write=False)


def raw_ids_of_class40(class40: int) -> np.ndarray:
    """All raw 894-class ids that the official table maps to 40-class id `class40` (1..40)."""
    if not 1 <= class40 <= len(NYU40_CLASSES):
        raise ValueError(f"40-class id {class40} out of range; expected 1..{len(NYU40_CLASSES)}")
    return np.flatnonzero(class40 == MAP_894_TO_40)


def nyu_raw_to_40(labels: np.ndarray, source: str = "labels") -> np.ndarray:
    """Map raw NYUD-v2 labels (0..894) to the 40-class set (0..40) with the official table.

    Raises ValueError naming `source` when a value lies outside 0..894 (never a silent wrong label).
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > NYU_RAW_NUM_CLASSES):
        raise ValueError(
            f"{source}: raw NYUD label out of range [{labels.min()}, {labels.max()}]; "
            f"expected 0..{NYU_RAW_NUM_CLASSES}"
        )
    return MAP_894_TO_40[labels.astype(np.int64)]


def to_train_ids(labels: np.ndarray, num_classes: int, source: str = "labels") -> np.ndarray:
    """Shift stored labels 0..num_classes to training ids: 0 -> 255 (ignore), k -> k - 1, as int64.

    Used for NYUD 40-class PNGs (num_classes 40) and Taskonomy `segment_semantic` (num_classes 17).
    Raises ValueError naming `source` for values outside 0..num_classes.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(
            f"{source}: semantic label out of range [{labels.min()}, {labels.max()}]; "
            f"expected 0..{num_classes} (0 = unlabelled)"
        )
    out = labels.astype(np.int64) - 1
    out[out < 0] = IGNORE_INDEX
    return out


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Boolean map of pixels that differ from at least one 4-neighbour (both sides of a boundary).

    Boundaries are therefore two pixels wide and symmetric, so that a horizontal flip of the labels
    flips the boundary map exactly. Used to write NYUD edge maps from (label, instance) and to derive
    Taskonomy edges from `segment_semantic` (Taskonomy ships no semantic boundary maps).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label_boundaries expects a (H, W) array, got shape {labels.shape}")
    edge = np.zeros(labels.shape, dtype=bool)
    horizontal = labels[:, 1:] != labels[:, :-1]
    vertical = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge
