"""Masks on every face of a video: tracking (tracking.py), temporal smoothing (smoothing.py),
frames in -> masked frames out (masker.py), file in -> file out (demo.py), the CLI command
(commands.py) and a frames/s benchmark (bench.py)."""
