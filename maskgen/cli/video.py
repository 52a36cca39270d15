"""`maskgen video IN OUT`: a thin typer command over `maskgen.video.demo.mask_video`.

Registered in maskgen/cli.py with `app.command("video")(video_commands.video)`.
Exit codes: 0 done, 2 unusable input, output or options, 130 interrupted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maskgen.cli import options as opt


def video(
    in_video: Annotated[Path, typer.Argument(help="Video to read: any file OpenCV's FFmpeg decodes (mp4, avi, mov, mkv, webm...).", show_default=False)],
    out_video: Annotated[Path, typer.Argument(help="Video to write: .mp4, .m4v or .mov (MPEG-4 video), .avi or .mkv (Motion JPEG). Video only: audio is not kept.", show_default=False)],
    detect_every: Annotated[int, typer.Option("--detect-every", min=1, help="Run the face detector every N frames and follow faces in between (1 = every frame: slowest, catches the most).")] = 5,
    detector: Annotated[str, typer.Option("--detector", help="Face detector: hog (fast) or cnn (dlib's mmod: more turned and small faces, ~10x slower on a CPU).")] = "hog",
    upsample: Annotated[int, typer.Option("--upsample", min=0, max=3, help="HOG upsampling: 0 finds faces from ~80 px; each step halves that and costs ~4x detection time.")] = 0,
    landmarker: opt.Landmarks = "batched",
    mask_type: opt.MaskType = "random",
    color: opt.Color = "random",
    pattern: opt.Pattern = "random",
    wear: opt.Wear = "proper",
    seed: Annotated[int, typer.Option("--seed", help="Global seed: each person's mask is drawn from (seed, track number) and kept for the whole clip; same seed, same video.")] = 0,
    smooth: Annotated[bool, typer.Option("--smooth/--no-smooth", help="Smooth the landmarks over time (One Euro filter) so masks do not jitter.")] = True,
    side_by_side: Annotated[bool, typer.Option("--side-by-side", help="Write the original and the masked video next to each other (twice the width).")] = False,
    quiet: opt.Quiet = False,
) -> None:
    """Put a mask on every face of a video, stable from frame to frame.

    Faces are detected every N frames and followed in between; each person
    keeps one mask for the whole clip. The output has the input's size and
    frame rate (twice the width with --side-by-side).

    Audio is not kept (OpenCV writes video only); to add it back:
    ffmpeg -i OUT -i IN -map 0:v -map 1:a? -c copy WITH_AUDIO.mp4"""
    from maskgen.masks.options import MaskOptions
    from maskgen.video.demo import VideoError, check_output, mask_video, open_video
    from maskgen.video.tracking import TrackerConfig

    try:
        options = MaskOptions.parse(type=mask_type, color=color, pattern=pattern, wear=wear)
        config = TrackerConfig(detect_every=detect_every, detector=detector, upsample=upsample, smooth=smooth,
                               landmarker=landmarker)
        check_output(out_video, in_video)
        source = open_video(in_video)
    except (ValueError, VideoError) as exc:
        raise opt.fail(str(exc)) from None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from maskgen.cli.reports import FramesPerSecond

    try:
        with Progress(TextColumn("masking"), BarColumn(), MofNCompleteColumn(), FramesPerSecond(),
                      TimeRemainingColumn(), console=opt.console(stderr=True), disable=quiet, transient=True) as progress:
            task = progress.add_task("video", total=source.frame_count)
            summary = mask_video(source, out_video, options, seed, config, side_by_side,
                                 on_frame=lambda _: progress.advance(task))
    except VideoError as exc:
        raise opt.fail(str(exc)) from None
    except OSError as exc:
        raise opt.fail(f"cannot write {out_video}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        raise opt.fail(f"interrupted; {out_video} was not written", code=opt.EXIT_INTERRUPTED) from None
    if not quiet:
        width, height = summary.size
        rate = summary.frames / max(summary.seconds, 1e-9)
        opt.console().print(
            f"{out_video}: {summary.frames} frames, {width}x{height}, {summary.fps:.2f} fps, no audio; "
            f"{summary.tracks} face track(s), faces in {summary.frames_with_faces} frames "
            f"(up to {summary.most_faces} at once); {rate:.1f} frames/s",
            highlight=False, soft_wrap=True,
        )
    if summary.announced and summary.frames < summary.announced - 1:
        opt.console(stderr=True).print(f"[yellow]read {summary.frames} of the {summary.announced} frames the file announces: "
                  "the rest could not be decoded[/yellow]", highlight=False)
    if summary.render_failures:
        opt.console(stderr=True).print(f"[yellow]{summary.render_failures} face(s) could not be masked (degenerate landmarks)[/yellow]")
