"""EMO Video Combine: IMAGE frames + fps (+ AUDIO) -> an mp4/webm in the output folder, a preview, VIDEO."""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..emo_model.video_io import FORMATS, VideoWriter, probe_video, read_video_frames
from . import _comfy


@dataclass
class SavedVideo:
    """Stand-in for ComfyUI's VIDEO value when ComfyUI is not installed (CLI, tests)."""

    path: str

    def get_dimensions(self) -> tuple[int, int]:
        info = probe_video(self.path)
        return info.width, info.height

    def get_duration(self) -> float:
        return probe_video(self.path).duration

    def get_frame_rate(self) -> Fraction:
        return Fraction(probe_video(self.path).fps).limit_denominator(1001)

    def get_frames(self):
        return read_video_frames(self.path)


def video_value(path: str):
    """ComfyUI's own VIDEO object for ``path`` when available, so core video nodes accept it."""
    try:
        from comfy_api.latest import InputImpl  # type: ignore

        return InputImpl.VideoFromFile(path)
    except ImportError:
        return SavedVideo(path)


class EMOVideoCombine:
    DESCRIPTION = (
        "Writes the frames as an mp4 (H.264 + AAC) or webm (VP9 + Opus) in ComfyUI's output folder, with the audio trimmed "
        "or padded to the video length and the workflow embedded in the file's metadata (drag the video back into ComfyUI). "
        "Shows a preview with sound and outputs a core VIDEO for other video nodes. A cancelled or failed run leaves no partial file."
    )
    CATEGORY = "EMO"
    FUNCTION = "combine"
    OUTPUT_NODE = True
    RETURN_TYPES = ("VIDEO", "STRING")
    RETURN_NAMES = ("video", "path")
    OUTPUT_TOOLTIPS = ("The saved video as a core VIDEO.", "Full path of the written file.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The frames (e.g. from EMO Sampler, or after an upscaler / interpolator): float 0..1 (or uint8 0..255)."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.01, "tooltip": "Frame rate; wire EMO Sampler's fps so sound and picture stay in sync."}),
                "filename_prefix": ("STRING", {"default": "EMO/emo", "tooltip": "File name prefix inside the output folder; may contain sub-folders (never '..'). Ending in '/' (e.g. 'EMO/') names a folder: the files are called emo_00001_ there."}),
                "format": (list(FORMATS), {"default": "mp4", "tooltip": "mp4: H.264 + AAC, plays everywhere. webm: VP9 + Opus."}),
                "crf": ("INT", {"default": 19, "min": 0, "max": 63, "tooltip": "Quality: lower is better and bigger (mp4 0-51, ~17-23 typical; webm 0-63)."}),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "Sound to mux (EMO Sampler's or Audio Encode's audio output keeps it in sync)."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def combine(self, images, fps, filename_prefix, format, crf, audio=None, prompt=None, extra_pnginfo=None):
        # one line for a batch that cannot make a video (empty, NaN, 0-255 floats, 'meta'), bad audio or a bad prefix, before any file
        images = _comfy.check_image(images, label="images", channels=(1, 3, 4))
        if audio is not None:
            _comfy.check_audio(audio)
        prefix = _comfy.check_prefix(filename_prefix, default_stem="emo")
        height, width = int(images.shape[1]), int(images.shape[2])
        folder, stem, counter, subfolder = _comfy.save_path(prefix, width, height)
        name = f"{stem}_{counter:05}_.{FORMATS[format].extension.lstrip('.')}"
        metadata = {}
        if prompt is not None:
            metadata["prompt"] = json.dumps(prompt)
        for key, value in (extra_pnginfo or {}).items():
            metadata[key] = json.dumps(value)
        with VideoWriter(Path(folder) / name, fps, format=format, crf=crf, audio=audio, metadata=metadata) as writer:
            for start in range(0, images.shape[0], 16):
                writer.write(images[start : start + 16])
        path = str(Path(folder) / name)
        preview = {"filename": name, "subfolder": subfolder, "type": "output", "format": FORMATS[format].mime_type}
        # "emo_video", not core's "images": web/js/emo.js shows it in a player inside the node (core's preview floats
        # below the node in frontend 1.27); the queue panel still lists the file (any key with an .mp4/.webm)
        seconds = images.shape[0] / fps
        summary = f"{Path(subfolder, name).as_posix()} · {images.shape[0]} frames · {seconds:.2f} s at {fps:g} fps · {width}x{height}"
        return {"ui": {"emo_video": [preview], "emo_summary": [summary]}, "result": (video_value(path), path)}
