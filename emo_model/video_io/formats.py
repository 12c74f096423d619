"""Output formats as data (:data:`FORMATS`: mp4 = H.264 + AAC, webm = VP9 + Opus) and the error type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import av


class VideoError(RuntimeError):
    """Raised for every user-facing problem while writing or probing a video."""


@dataclass(frozen=True)
class OutputFormat:
    """One output format, as data.  Looked up in :data:`FORMATS`."""

    name: str
    container: str  # libavformat muxer name
    extension: str  # with the dot
    video_codec: str  # libavcodec encoder name
    pix_fmt: str
    audio_codec: str
    audio_bit_rate: int
    audio_rates: tuple[int, ...] | None  # None: any rate the encoder accepts
    audio_resample_rate: int  # rate used when the input rate is not usable
    default_crf: int
    crf_range: tuple[int, int]
    preset_option: str  # encoder option the ``preset`` argument sets
    default_preset: str
    video_options: Mapping[str, str] = field(default_factory=dict)
    container_options: Mapping[str, str] = field(default_factory=dict)
    mime_type: str = ""

    def __getitem__(self, key: str) -> Any:  # dict-style access for callers
        return getattr(self, key)


FORMATS: dict[str, OutputFormat] = {
    "mp4": OutputFormat(
        name="mp4",
        container="mp4",
        extension=".mp4",
        video_codec="libx264",
        pix_fmt="yuv420p",
        audio_codec="aac",
        audio_bit_rate=128_000,
        audio_rates=None,  # AAC: its own rate if the encoder supports it
        audio_resample_rate=48_000,
        default_crf=19,
        crf_range=(0, 51),
        preset_option="preset",
        default_preset="medium",
        video_options={},
        container_options={"movflags": "use_metadata_tags+faststart"},
        mime_type="video/mp4",
    ),
    "webm": OutputFormat(
        name="webm",
        container="webm",
        extension=".webm",
        video_codec="libvpx-vp9",
        pix_fmt="yuv420p",
        audio_codec="libopus",
        audio_bit_rate=128_000,
        audio_rates=(48_000,),  # always resample to 48 kHz for Opus
        audio_resample_rate=48_000,
        default_crf=24,
        crf_range=(0, 63),
        preset_option="cpu-used",  # libvpx speed 0 (slowest) .. 8
        default_preset="4",
        # b=0 selects constant-quality mode (crf alone is a cap otherwise).
        video_options={"b": "0", "deadline": "good", "row-mt": "1"},
        container_options={},
        mime_type="video/webm",
    ),
}


def _encoder_available(name: str) -> bool:
    try:
        av.Codec(name, "w")
    except Exception:
        return False
    return True


def _format_usable(fmt: OutputFormat) -> bool:
    return _encoder_available(fmt.video_codec) and _encoder_available(fmt.audio_codec)


def _resolve_format(format: str) -> OutputFormat:
    key = str(format).lower().lstrip(".")
    if key not in FORMATS:
        raise VideoError(
            f"unknown video format {format!r}; choose one of: {', '.join(sorted(FORMATS))}"
        )
    fmt = FORMATS[key]
    for kind, codec in (("video", fmt.video_codec), ("audio", fmt.audio_codec)):
        if not _encoder_available(codec):
            others = [k for k, f in FORMATS.items() if k != key and _format_usable(f)]
            hint = (
                f"use format={others[0]!r} instead"
                if others
                else "install a PyAV build with these encoders (pip install av)"
            )
            raise VideoError(
                f"format {key!r} needs the {kind} encoder {codec!r}, which this PyAV "
                f"build (av {av.__version__}) does not provide; {hint}"
            )
    return fmt


