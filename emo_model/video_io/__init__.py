"""Video writing and probing with PyAV (no ffmpeg binary, no ComfyUI imports).

This module turns ComfyUI ``IMAGE`` batches (torch ``[N,H,W,3]`` float 0..1) or
numpy arrays plus an optional audio track into an ``.mp4`` (H.264 + AAC) or a
``.webm`` (VP9 + Opus), and reads such files back for tests and evaluation.

One concept per module: :mod:`.formats` (the output formats as data, the error type), :mod:`.frames`
(IMAGE batches to ``uint8``, the exact frame rate), :mod:`.audio_track` (the audio track), :mod:`.writer`
(streaming, atomic writing; its docstring lists the decisions: odd sizes, timestamps, audio length, colour,
temporary file, encoder settings, metadata) and :mod:`.reader` (probing and reading back).
"""

from __future__ import annotations

from .formats import FORMATS, OutputFormat, VideoError
from .reader import VideoInfo, probe_video, read_audio, read_video_frames
from .writer import VideoWriter, write_video

__all__ = [
    "FORMATS",
    "OutputFormat",
    "VideoError",
    "VideoInfo",
    "VideoWriter",
    "probe_video",
    "read_audio",
    "read_video_frames",
    "write_video",
]
