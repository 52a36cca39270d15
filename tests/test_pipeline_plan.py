"""Inputs, plans and shard files without Ray: order, layout errors, fingerprints, resume markers."""

from __future__ import annotations

import json

import pytest
from pipeline_helpers import FACES, N_FACES, copy_faces

from maskgen.pipeline.inputs import Entry, InputError, WalkReport, read_input_list, safe_relative, walk_tree
from maskgen.pipeline.paths import OutputLayout, remove_stale_temps_tree
from maskgen.pipeline.plan import INPUTS_CHUNK_ROWS, PlanMismatch, auto_shard_size, prepare_plan, read_inputs_slice
from maskgen.pipeline.shards import read_stats


def make_tree(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def test_walk_is_sorted_by_the_full_relative_path(tmp_path):
    # "ab c" < "ab/" as strings, though "ab" < "ab c" as folder names
    names = ["ab/2.jpg", "ab c/1.jpg", "ab/10.jpg", "a-b/x.jpg", "B/y.jpg", "ab_/z.jpg"]
    rels = [e.rel for e in walk_tree(make_tree(tmp_path, names))]
    assert rels == sorted(names)


def test_walk_of_the_sample_faces():
    entries = list(walk_tree(FACES))
    assert len(entries) == N_FACES
    assert all(e.rel == f"{e.identity}/{e.rel.split('/')[1]}" and e.size > 0 for e in entries)


def test_hidden_files_are_skipped_and_counted(tmp_path):
    make_tree(tmp_path, ["a/1.jpg", "a/.DS_Store", "a/._1.jpg", ".git/config"])
    report = WalkReport()
    assert [e.rel for e in walk_tree(tmp_path, report)] == ["a/1.jpg"]
    assert report.hidden == 3


def test_nesting_under_an_identity_is_an_error(tmp_path):
    make_tree(tmp_path, ["a/1.jpg", "b/sub/2.jpg"])
    with pytest.raises(InputError, match=r"too deep: b/sub/ .* <root>/<identity>/<image>"):
        list(walk_tree(tmp_path))


def test_a_loose_file_at_the_root_is_an_error(tmp_path):
    make_tree(tmp_path, ["a/1.jpg", "2.jpg"])
    with pytest.raises(InputError, match="loose file at the input root: '2.jpg'"):
        list(walk_tree(tmp_path))


@pytest.mark.parametrize(
    "path, expected",
    [("a/b.jpg", "a/b.jpg"), ("./a//b.jpg", "a/b.jpg"), ("/data/root/a/b.jpg", "a/b.jpg"),
     ("a/../../b.jpg", None), ("../b.jpg", None), ("/data/other/b.jpg", None), ("/data/root/../x/b.jpg", None), ("", None)],
)
def test_safe_relative(path, expected, tmp_path):
    from pathlib import Path

    root = Path("/data/root")
    if expected is None:
        with pytest.raises(InputError):
            safe_relative(path, root)
    else:
        assert safe_relative(path, root) == expected


def test_input_lists_in_every_format(tmp_path):
    import pandas as pd

    rels = ["John_Simm/000288_00470387.jpg", "John_Salley/000179_02159509.jpg"]  # list order is kept
    (tmp_path / "l.txt").write_text("# comment\n" + "\n".join(rels) + "\n")
    (tmp_path / "l.csv").write_text("path,identity\n" + "".join(f"{r},id{i}\n" for i, r in enumerate(rels)))
    pd.DataFrame({"src_path": rels}).to_parquet(tmp_path / "l.parquet")
    for name in ("l.txt", "l.csv", "l.parquet"):
        entries = list(read_input_list(tmp_path / name, FACES))
        assert [e.rel for e in entries] == rels
        assert all(e.size > 0 for e in entries)
    assert [e.identity for e in read_input_list(tmp_path / "l.csv", FACES)] == ["id0", "id1"]
    (tmp_path / "l.json").write_text("[]")
    with pytest.raises(InputError, match="must end in one of"):
        list(read_input_list(tmp_path / "l.json", FACES))
    (tmp_path / "flat.txt").write_text("x.jpg\n")
    with pytest.raises(InputError, match="no identity for 'x.jpg'"):
        list(read_input_list(tmp_path / "flat.txt", FACES))


def test_landmarks_must_have_68_points(tmp_path):
    import pandas as pd

    pd.DataFrame({"path": ["a/b.jpg"], "landmarks": [[1.0] * 10]}).to_parquet(tmp_path / "l.parquet")
    with pytest.raises(InputError, match="68 \\(x, y\\) pairs, got 10"):
        list(read_input_list(tmp_path / "l.parquet", tmp_path))


def entries(n, identity="a"):
    return (Entry(identity, f"{identity}/{i:06d}.jpg", 1, 1) for i in range(n))


def test_plan_shards_are_fixed_slices_read_back_by_row_group(tmp_path):
    layout = OutputLayout(tmp_path / "out")
    n = INPUTS_CHUNK_ROWS * 2 + 5
    plan, outcome = prepare_plan(layout, entries(n), config={"seed": 0}, shard_size=1000, input_root=tmp_path)
    assert outcome == "new" and plan.n_inputs == n and plan.n_shards == 9
    assert plan.shard_range(8) == (8000, n)
    rows = read_inputs_slice(layout.inputs_file, 4000, 5000)  # spans two row groups
    assert [r["rel"] for r in rows] == [f"a/{i:06d}.jpg" for i in range(4000, 5000)]
    assert read_inputs_slice(layout.inputs_file, 8000, n)[-1]["rel"] == f"a/{n - 1:06d}.jpg"


def test_replanning_resumes_refuses_or_replaces(tmp_path):
    layout = OutputLayout(tmp_path / "out")
    first, _ = prepare_plan(layout, entries(10), config={"seed": 0}, shard_size=4, input_root=tmp_path)
    again, outcome = prepare_plan(layout, entries(10), config={"seed": 0}, shard_size=4, input_root=tmp_path)
    assert outcome == "resumed" and again == first

    with pytest.raises(PlanMismatch, match=r"the inputs changed \(10 files then, 11 now\)"):
        prepare_plan(layout, entries(11), config={"seed": 0}, shard_size=4, input_root=tmp_path)
    with pytest.raises(PlanMismatch, match=r"the config changed \(seed 0 -> 1\)"):
        prepare_plan(layout, entries(10), config={"seed": 1}, shard_size=4, input_root=tmp_path)
    assert prepare_plan(layout, entries(10), config={"seed": 0}, shard_size=4, input_root=tmp_path)[1] == "resumed"

    (layout.images / "a").mkdir(parents=True)
    (layout.images / "a" / "old.jpg").write_bytes(b"x")
    plan, outcome = prepare_plan(layout, entries(10), config={"seed": 1}, shard_size=4, input_root=tmp_path, overwrite=True)
    assert outcome == "replaced" and plan.config == {"seed": 1}
    assert not layout.images.exists() and layout.inputs_file.is_file()
    assert sorted(p.name for p in layout.plan_dir.iterdir()) == ["inputs.parquet", "plan.json"]


def test_an_unknown_run_in_out_dir_is_not_touched(tmp_path):
    layout = OutputLayout(tmp_path / "out")
    (layout.manifest).mkdir(parents=True)
    (layout.manifest / "theirs.parquet").write_bytes(b"x")
    with pytest.raises(PlanMismatch, match="no plan file"):
        prepare_plan(layout, entries(3), config={}, shard_size=2, input_root=tmp_path)
    assert (layout.manifest / "theirs.parquet").exists() and not layout.plan_file.exists()


def test_no_inputs_is_an_error(tmp_path):
    with pytest.raises(InputError, match="no input images"):
        prepare_plan(OutputLayout(tmp_path / "out"), iter(()), config={}, shard_size=2, input_root=tmp_path)


def test_a_shard_is_done_only_with_its_stats_file_and_manifest(tmp_path):
    layout = OutputLayout(tmp_path / "out")
    plan, _ = prepare_plan(layout, entries(10), config={}, shard_size=4, input_root=tmp_path)
    layout.stats.mkdir()
    layout.manifest.mkdir()
    stats = {"shard": 0, "config_hash": plan.config_hash, "fingerprint": plan.fingerprint}
    layout.stats_path(0, plan.n_shards).write_text(json.dumps(stats))
    assert read_stats(layout, plan) == {}  # no manifest yet
    layout.manifest_path(0, plan.n_shards).write_bytes(b"x")
    assert list(read_stats(layout, plan)) == [0]
    layout.stats_path(1, plan.n_shards).write_text("{truncated")  # unreadable marker: redo
    layout.manifest_path(1, plan.n_shards).write_bytes(b"x")
    layout.stats_path(2, plan.n_shards).write_text(json.dumps(stats | {"shard": 2, "config_hash": "other"}))
    assert list(read_stats(layout, plan)) == [0]


def test_shard_names_sort_in_shard_order():
    names = [OutputLayout.shard_name(i, 150_000) for i in (9, 99_999, 100_000, 149_999)]
    assert names == sorted(names) and names[0] == "shard-000009"
    assert OutputLayout.shard_name(3, 10) == "shard-00003"


def test_stale_temp_files_are_removed(tmp_path):
    copy_faces(tmp_path / "images")
    (tmp_path / "images" / "John_Simm" / ".x.jpg.123-4-5.tmp").write_bytes(b"")
    assert remove_stale_temps_tree(tmp_path / "images") == 1
    assert len(list((tmp_path / "images").rglob("*"))) == N_FACES + 5


def test_a_file_name_that_is_not_utf8_is_refused_while_planning(tmp_path):
    (tmp_path / "id1").mkdir()
    (tmp_path / "id1" / "ok.jpg").write_bytes(b"x")
    (tmp_path / "id1" / "caf\udce9.jpg").write_bytes(b"x")  # the byte 0xE9 alone, as os gives it
    with pytest.raises(InputError, match=r"not valid UTF-8: 'id1/caf\\xe9.jpg'"):
        list(walk_tree(tmp_path))


def test_the_default_shard_size_gives_every_worker_work_and_a_resume_keeps_its_own(tmp_path):
    assert auto_shard_size(55, workers=2, cap=1000) == 14  # 4 shards for 2 workers, not 1 shard of 1000
    assert auto_shard_size(494_414, workers=2, cap=1000) == 1000
    assert auto_shard_size(3, workers=8, cap=1000) == 1
    layout = OutputLayout(tmp_path / "out")
    plan, _ = prepare_plan(layout, entries(55), config={"seed": 0}, shard_size=None, input_root=tmp_path, workers_hint=2)
    assert plan.n_shards == 4
    again, outcome = prepare_plan(layout, entries(55), config={"seed": 0}, shard_size=None, input_root=tmp_path, workers_hint=16)
    assert outcome == "resumed" and again.shard_size == plan.shard_size  # the planned shards stay, whatever the workers


def test_the_landmark_engine_is_not_part_of_the_config_hash():
    """Both engines give the same landmarks: a run made with one resumes with the other."""
    from maskgen.jobs.masking import build_job_config
    from maskgen.pipeline.plan import config_hash

    default = config_hash(build_job_config())
    assert config_hash(build_job_config(landmarker="dlib")) == default
    assert config_hash(build_job_config(seed=1)) != default


@pytest.mark.parametrize("with_syncfs", [True, False])
def test_sync_files_puts_written_files_on_disk_and_names_a_missing_one(tmp_path, monkeypatch, with_syncfs):
    from maskgen import files

    if not with_syncfs:  # the portable path: an fsync per file and folder
        monkeypatch.setattr(files, "_syncfs", lambda: None)
    paths = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "y.png"]
    for path in paths:
        files.write_atomic(path, b"data")
    files.sync_files(paths)  # raises on any failure
    files.write_atomic(tmp_path / "marker.json", b"{}", durable=True)
    assert (tmp_path / "marker.json").read_bytes() == b"{}"
    with pytest.raises(FileNotFoundError):
        files.sync_files([tmp_path / "gone.jpg"])
