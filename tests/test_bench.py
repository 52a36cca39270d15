"""`python -m maskgen.bench WHAT`: the listing, the dispatch and its errors, every benchmark's
--help, and the align benchmark on the package's own photos at its smallest settings. Each
runs in a subprocess, as a user runs it; nothing here is timed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from maskgen.assets import assets_dir

EVERY = ("masking", "landmarks", "pipeline", "align", "train", "evaluate", "video")
NO_TORCH = importlib.util.find_spec("torch") is None


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # rich tables on one line each
    return subprocess.run([sys.executable, "-m", "maskgen.bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_no_argument_lists_every_benchmark_with_a_description():
    result = bench()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in EVERY:
        line = next((line for line in lines if line.split()[:1] == [name]), None)
        assert line is not None, f"{name} is not listed:\n{result.stdout}"
        assert len(line.split()) > 3, f"{name} has no description: {line!r}"
    assert bench("--help").stdout == result.stdout


def test_the_listing_imports_no_benchmark():
    code = ("import sys\nfrom maskgen.bench.__main__ import main\nassert main([]) == 0\n"
            "loaded = [m for m in ('maskgen.bench.align', 'maskgen.bench.masking', 'cv2', 'numpy', 'torch', 'ray', 'rich')"
            " if m in sys.modules]\nprint(','.join(loaded), file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"the listing imported {result.stderr.strip()}"


def test_an_unknown_benchmark_exits_2_with_one_line():
    result = bench("nonesuch")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "nonesuch" in result.stderr and "align" in result.stderr


@pytest.mark.parametrize("what", [
    *(pytest.param(w, marks=pytest.mark.skipif(NO_TORCH, reason="needs torch")) if w == "train" else w for w in EVERY),
    "mask",
])
def test_every_benchmark_has_help(what):
    result = bench(what, "--help")
    assert result.returncode == 0, result.stderr
    name = "masking" if what == "mask" else what
    assert result.stdout.startswith(f"usage: python -m maskgen.bench {name}"), result.stdout[:200]


def test_option_limits_are_those_of_the_cli():
    result = bench("masking", "--images", "10")  # `maskgen bench --images` has min=200
    assert result.returncode == 2
    assert "minimum of 200" in result.stderr


def test_the_package_ships_wild_photos_for_align():
    wild = assets_dir() / "faces" / "wild"
    photos = sorted(wild.glob("*.jpg"))
    assert len(photos) >= 2, photos
    assert (wild / "README.md").is_file()
    readme = (wild / "README.md").read_text()
    assert all(p.name in readme for p in photos), "every photo's source is in the README"


def test_align_runs_on_its_default_photos():
    result = bench("align", "--limit", "1", "--setting", "hog0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "faces per CPU-second" in out
    rows = [line for line in out.splitlines() if "hog, upsample 0" in line]
    assert len(rows) == 2, out  # the wild photo, then its LFW-style crops
    assert "1 wild photos" in rows[0] and "LFW-style" in rows[1]
    cells = [cell for cell in re.split(r"\s*[│┃|]\s*", rows[1].strip()) if cell]
    faces, rate = int(cells[2]), float(cells[3])
    assert faces >= 1 and rate > 0, rows[1]  # the first photo (by name) has six faces


def test_pipeline_memory_runs_through_its_child_process():
    """`memory` runs `python -m maskgen.bench.pipeline _memory-child` and reads its JSON."""
    result = bench("pipeline", "memory", "--files", "60", "--no-process")
    assert result.returncode == 0, result.stderr
    assert "planning 60 inputs" in result.stdout


def test_pipeline_soak_refuses_a_kill_interval_of_zero():
    result = bench("pipeline", "soak", "--kill-every", "0")
    assert result.returncode == 2 and result.stderr.strip() == "error: --kill-every must be above 0 seconds"


def test_pipeline_soak_kills_workers_and_finds_the_same_bytes():
    """A small soak: workers really are SIGKILLed (kills > 0) and the run still ends complete
    with the clean run's manifest and bytes."""
    result = bench("pipeline", "soak", "--images", "3000", "--kill-every", "1.5", "--json", timeout=400)  # a run of >4 s: a kill lands
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["killed"]["kills"] >= 1 and figures["killed"]["complete"], figures
    assert figures["same_rows"] and figures["same_bytes"] and figures["stray_temp_files"] == 0, figures
