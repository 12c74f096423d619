"""A loaded EMO model with everything around it: VAE, audio encoder, face handling, pipeline.

This is what the CLI drives and what travels between ComfyUI nodes as ``EMO_MODEL``: one object that
knows its family preset and turns user-level inputs (an audio file or AUDIO dict, a portrait) into
what :class:`~emo_model.sampling.pipeline.EMOPipeline` needs, so neither the CLI nor the nodes repeat that logic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audio.encoders import build_audio_encoder, features_from_comfy_encoder_output
from ..audio.encoder_base import AudioEncoder, AudioFeatures
from ..configs import EMOConfig
from ..demo.config import NAME as DEMO_NAME
from ..face import PortraitCrop, prepare_portrait, region_masks
from ..network.model import EMOModel
from ..network.vae import DiffusersVAE, LatentCodec
from ..sampling.pipeline import EMOPipeline
from ..sampling.reference_state import ReferenceState
from ..sampling.settings import SamplingSettings, estimate_clips


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


def whole_windows(seconds: float, fps: float, size: int, overlap: int) -> tuple[int | None, float]:
    """(frames, fps) with InferenceQuirks.frames_whole_windows: int(seconds x fps) frames cut to whole context windows
    of ``size`` frames overlapping by ``overlap``, at the frame rate that makes them span the audio; (None, fps) when
    the audio is shorter than one window (its frames are kept)."""
    n = int(seconds * fps)
    windows = (n - size) // (size - overlap) + 1 if size > overlap else 0
    if n < size or windows < 1 or seconds <= 0:
        return None, fps
    frames = (windows - 1) * (size - overlap) + size
    return frames, frames / seconds


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
    # the last audio's per-frame emotion labels (the classifier is not kept loaded: re-running a graph reuses them)
    _emotion_labels: dict = field(default_factory=dict, repr=False)

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
    ) -> Session:
        """Load a checkpoint (native file, whole-model state dict, a family's part files) and what it needs.

        ``vae``: a codec, or a path (diffusers folder / single ``.safetensors``); None uses the VAE
        bundled in a native file (the demo model has one). ``audio_encoder``: the wav2vec2 / whisper
        weights the family needs (log-mel models need none); None defers the error to
        :meth:`encode_audio` so that ComfyUI's own AUDIO_ENCODER_OUTPUT can be used instead.
        """
        from .. import weights
        from ..weights.native import DISTILL_TEACHER_KEY, native_metadata

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
        info = {"path": str(model_path)}
        teacher = native_metadata(model_path).get(DISTILL_TEACHER_KEY)
        if teacher:
            info["distilled_from"] = teacher
        return cls(model, codec, encoder, device, name=cfg.name, info=info)

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
        from ..validation import check_settings

        settings = SamplingSettings.from_preset(self.config.preset, **overrides)
        check_settings(settings, self.config, labels=labels)
        return settings

    # ---- emotion ----------------------------------------------------------------------------------
    def speech_emotion_folders(self) -> tuple[Path | None, Path | None] | None:
        """(emotion2vec folder, classifier folder) of the family's audio-emotion classifier found in the model folder
        (each None when absent), or None for a model whose family has no such classifier."""
        from ..audio.speech_emotion import CLASSIFIER_FILES, ENCODER_FILES, find_folder
        from ..families import family_of

        fam = family_of(self.config)
        files = fam.speech_emotion if fam is not None else None
        if files is None or not self.config.backbone.emotion_audio_modules:
            return None
        path = self.info.get("path")
        if path is None:
            return None, None
        return find_folder(path, files.encoder, ENCODER_FILES), find_folder(path, files.classifier, CLASSIFIER_FILES)

    def check_emotion(self, choice: str | int | None, label: str = "emotion") -> None:
        """Refuses, in one line and before any audio is encoded, an emotion choice this model cannot honour: a class it
        does not have, or 'auto' without its audio-emotion classifier's files."""
        from ..families import AUTO_EMOTION, emotion_class, family_of
        from ..validation import InputError

        if choice is None or choice == "preset":
            return
        if str(choice).strip().lower() != AUTO_EMOTION:
            try:
                emotion_class(self.config, choice)
            except ValueError as exc:  # "emotion 'joy' is not one of ..." in the caller's spelling ("--emotion 'joy' ...")
                text = str(exc)
                raise InputError(label + text[len("emotion"):] if text.startswith("emotion ") else f"{label}: {text}") from None
            return
        folders = self.speech_emotion_folders()
        if folders is None:
            names = family_of(self.config).emotions if family_of(self.config) else ()
            raise InputError(
                f"{label} 'auto': {self.name} has no audio-emotion classifier"
                + (f"; choose one of {', '.join(names)}" if names and self.config.backbone.emotion_audio_modules else
                   "; leave the emotion choice on the preset")
            )
        if None in folders:
            raise InputError(f"{label} 'auto' needs the audio-emotion classifier: {self._missing_emotion_files(folders)}")

    def _missing_emotion_folders(self, folders) -> str:
        """The classifier's folders that are missing, relative to the model folder (short, for the run's summary)."""
        from ..families import family_of

        files = family_of(self.config).speech_emotion
        return ", ".join(f"{rel[0]}/" for found, rel in zip(folders, (files.encoder, files.classifier)) if found is None)

    def _missing_emotion_files(self, folders) -> str:
        from ..families import family_of

        fam = family_of(self.config)
        files = fam.speech_emotion
        base = Path(self.info["path"])
        base = base if base.is_dir() else base.parent
        missing = [f"{(base / rel[0]).as_posix()}/ ({source})" for found, rel, source in
                   zip(folders, (files.encoder, files.classifier), (files.encoder_source, files.classifier_source)) if found is None]
        names = ", ".join(n for n in fam.emotions[:4])
        return f"{' and '.join(missing)} missing; put {'them' if len(missing) > 1 else 'it'} there, or choose an emotion ({names}, ...)"

    def resolve_emotion(
        self,
        choice: str | int | None,
        audio: AudioFeatures,
        on_progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> tuple[int | list[int] | None, str]:
        """The run's ``emotion`` setting and a phrase saying how it was chosen ("" for models without emotion classes).

        ``choice``: None or "preset": classified from the audio when the family's audio-emotion classifier is in the
        model folder (what its original does), else the preset's class; "auto": classified from the audio (refused in
        one line when the classifier's files are missing); a class name or index: that class for the whole video.
        Classified: one label per audio-feature row (a class per second of audio, the nearest one per row);
        ``on_progress(windows done, windows)`` while the audio is classified, ``should_cancel()`` checked between
        batches of windows (GenerationCancelled when it says so)."""
        from ..families import AUTO_EMOTION, emotion_class, family_of

        if not self.config.backbone.emotion_audio_modules:
            self.check_emotion(choice)  # a choice for a model without emotion classes is refused
            return None, ""
        fam = family_of(self.config)
        names = fam.emotions if fam is not None else ()

        def name(i: int) -> str:
            return names[i] if i < len(names) else str(i)

        auto = choice is not None and str(choice).strip().lower() == AUTO_EMOTION
        if choice is not None and choice != "preset" and not auto:
            self.check_emotion(choice)
            value = emotion_class(self.config, choice)
            return value, f"emotion {name(value)} (chosen)"
        self.check_emotion(choice)
        folders = self.speech_emotion_folders()
        if folders is None or None in folders:
            preset = self.config.preset.emotion
            why = "" if folders is None else f"; no audio-emotion classifier: {self._missing_emotion_folders(folders)} not in the model folder"
            return preset, ("emotion " + ("none" if preset is None else name(preset)) + " (preset" + why + ")")
        labels = self._classify_emotion(audio, *folders, on_progress=on_progress, should_cancel=should_cancel)
        real = torch.as_tensor(labels[: audio.num_frames])
        counts = torch.bincount(real, minlength=1)
        shares = sorted(((int(c), i) for i, c in enumerate(counts.tolist()) if c), reverse=True)
        spread = ", ".join(f"{name(i)} {100 * c / real.numel():.0f}%" for c, i in shares[:3])
        return labels, f"emotion from the audio ({spread})"

    def _classify_emotion(
        self, audio: AudioFeatures, encoder_dir: Path, classifier_dir: Path, on_progress=None, should_cancel=None
    ) -> list[int]:
        from ..audio.speech_emotion import SpeechEmotionClassifier, SpeechEmotionError
        from ..sampling.settings import GenerationCancelled
        from ..validation import InputError

        def progress(done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(done, total)
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled("cancelled while classifying the audio's emotion")

        prepared = audio.audio  # the mix, or what the family's original classifies (InferenceQuirks.emotion_channel)
        heard = getattr(audio, "emotion_audio", None)
        wave = prepared.waveform[: prepared.real_samples] if heard is None else heard
        rows = int(audio.features.shape[0])  # the feature rows (the frames padded to whole clips, if the family pads)
        key = (rows, wave.shape[0], float(wave.double().sum()), float(wave.double().abs().sum()), str(encoder_dir), str(classifier_dir))
        if key not in self._emotion_labels:
            device = torch.device(self.info.get("run_device", self.device))
            try:
                model = SpeechEmotionClassifier.from_folders(encoder_dir, classifier_dir, device=device)
            except SpeechEmotionError as exc:
                raise InputError(str(exc)) from None
            try:
                labels = model.classify(wave, rows, on_progress=progress).labels.tolist()
            finally:
                del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
            self._emotion_labels.clear()
            self._emotion_labels[key] = labels
        return list(self._emotion_labels[key])

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
        (:class:`~emo_model.audio.stream.StreamedFeatures`), except for families whose encoder must see the
        whole audio at once (``InferenceQuirks.audio_single_pass``) and ComfyUI's ``encoder_output``: a tensor.

        Runs of more than ``max_frames`` frames (None: :data:`~.validation.DEFAULT_MAX_FRAMES`) are
        refused before any feature is computed: a file by the length its container records, before decoding, or
        else when decoding passes the limit (decoding stops there), so too-long audio costs no more memory than the limit.
        """
        from .. import validation
        from ..audio.signal import load_audio, num_video_frames, prepare_audio

        cfg = self.config.audio
        fps = float(self.config.preset.fps if fps is None else validation.check("fps", fps))
        validation.check_optional("loudness", loudness_lufs)
        def check_length(samples: int, rate: int, how: str) -> None:  # before decoding (recorded length) and while decoding
            validation.check_frame_count(num_video_frames(samples, rate, fps), fps, max_frames, label=max_frames_label, how=how)

        waveform, rate = load_audio(source, check_length=check_length)
        validation.check_frame_count(num_video_frames(waveform.shape[-1], rate, fps), fps, max_frames, label=max_frames_label)
        frames = None
        if self.config.preset.quirks.frames_whole_windows:  # the original's frame count: whole windows, the fps stretched
            preset = self.config.preset
            frames, fps = whole_windows(waveform.shape[-1] / rate, fps, preset.frames_per_clip, preset.context_overlap)
        taken = self._take_audio(source, encoder_output is None)  # the family's original's loader / vocal separation
        source = {"waveform": waveform[None], "sample_rate": rate} if taken is None else taken.drive  # decoded once (ours)
        emotion_audio = None if taken is None else taken.emotion  # what the emotion classifier hears (None: the mix)
        if encoder_output is not None:
            audio = prepare_audio(source, fps, loudness_lufs=loudness_lufs, num_frames=frames)
            feats = features_from_comfy_encoder_output(encoder_output, cfg, audio.num_frames, fps)
            return AudioFeatures(feats, fps, audio.num_frames, audio, cfg.kind, emotion_audio=emotion_audio)
        if self.audio_encoder is None:
            from ..audio.signal import AudioError

            raise AudioError(
                f"{self.name} needs an audio encoder: {AUDIO_ENCODER_FILES.get(cfg.kind, cfg.kind)}; put it in "
                "ComfyUI/models/audio_encoders and select it in Load EMO Model (or pass --audio-encoder)"
            )
        from ..audio.stream import stream_audio  # computed per clip where the encoder allows it (single-pass families: whole)

        features = stream_audio(source, cfg, self.audio_encoder, fps, loudness_lufs=loudness_lufs, num_frames=frames,
                                **audio_front_end(self.config))
        if taken is not None:
            features.note, features.emotion_audio = taken.note, emotion_audio
            if taken.vocals is not None:  # the vocals drove the mouth; the video keeps the whole mix
                features.vocals = features.audio
                features.audio = prepare_audio(taken.mix, fps, loudness_lufs=loudness_lufs, num_frames=features.num_frames)
        return features

    def _take_audio(self, source, separate: bool):
        """The driving audio as this family's original takes it (emo_model/audio/front.py), or None for ours."""
        from ..audio.front import take_audio, uses_original_front_end
        from ..families import family_of

        family = family_of(self.config)
        if not uses_original_front_end(self.config, family):
            return None
        return take_audio(source, self.config, family, self.info.get("path"), separate=separate)

    def prepare_portrait(self, image, *, size: int | None = None, **face_options) -> PortraitCrop:
        """Any portrait -> the square, face-centred crop at the model size and its face-region mask (a square picture
        whole, resized as the original does, for a family whose original resizes the whole picture: face/front_ends.py)."""
        from ..face.front_ends import as_original, framing_options  # the family's original preprocessing, where it can run here
        from ..families import family_of

        family = family_of(self.config)
        front_end = family and family.face_front_end
        framing = framing_options(front_end, image, face_options.get("face_index") or 0)  # the original's, where it applies
        options = {"expand_ratio": self.config.preset.face_expand_ratio, **framing, **face_options}
        portrait = prepare_portrait(image, size or self.config.preset.resolution, **options)
        return as_original(front_end, image, portrait, face_options.get("models_dir"))

    def encode_reference(
        self, image: torch.Tensor | np.ndarray, *, size: int | None = None, identity_image=None, models_dir: str | None = None
    ) -> ReferenceState:
        """The portrait [H, W, 3] float 0..1 -> the per-video reference state (ReferenceNet once).

        ``size``: the generation size in pixels (a multiple of 64); None = the family preset (512, or 64
        for the demo). The portrait is padded to a square and resized to it.
        """
        from ..validation import check_optional, check_portrait_tensor

        check_optional("size", size)
        image = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float()
        if image.dim() == 4:
            image = image[0]
        check_portrait_tensor(image)
        embedding = None
        if self.model.imageproj is not None and identity_image is not None:
            from ..network.identity import face_identity_embedding

            arr = np.asarray(identity_image)  # uint8 as read (PortraitCrop.original_picture), or float 0..1
            if arr.dtype != np.uint8:
                arr = (torch.as_tensor(arr).float().clamp(0, 1) * 255).byte().cpu().numpy()
            embedding = face_identity_embedding(arr, models_dir)
        state = self.pipeline.encode_reference(image, size=size or self.config.preset.resolution, identity_embedding=embedding)
        if self.config.backbone.region_audio_modules:
            state.region_masks, state.note = self._detected_region_masks(image, state.image.shape[0], models_dir)
            from ..face.front_ends import region_masks_as_original  # the family's original masks, where they can be made
            from ..families import family_of

            family = family_of(self.config)
            original, how = region_masks_as_original(family and family.face_front_end, state.image.numpy(), models_dir)
            if original is not None:
                state.region_masks = {size: torch.from_numpy(m) for size, m in original.items()}
            state.note = how if original is not None else " · ".join(n for n in (state.note, how) if n)
        if self.config.name == DEMO_NAME:  # the toy says so when given a portrait it was not made for
            from ..demo.portrait_check import portrait_notice

            state.note = portrait_notice(image) or state.note
        return state

    def _detected_region_masks(self, image: torch.Tensor, side: int, models_dir: str | None) -> tuple[torch.Tensor, str]:
        """Region masks (full, face, lip) at ``side`` x ``side`` from the face found in the portrait [H, W, 3].

        Detection runs on the portrait as given (small faces are lost at the model size); the box is then
        mapped the way :func:`~emo_model.sampling.pipeline.fit_image` maps the image (centred padding to a square,
        then resize).
        """
        import warnings

        from ..face import FaceBox, FaceError, detect_faces

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
        if getattr(portrait, "region_masks", None) is not None:  # the original's, per feature-map size {(h, w): [3, h, w]}
            return {size: torch.from_numpy(m) for size, m in portrait.region_masks.items()}
        h, w = portrait.image.shape[:2]
        return torch.from_numpy(region_masks(portrait.face_box, h, w))

    def region_masks_from_mask(self, mask: torch.Tensor | None, size: tuple[int, int], reference=None):
        """The region masks from a face-region mask: its box, shrunk back by the preset's expansion; the reference's
        own when the family's original preprocessing made them (a dict per feature-map size)."""
        if reference is not None and isinstance(reference.region_masks, dict):
            return reference.region_masks
        if not self.config.backbone.region_audio_modules or mask is None:
            return None
        from ..face import FaceBox

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
        from ..sampling.clip_planner import context_schedule

        quirks = self.config.preset.quirks
        plan = context_schedule(num_frames, settings.frames_per_clip, settings.context_overlap,
                                schedule=quirks.context_schedule, shift_per_step=quirks.context_shift_per_step)
        windows = len(plan(0))
        moving = f", moving {quirks.context_shift_per_step} frames per step" if quirks.context_shift_per_step else ""
        return (f"{windows} context window{'s' * (windows != 1)} of {min(settings.frames_per_clip, num_frames)} frames "
                f"(overlap {settings.context_overlap}{moving})")

    def to(self, device: torch.device | str) -> Session:
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
