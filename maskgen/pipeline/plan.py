"""The plan of a run: its inputs (sorted, fingerprinted) cut into fixed shards, and its config hash.

A plan is made once per OUT_DIR. A re-run makes a candidate plan from the inputs as they
are now and compares it: the same plan resumes; a different one is refused unless
`--overwrite`, so results of two configs never mix in one manifest.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from maskgen.files import open_atomic, write_atomic
from maskgen.pipeline.inputs import Entry, InputError
from maskgen.pipeline.paths import OutputLayout, remove_stale_temps, temp_sibling
from maskgen.schemas import INPUTS_SCHEMA, SCHEMA_VERSION

PLAN_FORMAT = 1
INPUTS_CHUNK_ROWS = 4096  # row group size of inputs.parquet: bounds the planner's memory


class PlanMismatch(RuntimeError):
    """OUT_DIR holds a run whose plan differs from this one (and --overwrite was not given)."""


def maskgen_version() -> str:
    try:
        from importlib.metadata import version

        return version("maskgen")
    except Exception:
        return "0+unknown"


def config_dict(config) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def _output_fields(config) -> dict:
    """The config's fields that change the output: all but those marked same_output (e.g. which
    of two engines with identical results computes the landmarks)."""
    if not dataclasses.is_dataclass(config):
        return dict(config)
    same = {f.name for f in dataclasses.fields(config) if f.metadata.get("same_output")}
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in same}


def config_hash(config) -> str:
    """Hash of everything that changes output bytes: the job config, schema and code version."""
    payload = {"config": _output_fields(config), "schema": SCHEMA_VERSION, "maskgen": maskgen_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    n_inputs: int
    shard_size: int
    fingerprint: str  # sha256 over (identity, path, size, mtime, landmarks) of every input, in order
    config_hash: str
    config: dict
    input_root: str
    input_list: str | None
    has_landmarks: bool
    schema_version: str = SCHEMA_VERSION
    maskgen_version: str = ""
    format: int = PLAN_FORMAT

    @property
    def n_shards(self) -> int:
        return -(-self.n_inputs // self.shard_size)

    def shard_range(self, index: int) -> tuple[int, int]:
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.n_inputs)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _entries_table(chunk: list[Entry]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "identity": [e.identity for e in chunk],
            "rel": [e.rel for e in chunk],
            "landmarks": [e.landmarks for e in chunk],
        },
        schema=INPUTS_SCHEMA,
    )


def _fingerprint_update(hasher, entry: Entry) -> None:
    hasher.update(entry.fingerprint_line())
    if entry.landmarks is not None:
        hasher.update(array.array("f", entry.landmarks).tobytes())


def write_inputs(entries: Iterable[Entry], path: Path) -> tuple[int, str, bool]:
    """Stream `entries` into a Parquet file in fixed chunks; return (count, fingerprint, any landmarks)."""
    hasher = hashlib.sha256()
    count, has_landmarks, chunk = 0, False, []
    with open_atomic(path) as file, pq.ParquetWriter(file, INPUTS_SCHEMA) as writer:
        for entry in entries:
            _fingerprint_update(hasher, entry)
            has_landmarks = has_landmarks or entry.landmarks is not None
            chunk.append(entry)
            if len(chunk) == INPUTS_CHUNK_ROWS:
                writer.write_table(_entries_table(chunk))
                count += len(chunk)
                chunk = []
        if chunk:
            writer.write_table(_entries_table(chunk))
            count += len(chunk)
    return count, hasher.hexdigest(), has_landmarks


def read_inputs_slice(path: Path, start: int, stop: int) -> list[dict]:
    """Rows [start, stop) of inputs.parquet, reading only the row groups that hold them."""
    pf = pq.ParquetFile(path)
    pieces, offset = [], 0
    for group in range(pf.num_row_groups):
        rows = pf.metadata.row_group(group).num_rows
        if offset < stop and offset + rows > start:
            lo, hi = max(start, offset), min(stop, offset + rows)
            pieces.append(pf.read_row_group(group).slice(lo - offset, hi - lo))
        offset += rows
        if offset >= stop:
            break
    return pa.concat_tables(pieces).to_pylist() if pieces else []


def shard_folders(layout: OutputLayout, plan: Plan, indices: Iterable[int]) -> set[str]:
    """The folders (relative to images/) that shards `indices` write into: every output sits
    beside its input's relative path, so only these can hold a killed run's temp files
    (a resume clears them instead of walking all of images/)."""
    folders = set()
    for index in indices:
        for entry in read_inputs_slice(layout.inputs_file, *plan.shard_range(index)):
            folders.add(str(PurePosixPath(entry["rel"]).parent))
    return folders


def load_plan(layout: OutputLayout) -> Plan | None:
    if not layout.plan_file.is_file():
        return None
    return Plan.from_json(layout.plan_file.read_text())


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def plan_differences(old: Plan, new: Plan) -> list[str]:
    """What differs between two plans, in words (empty: the same run)."""
    problems = []
    if old.fingerprint != new.fingerprint:
        count = f"{old.n_inputs} files then, {new.n_inputs} now" if old.n_inputs != new.n_inputs else "same count"
        problems.append(f"the inputs changed ({count})")
    if old.config_hash != new.config_hash:
        a, b = _flatten(old.config), _flatten(new.config)
        changed = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if old.maskgen_version != new.maskgen_version:
            changed.append(f"maskgen {old.maskgen_version} -> {new.maskgen_version}")
        if old.schema_version != new.schema_version:
            changed.append(f"schema {old.schema_version} -> {new.schema_version}")
        problems.append("the config changed (" + ", ".join(changed or ["hash"]) + ")")
    if old.shard_size != new.shard_size:
        problems.append(f"the shard size changed ({old.shard_size} -> {new.shard_size})")
    return problems


def _has_content(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def clear_outputs(layout: OutputLayout, keep: Path | None = None) -> None:
    """Delete what a run wrote (plan file first, so a half-cleared folder is never resumed)."""
    layout.plan_file.unlink(missing_ok=True)
    for folder in layout.owned_dirs():
        if folder == layout.plan_dir:
            for p in folder.iterdir() if folder.is_dir() else ():
                if p != keep:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        elif folder.exists():
            shutil.rmtree(folder)


def auto_shard_size(n_inputs: int, workers: int, cap: int) -> int:
    """Shards of at most `cap` inputs, small enough that each of `workers` gets two or more."""
    return max(1, min(cap, math.ceil(n_inputs / (2 * max(workers, 1)))))


def prepare_plan(
    layout: OutputLayout,
    entries: Iterable[Entry],
    *,
    config,
    shard_size: int | None,
    input_root: Path,
    input_list: Path | None = None,
    overwrite: bool = False,
    workers_hint: int = 1,
    max_shard_size: int = 1000,
    dry_run: bool = False,
) -> tuple[Plan, str]:
    """Plan the run in `layout`; returns (plan, "new" | "resumed" | "replaced").

    `shard_size` None: the shard size of the run in `layout` when it is resumed, else
    auto_shard_size(inputs, workers_hint, max_shard_size).

    Raises PlanMismatch when OUT_DIR holds another run and `overwrite` is false, and
    InputError for inputs that cannot be planned (nothing is written to OUT_DIR then).
    `dry_run`: the same answer, and nothing written to OUT_DIR (not even plan/).
    """
    if shard_size is not None and shard_size < 1:
        raise InputError(f"--shard-size must be at least 1, got {shard_size}")
    if not dry_run:
        layout.plan_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(layout.plan_dir)
    with _scratch_inputs(layout, dry_run) as tmp:
        n_inputs, fingerprint, has_landmarks = write_inputs(entries, tmp)
        if n_inputs == 0:
            raise InputError(f"no input images found in {input_list or input_root}")
        existing = load_plan(layout)
        if shard_size is None:
            resumable = existing is not None and not overwrite
            shard_size = existing.shard_size if resumable else auto_shard_size(n_inputs, workers_hint, max_shard_size)
        candidate = Plan(
            n_inputs=n_inputs,
            shard_size=shard_size,
            fingerprint=fingerprint,
            config_hash=config_hash(config),
            config=json.loads(json.dumps(config_dict(config), default=str)),
            input_root=str(Path(input_root).resolve()),
            input_list=str(Path(input_list).resolve()) if input_list else None,
            has_landmarks=has_landmarks,
            maskgen_version=maskgen_version(),
        )
        outcome = "new"
        if existing is not None:
            problems = plan_differences(existing, candidate)
            if not problems:
                return existing, "resumed"
            if not overwrite:
                raise PlanMismatch(
                    f"{layout.root} holds a run with a different plan: {'; '.join(problems)}. "
                    f"Re-run with --overwrite to replace it, or choose another output folder."
                )
            outcome = "replaced"
        elif any(_has_content(d) for d in (layout.images, layout.manifest, layout.stats, layout.rec, layout.wds)):
            if not overwrite:
                raise PlanMismatch(
                    f"{layout.root} holds images/manifest/stats but no plan file (an unknown or broken run). "
                    f"Re-run with --overwrite to replace them, or choose another output folder."
                )
            outcome = "replaced"
        if dry_run:
            return candidate, outcome
        if outcome == "replaced":
            clear_outputs(layout, keep=tmp)
        tmp.replace(layout.inputs_file)
        write_atomic(layout.plan_file, candidate.to_json().encode())
        return candidate, outcome


@contextlib.contextmanager
def _scratch_inputs(layout: OutputLayout, dry_run: bool):
    """Where the candidate inputs.parquet is written: beside the real one (renamed into place
    when the plan is new), or, for a dry run, in a temp folder outside OUT_DIR."""
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="maskgen-plan-") as folder:
            yield Path(folder) / "inputs.parquet"
        return
    tmp = temp_sibling(layout.inputs_file)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def retry_plan(
    layout: OutputLayout,
    entries: Iterable[Entry],
    *,
    config,
    may_change: Iterable[str],
    shard_size: int | None,
) -> Plan:
    """The run in `layout` as `--retry-failed` redoes it: its plan, with the fingerprint of the
    inputs as they are now (a replaced bad file changes it). Nothing is written.

    Raises InputError without a run, PlanMismatch when the inputs are not the same list or
    the config differs in more than the fields in `may_change` (and those that never change
    the output)."""
    existing = load_plan(layout)
    if existing is None:
        raise InputError(f"{layout.root} holds no run to retry (no plan/plan.json): run without --retry-failed")
    with _scratch_inputs(layout, dry_run=True) as tmp:
        _, fingerprint, _ = write_inputs(entries, tmp)
        problems = [] if _same_inputs(tmp, layout.inputs_file) else [
            "the inputs are not the same list (--retry-failed redoes failed inputs; it adds or removes none)"
        ]
    if shard_size is not None and shard_size != existing.shard_size:
        problems.append(f"the shard size changed ({existing.shard_size} -> {shard_size})")
    ignored = set(may_change) | _same_output_fields(config)
    old, new = existing.config, json.loads(json.dumps(config_dict(config), default=str))
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if k not in ignored and old.get(k) != new.get(k)]
    if existing.maskgen_version != maskgen_version() or existing.schema_version != SCHEMA_VERSION:
        changed.append(f"maskgen {existing.maskgen_version} -> {maskgen_version()}, schema {existing.schema_version} -> {SCHEMA_VERSION}")
    if changed:
        problems.append(f"--retry-failed may change only {', '.join(sorted(may_change)) or 'nothing'}, not " + ", ".join(changed))
    if problems:
        raise PlanMismatch(f"cannot retry the run in {layout.root}: {'; '.join(problems)}")
    return dataclasses.replace(existing, fingerprint=fingerprint)


def _same_output_fields(config) -> set[str]:
    return set(config_dict(config)) - set(_output_fields(config))


def _same_inputs(a: Path, b: Path) -> bool:
    """The same (identity, rel, landmarks) rows in the same order, a row group at a time."""
    if not b.is_file():
        return False
    fa, fb = pq.ParquetFile(a), pq.ParquetFile(b)
    if fa.metadata.num_rows != fb.metadata.num_rows or fa.num_row_groups != fb.num_row_groups:
        return False
    return all(fa.read_row_group(i).equals(fb.read_row_group(i)) for i in range(fa.num_row_groups))
