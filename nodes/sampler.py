"""EMO Sampler: portrait + audio features -> video frames, clip by clip."""

from __future__ import annotations

import logging

import torch

from ..emo_model.app.keypoint_input import keypoint_frames_for, keypoint_guide
from ..emo_model.app.pose_input import pose_frames_for
from ..emo_model.families import AUTO_EMOTION, FAMILIES, emotion_names, quoted_presets
from ..emo_model.sampling.colour_match import MODES as COLOUR_MODES
from ..emo_model.sampling.median_filter import MedianFilter
from ..emo_model.sampling.memory import settings_memory_bytes
from ..emo_model.sampling.settings import GenerationCancelled, fast_settings
from ..emo_model.sampling.schedulers import FLOW_SAMPLERS, SAMPLERS
from ..emo_model.validation import InputError, check_speed
from . import _comfy
from .presets import resolved_preset


def parse_curve(text: str) -> list[float] | None:
    """'0.2, 0.5, 1.0' -> [0.2, 0.5, 1.0]; empty -> None."""
    text = text.strip()
    if not text:
        return None
    try:
        values = [float(v) for v in text.replace(";", ",").replace("\n", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"speed_curve must be numbers separated by commas, got {text!r}") from None
    if not values:
        return None
    try:
        return check_speed(values, label="speed_curve")
    except InputError:
        raise ValueError(
            f"speed_curve values are head speeds in degrees per frame and must be >= 0 and <= 3 (finite), got {text!r}"
        ) from None


def mask_for(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Any MASK ([H, W] or [B, H, W]) -> one [H, W] mask: the union over the batch."""
    if mask is None:
        return None
    return (mask if mask.dim() == 2 else mask.amax(dim=0)).float().cpu()


class EMOSampler:
    DESCRIPTION = (
        "Generates the talking/singing video: for every clip of frames, denoises with reference-attention to the portrait, "
        "audio-attention to the sound, temporal layers fed with the previous clip's last frames (motion frames) and the "
        "head-speed control, then decodes. Working memory does not grow with the audio length; the IMAGE output does (one float32 frame per audio frame, 3 MB at 512x512, allocated once). Progress shows per step; Cancel "
        "stops between two steps."
    )
    CATEGORY = "EMO"
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE", "FLOAT", "AUDIO")
    RETURN_NAMES = ("frames", "fps", "audio")
    OUTPUT_TOOLTIPS = (
        "The video frames (one per audio frame): chain them into upscalers, interpolators or EMO Video Combine.",
        "Frames per second.",
        "The audio the frames were made for (same length as the video).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "emo_model": ("EMO_MODEL", {"tooltip": "From Load EMO Model."}),
                "emo_reference": ("EMO_REFERENCE", {"tooltip": "From EMO Reference Encode (same model)."}),
                "emo_audio": ("EMO_AUDIO", {"tooltip": "From EMO Audio Encode (same model)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "control_after_generate": True, "tooltip": "Noise seed; each clip derives its own seed from it, so a run is reproducible."}),
                "steps": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip": "Denoising steps per clip. 0 = the model's preset (" + quoted_presets(lambda c: c.preset.steps) + "). Fewer than ~20 gets jittery."}),
                "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": "Guidance towards the portrait (and the audio, unless audio_cfg is set). 0 = the preset (" + quoted_presets(lambda c: c.preset.cfg) + ")."}),
                "audio_cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": "Separate guidance for the audio (lip sync strength). 0 = same as cfg (classic CFG, one batched pass fewer)."}),
                "sampler": (["preset"] + list(SAMPLERS) + list(FLOW_SAMPLERS), {"default": "preset", "tooltip": "Scheduler (preset: the model's own, e.g. DDIM for the DDPM-trained families, FlowMatch Euler for flow models); the model's noise schedule (v-prediction, zero-SNR) is kept whatever you pick. DDIM is the paper's. Models that predict flow velocities take " + ", ".join(FLOW_SAMPLERS) + "."}),
                "speed": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 3.0, "step": 0.05, "tooltip": "Head-motion speed in degrees per frame (EMO's speed layers): speech 0.1-1.0, singing 1.0-1.3; above 1.5 gets jittery. Models without speed layers ignore it (Load EMO Model's summary shows the family)."}),
                "frames_per_clip": ("INT", {"default": 0, "min": 0, "max": 32, "tooltip": "Frames generated together. 0 = the preset (" + quoted_presets(lambda c: c.preset.frames_per_clip) + ")."}),
                "motion_frames": ("INT", {"default": -1, "min": -1, "max": 16, "tooltip": "Frames of the previous clip that condition the next one. -1 = the preset (" + quoted_presets(lambda c: c.preset.motion_frames if c.preset.strategy == "motion_frames" else None) + "). Ignored by context-window models (" + quoted_presets(lambda c: "context windows" if c.preset.strategy == "context_windows" else None, values=False) + ")."}),
                "colour_match": (list(COLOUR_MODES), {"default": "none", "tooltip": "Match every clip's colours to the portrait (Lab statistics of the whole clip, so no flicker) to stop drift on long videos."}),
            },
            "optional": {
                "face_mask": ("MASK", {"tooltip": "Where the face may move (EMO Face Mask, or any mask in the portrait's coordinates). Default: the whole frame."}),
                "speed_curve": ("STRING", {"default": "", "multiline": False, "tooltip": "Optional per-frame speed curve, e.g. '0.3, 0.3, 1.2, 0.5': resampled over the video; overrides speed."}),
                "fast": ("BOOLEAN", {"default": False, "label_on": "fast", "label_off": "full quality", "tooltip": "Fast mode: DPM++ 2M (whatever the sampler widget says; flow-velocity models keep their own sampler) at 0.4x the preset's steps (at least 8; or your steps if set), with deep features reused every other step. Less denoiser work for some quality: the measured trade-off is in docs/performance.md."}),
                "emotion": (["preset", AUTO_EMOTION, *emotion_names()], {"default": "preset", "tooltip": "Emotion of models with emotion-conditioned audio modules (" + quoted_presets(lambda c: c.preset.emotion, values=False) + "). auto: classified from the audio, second by second, by the family's own audio-emotion classifier (its files in the model folder: see the README); preset: auto when those files are there (as the original does), else neutral; the summary says which. A class name: that emotion for the whole video. The class names are presumed (emotion2vec's order; the original does not name them). Other models ignore it."}),
                "pose": ("POSE_KEYPOINT", {"tooltip": "Pose-guided models only (" + quoted_presets(lambda c: "pose" if c.face_locator is not None and c.face_locator.reads == "pose_frames" and keypoint_guide(c) is None else None, values=False) + "): the driving poses from a DWPose node (comfyui_controlnet_aux) run on a driving video; only the hands are drawn, as the original draws them. Fewer frames than the audio are mirrored back and forth. Not wired: the built-in idle sway (two relaxed hands swaying gently); the original's pose template folders: emo generate --pose. Keypoint-guided models (" + ", ".join(f.label for f in FAMILIES if f.keypoint_guide is not None) + "): the driving face keypoints from EMO Face Keypoints (a driving video's frames, and the retarget mode), or a DWPose node's eyes and nose (offset_retarget); cut and stretched to the video's frames. Not wired: the portrait's own keypoints on every frame (fix_face, the original's default). Other models refuse it."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, speed_curve=None):
        """Reject a malformed speed curve when the prompt is queued, before any model loads."""
        if isinstance(speed_curve, str):
            try:
                parse_curve(speed_curve)
            except ValueError as e:
                return str(e)
        return True

    def sample(self, emo_model, emo_reference, emo_audio, seed, steps, cfg, audio_cfg, sampler, speed, frames_per_clip, motion_frames,
               colour_match, face_mask=None, speed_curve="", fast=False, emotion="preset", pose=None, unique_id=None):
        session = emo_model
        if emo_reference.model_id != id(session.model):
            raise ValueError(
                f"the reference was encoded with another model ({emo_reference.model_name}); wire EMO Reference Encode to this Load EMO Model"
            )
        if emo_audio.kind != session.config.audio.kind:
            raise ValueError(f"the audio was encoded for '{emo_audio.kind}' features but {session.name} needs '{session.config.audio.kind}'; re-run EMO Audio Encode with this model")
        emotion_value, emotion_note = (None, "")
        if session.config.backbone.emotion_audio_modules:  # other models ignore the choice
            bar: list = []  # the classification's own progress bar, made when it starts (not at all when nothing is classified)

            def classifying(done: int, total: int) -> None:
                if not bar:
                    bar.append(_comfy.Progress(total, node_id=unique_id))
                bar[0].set(done)

            try:
                emotion_value, emotion_note = session.resolve_emotion(
                    None if emotion == "preset" else emotion, emo_audio, on_progress=classifying, should_cancel=_comfy.interrupted
                )
            except GenerationCancelled:
                _comfy.raise_interrupt()
        quick = fast_settings(session.config.preset) if fast else {}
        settings = session.settings(
            **{k: v for k, v in quick.items() if k not in ("steps", "sampler")},
            steps=steps or quick.get("steps"),
            cfg=cfg or None,
            audio_cfg=(audio_cfg or cfg) or None,
            sampler=quick.get("sampler", None if sampler == "preset" else sampler),
            emotion=emotion_value,
            seed=seed,
            speed=parse_curve(speed_curve) or speed,
            frames_per_clip=frames_per_clip or None,
            motion_frames=None if motion_frames < 0 else motion_frames,
            colour_match=colour_match,
        )
        total = settings.steps * session.count_units(emo_audio.num_frames, settings)
        progress = _comfy.Progress(total, node_id=unique_id)
        h, w = emo_reference.state.size
        video = torch.empty((emo_audio.num_frames, h, w, 3), dtype=torch.float32)  # the IMAGE output, filled in place
        filled = [0]

        def sink(clip: torch.Tensor) -> None:
            video[filled[0] : filled[0] + clip.shape[0]] = clip
            filled[0] += clip.shape[0]
            progress.preview(clip[-1])

        mask = mask_for(None if face_mask is None else _comfy.check_mask(face_mask, label="face_mask"))
        if keypoint_guide(session.config) is not None:  # keypoint images: the portrait's keypoints, moved by the driving ones
            folders = [str(_comfy.models_dir()), str(_comfy.models_dir() / "emo" / "face")]
            pose_frames, pose_note = keypoint_frames_for(session.config, emo_reference.state.image, pose or None, None,
                                                         emo_audio.num_frames, models_dirs=folders, label="pose", hint=False)
            if "by insightface" not in pose_note:  # the page's summary stays short; the log says what would be the original's
                logging.getLogger("ComfyUI-EMO").info("EMO Sampler: %s; for the original's keypoints: pip install insightface "
                                                      "onnxruntime and put buffalo_l in models/insightface/models", pose_note)
        else:
            pose_frames, pose_note = pose_frames_for(session.config, pose, emo_audio.num_frames, h, emo_audio.fps, label="pose")
        median = session.config.preset.quirks.output_median_filter
        smoothing = MedianFilter(median, sink) if median else None  # the original's filter of the frames it writes
        try:
            working = settings_memory_bytes(settings, size=max(h, w), dtype_bytes=session.model.dtype.itemsize)
            with _comfy.running_on(session, memory_required=working):
                session.pipeline.generate(
                    emo_reference.state,
                    emo_audio.features,
                    num_frames=emo_audio.num_frames,
                    settings=settings,
                    sink=sink if smoothing is None else smoothing.push,
                    face_mask=mask,
                    region_masks=session.region_masks_from_mask(mask, emo_reference.state.size, emo_reference.state),
                    on_step=lambda info: progress.set(info.done),
                    should_cancel=_comfy.interrupted,
                    pose_frames=pose_frames,
                )
                if smoothing is not None:
                    smoothing.close()
        except GenerationCancelled:
            _comfy.raise_interrupt()
        if filled[0] != video.shape[0]:
            raise RuntimeError(f"the sampler made {filled[0]} frames for {video.shape[0]} audio frames")
        summary = (
            f"{video.shape[0]} frames · {emo_audio.audio.duration:.2f} s at {emo_audio.fps:g} fps · "
            f"{session.plan_summary(emo_audio.num_frames, settings)} · {settings.steps} {settings.sampler} steps · "
            f"cfg {settings.cfg:g} · audio_cfg {settings.audio_cfg:g} · {video.shape[2]}x{video.shape[1]}"
            + (f" · fast (deep features reused, full denoiser every {settings.deep_cache_interval} steps)" if fast else "")
            + (f" · {emotion_note}" if emotion_note else "")
            + (f" · {pose_note}" if pose_note else "")
        )
        ui = {"emo_summary": [summary], "emo_preset": [resolved_preset(session)]}
        return {"ui": ui, "result": (video, float(emo_audio.fps), emo_audio.audio.as_comfy())}
