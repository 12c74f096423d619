"""EMO Audio Encode: AUDIO -> per-frame audio features, plus exactly the audio and frame count used."""

from __future__ import annotations

import logging

from ..emo_model.audio.signal import SUGGESTED_LUFS
from ..emo_model.families import quoted_presets
from ..emo_model.validation import DEFAULT_MAX_FRAMES
from . import _comfy
from .presets import resolved_preset


class EMOAudioEncode:
    DESCRIPTION = (
        "Turns speech or singing into EMO's per-video-frame audio features. The audio is mixed to mono, resampled to "
        "16 kHz, optionally loudness-normalised and padded to a whole number of frames; that exact audio, the frame "
        "count and the fps are returned too, so the video and its sound always have the same length downstream. Where the "
        "model's original separates the vocals from the music first, so does this node when the separator's model file "
        "is in the model folder; the vocals output lets you hear what drives the mouth."
    )
    CATEGORY = "EMO"
    FUNCTION = "encode"
    RETURN_TYPES = ("EMO_AUDIO", "AUDIO", "INT", "FLOAT", "AUDIO")
    RETURN_NAMES = ("emo_audio", "audio", "frames", "fps", "vocals")
    OUTPUT_TOOLTIPS = (
        "Per-frame audio features for EMO Sampler.",
        "The audio actually used (mono, 16 kHz, exactly frames / fps long): wire it to the video.",
        "Number of video frames the audio makes.",
        "Frames per second of the video.",
        "The audio that drives the mouth (mono, 16 kHz): the separated vocals when the model's original separates them "
        "(its separator model file is in the model folder), else the same audio as 'audio'. Listen to it to check the "
        "separation.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "emo_model": ("EMO_MODEL", {"tooltip": "From Load EMO Model: decides the feature type (wav2vec2, whisper or log-mel)."}),
                "audio": ("AUDIO", {"tooltip": "Speech or song, e.g. from Load Audio; any sample rate and channel count."}),
                "fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 120.0, "step": 0.01, "tooltip": "Video frame rate. 0 = the model's preset (" + quoted_presets(lambda c: c.preset.fps) + ")."}),
                "loudness": (["off", f"{SUGGESTED_LUFS:g} LUFS", "-16 LUFS"], {"default": "off", "tooltip": "Normalise the loudness (ITU-R BS.1770) before encoding: quiet or very loud recordings then drive the mouth like normal speech."}),
            },
            "optional": {
                "max_frames": ("INT", {"default": DEFAULT_MAX_FRAMES, "min": 1, "max": 10_000_000, "tooltip": f"Refuse audio that makes more video frames than this ({DEFAULT_MAX_FRAMES} = 10 minutes at 30 fps): the frames of the IMAGE output take 3 MB each at 512x512. Raise it for longer videos."}),
                "audio_encoder_output": ("AUDIO_ENCODER_OUTPUT", {"tooltip": "Optional: features from core Audio Encoder Encode with wav2vec2-base. Note that core's wav2vec2-base does not normalise the waveform, so results differ slightly from this node's own encoder."}),
            },
        }

    def encode(self, emo_model, audio, fps, loudness, audio_encoder_output=None, max_frames=DEFAULT_MAX_FRAMES):
        _comfy.check_audio(audio)  # one line for an empty, NaN, integer or 'meta' AUDIO
        lufs = None if loudness == "off" else float(loudness.split()[0])
        with _comfy.running_on(emo_model):  # wav2vec2 / whisper on the model's device (features come back on the CPU)
            features = emo_model.encode_audio(
                audio, fps=fps or None, loudness_lufs=lufs, encoder_output=audio_encoder_output, max_frames=max_frames
            )
        summary = f"{features.num_frames} frames · {features.audio.duration:.2f} s at {features.fps:g} fps · {features.kind} features"
        if features.vocals is not None:
            summary += " · from the separated vocals"
        if features.note:  # e.g. the vocal separator's file is missing: the summary says what (short), the log what to do
            logging.getLogger("ComfyUI-EMO").warning("EMO Audio Encode: %s", features.note)
            short, cut = _comfy.summary_note(features.note)
            summary = f"{summary} · {short}" + (" (see the log)" if cut else "")
        drive = features.vocals if features.vocals is not None else features.audio
        result = (features, features.audio.as_comfy(), features.num_frames, float(features.fps), drive.as_comfy())
        # the preset too: when Load EMO Model is cached (not run), this still resolves the "(preset)" labels
        return {"ui": {"emo_summary": [summary], "emo_preset": [resolved_preset(emo_model)]}, "result": result}
