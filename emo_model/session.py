"""A loaded EMO model with everything around it: VAE, audio encoder, face handling, pipeline.

This is what the CLI drives and what travels between ComfyUI nodes as ``EMO_MODEL``: one object that
knows its family preset and turns user-level inputs (an audio file or AUDIO dict, a portrait) into
what :class:`~emo_model.pipeline.EMOPipeline` needs, so neither the CLI nor the nodes repeat that logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio_encoders import AudioEncoder, AudioFeatures, build_audio_encoder, features_from_comfy_encoder_output
from .configs import EMOConfig
from .demo.config import NAME as DEMO_NAME
from .face import PortraitCrop, prepare_portrait, region_masks
from .model import EMOModel
from .pipeline import EMOPipeline, ReferenceState, SamplingSettings, estimate_clips
from .vae import DiffusersVAE, LatentCodec


def audio_front_end(config: EMOConfig, frames_per_clip: int | None = None) -> dict:
    """The ``encode_audio`` options of a family's audio front end: padding to whole clips of ``frames_per_clip``
    (default: the preset's), one wav2vec2 pass and independent pieces (InferenceQuirks.audio_padded_to_clips /
    audio_single_pass / audio_segment_seconds)."""
    quirks = config.preset.quirks
    if config.audio.kind != "wav2vec2":
        return {}
    options = {"single_pass": quirks.audio_single_pass}
    if quirks.audio_segment_seconds:
        options["segment_seconds"] = quirks.audio_segment_seconds
    if quirks.audio_padded_to_clips:
        options["whole_clips_of"] = frames_per_clip or config.preset.frames_per_clip
    return options


AUDIO_ENCODER_FILES = {
    "wav2vec2": "wav2vec2-base-960h (a folder with config.json + model.safetensors, or one .safetensors file)",
    "whisper": "whisper_tiny.pt (OpenAI format) or a whisper-tiny folder",
}


@dataclass
class Session:
    model: EMOModel
    codec: LatentCodec
    audio_encoder: AudioEncoder | None
    device: torch.device
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    # ---- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model_path: str | Path,
        *,
        vae: str | Path | LatentCodec | None = None,
        audio_encoder: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        variant: str = "standard",
        family: str | None = None,
    ) -> "Session":
        """Load a checkpoint (native file, whole-model state dict, a family's part files) and what it needs.

        ``vae``: a codec, or a path (diffusers folder / single ``.safetensors``); None uses the VAE
        bundled in a native file (the demo model has one). ``audio_encoder``: the wav2vec2 / whisper
        weights the family needs (log-mel models need none); None defers the error to
        :meth:`encode_audio` so that ComfyUI's own AUDIO_ENCODER_OUTPUT can be used instead.
        """
        from . import weights

        device = torch.device(device)
        model = weights.load_emo_model(model_path, device=device, dtype=dtype, variant=variant, family=family).eval()
        codec = vae if (vae is not None and not isinstance(vae, (str, Path))) else None
        if codec is None:
            if vae is not None:
                codec = DiffusersVAE(weights.load_vae(vae, device=device, dtype=model.dtype).eval())
            else:
                bundled = weights.load_bundled_vae(model_path, device=device, dtype=model.dtype)
                if bundled is None:
                    raise ValueError(
                        f"{Path(model_path).name} needs a VAE: put sd-vae-ft-mse (diffusers folder, or "
                        "vae-ft-mse-840000-ema-pruned.safetensors) in ComfyUI/models/vae and select it, or pass --vae"
                    )
                codec = DiffusersVAE(bundled.eval())
        cfg = model.config
        encoder = None
        if cfg.audio.kind == "logmel":
            encoder = build_audio_encoder(cfg.audio)
        elif audio_encoder is not None:
            encoder = build_audio_encoder(cfg.audio, str(audio_encoder), device=device)
        return cls(model, codec, encoder, device, name=cfg.name, info={"path": str(model_path)})

    @property
    def config(self) -> EMOConfig:
        return self.model.config

    @property
    def pipeline(self) -> EMOPipeline:
        return EMOPipeline(self.model, self.codec, device=self.device)

    def settings(self, *, labels: dict[str, str] | None = None, **overrides) -> SamplingSettings:
        """The preset with ``overrides`` (None = the preset's value), checked against the shared rules.

        ``labels``: how the caller's user spells each value (e.g. ``{"steps": "--steps"}``) in the error.
        """
        from .validation import check_settings

        settings = SamplingSettings.from_preset(self.config.preset, **overrides)
        check_settings(settings, self.config, labels=labels)
        return settings

    # ---- inputs -----------------------------------------------------------------------------------
    def encode_audio(
        self,
        source,
        *,
        fps: float | None = None,
        loudness_lufs: float | None = None,
        encoder_output: dict | None = None,
        max_frames: int | None = None,
        max_frames_label: str = "max_frames",
    ) -> AudioFeatures:
        """Audio file / AUDIO dict -> per-frame features at ``fps`` (default: the preset's).

        The features are computed piece by piece as the pipeline reads them
        (:class:`~emo_model.audio_stream.StreamedFeatures`), except for families whose encoder must see the
        whole audio at once (``InferenceQuirks.audio_single_pass``) and ComfyUI's ``encoder_output``: a tensor.

        Runs of more than ``max_frames`` frames (None: :data:`~.validation.DEFAULT_MAX_FRAMES`) are
        refused after decoding the audio, before any feature is computed.
        """
        from . import validation
        from .audio import load_audio, num_video_frames, prepare_audio

        cfg = self.config.audio
        fps = float(self.config.preset.fps if fps is None else validation.check("fps", fps))
        validation.check_optional("loudness", loudness_lufs)
        waveform, rate = load_audio(source)
        validation.check_frame_count(num_video_frames(waveform.shape[-1], rate, fps), fps, max_frames, label=max_frames_label)
        source = {"waveform": waveform[None], "sample_rate": rate}  # decoded once
        if encoder_output is not None:
            audio = prepare_audio(source, fps, loudness_lufs=loudness_lufs)
            feats = features_from_comfy_encoder_output(encoder_output, cfg, audio.num_frames, fps)
            return AudioFeatures(feats, fps, audio.num_frames, audio, cfg.kind)
        if self.audio_encoder is None:
            from .audio import AudioError

            raise AudioError(
                f"{self.name} needs an audio encoder: {AUDIO_ENCODER_FILES.get(cfg.kind, cfg.kind)}; put it in "
                "ComfyUI/models/audio_encoders and select it in Load EMO Model (or pass --audio-encoder)"
            )
        from .audio_stream import stream_audio  # computed per clip where the encoder allows it (single-pass families: whole)

        return stream_audio(source, cfg, self.audio_encoder, fps, loudness_lufs=loudness_lufs, **audio_front_end(self.config))

    def prepare_portrait(self, image, *, size: int | None = None, **face_options) -> PortraitCrop:
        """Any portrait -> the square, face-centred crop at the model size and its face-region mask."""
        options = {"expand_ratio": self.config.preset.face_expand_ratio, **face_options}
        return prepare_portrait(image, size or self.config.preset.resolution, **options)

    def encode_reference(
        self, image: torch.Tensor | np.ndarray, *, size: int | None = None, identity_image=None, models_dir: str | None = None
    ) -> ReferenceState:
        """The portrait [H, W, 3] float 0..1 -> the per-video reference state (ReferenceNet once).

        ``size``: the generation size in pixels (a multiple of 64); None = the family preset (512, or 64
        for the demo). The portrait is padded to a square and resized to it.
        """
        from .validation import check_optional, check_portrait_tensor

        check_optional("size", size)
        image = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float()
        if image.dim() == 4:
            image = image[0]
        check_portrait_tensor(image)
        embedding = None
        if self.model.imageproj is not None and identity_image is not None:
            from .identity import face_identity_embedding

            arr = (torch.as_tensor(np.asarray(identity_image)).float().clamp(0, 1) * 255).byte().cpu().numpy()
            embedding = face_identity_embedding(arr, models_dir)
        state = self.pipeline.encode_reference(image, size=size or self.config.preset.resolution, identity_embedding=embedding)
        if self.config.backbone.region_audio_modules:
            state.region_masks, state.note = self._detected_region_masks(image, state.image.shape[0], models_dir)
        if self.config.name == DEMO_NAME:  # the toy says so when given a portrait it was not made for
            from .demo.portrait_check import portrait_notice

            state.note = portrait_notice(image) or state.note
        return state

    def _detected_region_masks(self, image: torch.Tensor, side: int, models_dir: str | None) -> tuple[torch.Tensor, str]:
        """Region masks (full, face, lip) at ``side`` x ``side`` from the face found in the portrait [H, W, 3].

        Detection runs on the portrait as given (small faces are lost at the model size); the box is then
        mapped the way :func:`~emo_model.pipeline.fit_image` maps the image (centred padding to a square,
        then resize).
        """
        import warnings

        from .face import FaceBox, FaceError, detect_faces

        h0, w0 = image.shape[:2]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                boxes = detect_faces(image.clamp(0, 1).cpu().numpy(), models_dir=models_dir)
        except FaceError:
            boxes = []
        h = w = side
        if boxes:
            square = max(h0, w0)
            ox, oy = (square - w0) // 2, (square - h0) // 2
            k = side / square
            b = boxes[0]
            box = FaceBox((b.x0 + ox) * k, (b.y0 + oy) * k, (b.x1 + ox) * k, (b.y1 + oy) * k)
            how = "the face detected in the portrait"
        else:
            side = 0.5 * min(h, w)
            box = FaceBox((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            how = "a centred face box (no face was found in the portrait)"
        note = (
            f"audio region masks (full / face / lips) made from {how}; used unless the sampler gets a face mask "
            "(EMO Face Mask), which then sets them"
        )
        return torch.from_numpy(region_masks(box, h, w)), note

    def region_masks(self, portrait: PortraitCrop) -> torch.Tensor | None:
        """The (full, face, lip) masks of the region audio modules for the crop; None for configs without them."""
        if not self.config.backbone.region_audio_modules:
            return None
        h, w = portrait.image.shape[:2]
        return torch.from_numpy(region_masks(portrait.face_box, h, w))

    def region_masks_from_mask(self, mask: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
        """The region masks from a face-region mask: its box, shrunk back by the preset's expansion."""
        if not self.config.backbone.region_audio_modules or mask is None:
            return None
        from .face import FaceBox

        m = torch.nn.functional.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5
        if not m.any():
            return None
        ys, xs = torch.nonzero(m, as_tuple=True)
        box = FaceBox(float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1)
        box = box.expanded(1.0 / self.config.preset.face_expand_ratio)
        return torch.from_numpy(region_masks(box, *size))

    def count_units(self, num_frames: int, settings: SamplingSettings) -> int:
        """Clips (or 1 for context windows, whose steps cover the whole video) for progress totals."""
        return 1 if settings.strategy == "context_windows" else estimate_clips(num_frames, settings)

    def plan_summary(self, num_frames: int, settings: SamplingSettings) -> str:
        """How a run of ``num_frames`` frames is cut, in words: '3 clips of 16 frames + 2 motion frames' or
        '2 context windows of 12 frames (overlap 3, moving 2 frames per step)'."""
        if settings.strategy != "context_windows":
            clips = estimate_clips(num_frames, settings)
            return f"{clips} clip{'s' * (clips != 1)} of {settings.frames_per_clip} frames + {settings.motion_frames} motion frames"
        from .clip_planner import context_schedule

        quirks = self.config.preset.quirks
        plan = context_schedule(num_frames, settings.frames_per_clip, settings.context_overlap,
                                schedule=quirks.context_schedule, shift_per_step=quirks.context_shift_per_step)
        windows = len(plan(0))
        moving = f", moving {quirks.context_shift_per_step} frames per step" if quirks.context_shift_per_step else ""
        return (f"{windows} context window{'s' * (windows != 1)} of {min(settings.frames_per_clip, num_frames)} frames "
                f"(overlap {settings.context_overlap}{moving})")

    def to(self, device: torch.device | str) -> "Session":
        """Move the networks (model, VAE, audio encoder) to ``device``; returns self."""
        device = torch.device(device)
        self.model.to(device)
        vae = getattr(self.codec, "vae", None)
        if vae is not None:
            vae.to(device)
        encoder_model = getattr(self.audio_encoder, "model", None)
        if isinstance(encoder_model, torch.nn.Module):
            encoder_model.to(device)
        self.device = device
        return self
