"""maskgen.recordio: MXNet RecordIO and insightface's layout, on the sample faces; bad files are
one-line errors. (mxnet itself reads what we write in `python -m maskgen.bench formats`, and
here too when MASKGEN_MXNET_PYTHON names a Python with mxnet installed.)"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import ALIGNED, aligned_files

from maskgen.pipeline.inputs import UNREADABLE_IDENTITY, read_face_rec
from maskgen.recordio import (
    MAGIC,
    FaceRec,
    Header,
    RecordError,
    RecordReader,
    RecordWriter,
    frame,
    pack,
    unpack,
    write_face_rec,
)

MAGIC_BYTES = struct.pack("<I", MAGIC)


def sample_images() -> list[tuple[int, bytes]]:
    """(label, JPEG bytes) of every sample face, labels by sorted identity folder."""
    identities = sorted(p.name for p in ALIGNED.iterdir() if p.is_dir())
    return [(identities.index(f.parent.name), f.read_bytes()) for f in aligned_files()]


@pytest.fixture(scope="module")
def face_rec(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rec")
    write_face_rec(folder, sample_images(), size=(150, 150))
    return folder


def test_the_sample_faces_round_trip_byte_exact_in_insightfaces_layout(face_rec):
    images = sample_images()
    rec = FaceRec(face_rec)
    assert list(rec.image_keys()) == list(range(1, len(images) + 1))
    head = rec.reader.read(0)[0]
    assert head.flag == 2 and head.label == (len(images) + 1, len(images) + 1 + 5)  # images, then 5 identity records
    for key, (label, data) in zip(rec.image_keys(), images):
        header, payload = rec.reader.read(key)
        assert payload == data and header.label == label == rec.label(key) and header.id == key
    ranges = [rec.reader.read(len(images) + 1 + j)[0].label for j in range(5)]
    assert ranges == [(1 + 11 * j, 12 + 11 * j) for j in range(5)]  # class j's image records, [start, end)
    assert (face_rec / "property").read_text() == "5,150,150" and rec.num_classes() == 5


def test_a_record_holding_the_magic_is_cut_and_put_back_as_dmlc_does(tmp_path):
    data = b"ab" + MAGIC_BYTES + b"cd" + MAGIC_BYTES + MAGIC_BYTES + b"xyz"  # magic at 2 (unaligned: kept), 8 and 12 (cut)
    framed = frame(data)
    flags = [struct.unpack_from("<I", framed, i + 4)[0] >> 29 for i in range(0, len(framed), 4)
             if framed[i : i + 4] == MAGIC_BYTES and i % 4 == 0][:3]
    assert flags == [1, 2, 3]  # first, middle, last part; the unaligned magic at 2 stays in the data
    assert len(framed) % 4 == 0
    with RecordWriter(tmp_path / "x.rec") as out:
        out.write(7, pack(Header(0, 3.0, 7), data))
        out.write(9, pack(Header(0, (1.0, 2.0), 9), b""))
    reader = RecordReader(tmp_path / "x.rec")
    assert reader.read(7) == (Header(0, 3.0, 7), data)
    assert reader.read(9)[0].label == (1.0, 2.0) and reader.header(9).label == (1.0, 2.0)
    assert (tmp_path / "x.idx").read_text() == f"7\t0\n9\t{len(frame(pack(Header(0, 3.0, 7), data)))}\n"


def test_bad_files_are_one_line_errors(tmp_path, face_rec):
    rec = (face_rec / "train.rec").read_bytes()
    idx = (face_rec / "train.idx").read_text()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.rec").write_bytes(rec[: len(rec) // 2])  # truncated
    past = f"999\t{len(rec) + 100}\n"  # an .idx line pointing past the end
    (broken / "train.idx").write_text(idx + past)
    reader = RecordReader(broken / "train.rec")
    last_image = 55
    with pytest.raises(RecordError, match=r"truncated") as err:
        reader.read(last_image)
    assert "\n" not in str(err.value) and str(err.value).startswith("train.rec record 55")
    with pytest.raises(RecordError, match=r"truncated at byte"):
        reader.read(999)
    with pytest.raises(RecordError, match="no record 5000"):
        reader.read(5000)
    (broken / "train.idx").write_text("0\t0\nnot an index\n")
    with pytest.raises(RecordError, match="not 'key<TAB>offset'"):
        RecordReader(broken / "train.rec")
    with pytest.raises(RecordError, match="bad magic"):
        (broken / "train.idx").write_text("0\t2\n")
        RecordReader(broken / "train.rec").read(0)
    with pytest.raises(RecordError, match="too short"):
        unpack(b"abc")


def test_a_rec_folder_plans_as_entries_and_unreadable_records_become_entries_too(tmp_path, face_rec):
    entries = list(read_face_rec(face_rec))
    assert len(entries) == 55
    assert entries[0].identity == "0000000" and entries[0].rel == "0000000/00000001.jpg"
    assert entries[-1].rel == "0000004/00000055.jpg"
    assert [e.rel for e in entries] == sorted(e.rel for e in entries)  # sorted as a tree walk is
    broken = tmp_path / "broken"
    broken.mkdir()
    rec = (face_rec / "train.rec").read_bytes()
    offsets = dict(line.split("\t") for line in (face_rec / "train.idx").read_text().splitlines())
    (broken / "train.rec").write_bytes(rec[: int(offsets["30"]) + 4])  # record 30 cut inside its frame header
    (broken / "train.idx").write_text((face_rec / "train.idx").read_text())
    planned = list(read_face_rec(broken))
    assert len(planned) == 55  # the header record still says 55 images: none is dropped
    assert {e.identity for e in planned[29:]} == {UNREADABLE_IDENTITY}


@pytest.mark.skipif(not os.environ.get("MASKGEN_MXNET_PYTHON"), reason="set MASKGEN_MXNET_PYTHON to a Python with mxnet")
def test_mxnet_reads_what_we_write(face_rec):
    code = (
        "import sys, mxnet as mx\n"
        "r = mx.recordio.MXIndexedRecordIO(sys.argv[1] + '/train.idx', sys.argv[1] + '/train.rec', 'r')\n"
        "h, _ = mx.recordio.unpack(r.read_idx(0))\n"
        "for k in range(1, int(h.label[0])):\n"
        "    hk, img = mx.recordio.unpack_img(r.read_idx(k))\n"
        "    print(k, int(hk.label), img.shape[0], mx.recordio.unpack(r.read_idx(k))[1].hex())\n"
    )
    out = subprocess.run([os.environ["MASKGEN_MXNET_PYTHON"], "-c", code, str(face_rec)], capture_output=True, text=True, check=True)
    rows = [line.split() for line in out.stdout.splitlines()]
    assert [(int(k), int(label), bytes.fromhex(data)) for k, label, _, data in rows] == [
        (k, label, data) for k, (label, data) in enumerate(sample_images(), 1)]


def test_a_rec_without_its_idx_is_named_not_taken_for_a_loose_file(tmp_path, face_rec):
    from pipeline_helpers import invoke

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "train.rec").write_bytes((face_rec / "train.rec").read_bytes())
    result = invoke("generate", tmp_path / "in", tmp_path / "out", "--dry-run")
    assert result.exit_code == 2 and "has no train.idx beside it" in result.output and result.output.count("\n") == 1


def test_landmarks_and_align_read_a_rec_folder_as_they_read_the_tree(tmp_path, face_rec):
    import pandas as pd
    from pipeline_helpers import ensure_ray, invoke

    ensure_ray()
    runs = {}
    for name, source in (("rec", face_rec), ("tree", ALIGNED)):
        result = invoke("landmarks", source, tmp_path / name, "--quiet")
        assert result.exit_code == 0, result.output
        runs[name] = pd.read_parquet(tmp_path / name / "manifest").sort_values("src_path")
    assert list(runs["rec"].status) == ["ok"] * len(aligned_files())
    # record order is the tree's sorted order, so row k of each is the same face: the same 68 points
    assert [list(p) for p in runs["rec"].landmarks] == [list(p) for p in runs["tree"].landmarks]
    aligned = invoke("align", face_rec, tmp_path / "aligned", "--quiet")
    assert aligned.exit_code == 0, aligned.output
    assert set(pd.read_parquet(tmp_path / "aligned" / "manifest").status) == {"ok"}
