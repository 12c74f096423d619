"""Sampling: any length of audio -> a continuous video, clip by clip.

Per video: the portrait is encoded once (VAE latent, ReferenceNet bank, the bank's keys/values for
every backbone block, face-identity tokens where the family has them, colour statistics).
Per clip (motion-frames strategy): the motion frames (the last ``n`` generated latents) go through the
ReferenceNet once; seeded noise; the scheduler loop, each step one batched forward over the guidance
branches; decode in batches; colour match; the frames go to a *sink* (a list for ComfyUI, the video
file for the CLI) and are not kept, so memory does not grow with the audio.
With context windows the latents of every frame stay in memory (16 KB per frame at 512²
in fp32 — latents only) and are decoded window by window at the end.

Guidance (classifier-free, batched into one forward):

* ``uncond``: no reference-attention, zero audio tokens, zero Face Locator features, neutral identity
  (what the originals feed their unconditional branch);
* ``reference``: portrait on, audio off;  ``full``: everything on.

``pred = uncond + cfg * (reference - uncond) + audio_cfg * (full - reference)``; with ``audio_cfg == cfg``
this is classic CFG and the reference branch drops out, with ``cfg == 1`` the unconditional branch
drops out, and with both at 1 a single forward is run.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..network.model import EMOModel
from ..network.vae import LatentCodec
from .clip_loop import _Run
from .colour_match import colour_stats
from .reference_state import ReferenceState
from .settings import SamplingSettings, StepInfo

Sink = Callable[[torch.Tensor], None]


def fit_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[H, W, C] float 0..1 -> [height, width, C]: padded to the target aspect (edge pixels), then resized."""
    h, w = image.shape[:2]
    target = width / height
    if abs(w / h - target) > 1e-3:
        x = image.permute(2, 0, 1)[None]
        if w / h < target:
            extra = round(h * target) - w
            x = F.pad(x, (extra // 2, extra - extra // 2, 0, 0), mode="replicate")
        else:
            extra = round(w / target) - h
            x = F.pad(x, (0, 0, extra // 2, extra - extra // 2), mode="replicate")
        image = x[0].permute(1, 2, 0)
    if image.shape[:2] != (height, width):
        x = image.permute(2, 0, 1)[None].float()
        image = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0)
    return image.clamp(0, 1)


class EMOPipeline:
    def __init__(self, model: EMOModel, codec: LatentCodec, *, device: torch.device | str | None = None):
        self.model = model
        self.codec = codec
        self.device = torch.device(device) if device is not None else model.device

    @property
    def config(self):
        return self.model.config

    # ---- per video --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_reference(
        self, image: torch.Tensor, *, size: int | None = None, identity_embedding: torch.Tensor | None = None
    ) -> ReferenceState:
        """Portrait [H, W, 3] (or [1, H, W, 3]) float 0..1 -> :class:`ReferenceState` at the model size."""
        if image.dim() == 4:
            image = image[0]
        side = size or self.config.preset.resolution
        multiple = self.codec.scale_factor * 2 ** (len(self.config.backbone.unet.block_out_channels) - 1)
        if side % multiple:
            raise ValueError(f"size must be a multiple of {multiple} pixels, got {side}")
        image = fit_image(image.float().cpu(), side, side)
        latent = self.codec.encode(image[None]).to(self.device, self.model.dtype)
        ident = self.model.identity_tokens(identity_embedding[None] if identity_embedding is not None else None)
        ident_uncond = self.model.identity_tokens(None)
        bank = self.model.encode_reference(latent, ident)
        return ReferenceState(image, latent, bank, ident, ident_uncond, colour_stats(image))

    # ---- per run ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        reference: ReferenceState,
        audio_features: torch.Tensor,
        *,
        settings: SamplingSettings,
        sink: Sink,
        face_mask: torch.Tensor | None = None,
        region_masks: torch.Tensor | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        noise: torch.Tensor | None = None,
        num_frames: int | None = None,
        motion_drop_draws: torch.Tensor | None = None,
        pose_frames: torch.Tensor | None = None,
    ) -> int:
        """Generate one frame per row of ``audio_features`` ([F, ...], EMO_AUDIO layout) into ``sink``.

        ``audio_features`` is read clip by clip (``audio_features[index]``): a tensor, or a
        :class:`~emo_model.audio.stream.StreamedFeatures` that computes each clip's rows when it is read.

        ``num_frames``: generate only the first ``num_frames`` frames (``AudioFeatures.num_frames``); the rows
        after them are the audio of a padded last clip (InferenceQuirks.audio_padded_to_clips). None: every row.

        ``noise``: optional initial noise [C, F', h, w] (latent channels, every generated frame including
        a padded last clip, latent size), used instead of the seeded noise (e.g. to reproduce another run).
        ``motion_drop_draws``: optional [clips, H, W] uniform draws in [0, 1), one per pixel and clip, used instead of
        the seeded ones by the motion-frame pixel drop (InferenceQuirks.motion_frame_pixel_drop).

        ``face_mask``: [H, W] face-region mask in 0..1 at any size (None = the whole frame, which lets
        the face move anywhere). ``region_masks``: the [3, H, W] (full, face, lip) masks of the region audio modules.
        ``pose_frames``: [N, C, H, W] pose images in 0..1, one per video frame, for a model whose Face Locator is a pose
        guider (``FaceLocatorConfig.reads == "pose_frames"``; required there, refused elsewhere); fewer than the frames
        are mirrored back and forth (emo_model/sampling/pose_sequence.py).
        Returns the number of frames handed to the sink.
        """
        self._check(settings)
        locator = self.config.face_locator
        wants_pose = locator is not None and locator.reads == "pose_frames"
        if wants_pose and pose_frames is None:
            raise ValueError("this model's Face Locator is a pose guider: pass pose_frames (one pose image per frame)")
        if pose_frames is not None and not wants_pose:
            raise ValueError("pose_frames given, but this model has no pose guider (its Face Locator reads the face mask)")
        if region_masks is None:
            region_masks = reference.region_masks
        if region_masks is None and self.config.backbone.region_audio_modules:
            raise ValueError(
                "this model's audio modules need face / lip region masks: encode the portrait with Session.encode_reference "
                "(which detects the face) or pass region_masks"
            )
        reference = reference.to(self.device)
        rows = int(audio_features.shape[0])
        if num_frames is None:
            num_frames = rows
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= rows:
            raise ValueError(f"num_frames must be 1..{rows} (the audio feature rows), got {num_frames!r}")
        run = _Run(self, reference, audio_features, settings, sink, face_mask, region_masks, on_step, should_cancel, noise, num_frames, motion_drop_draws,
                   pose_frames)
        if settings.strategy == "context_windows":
            return run.context_windows()
        return run.motion_frames()

    def generate_frames(self, reference: ReferenceState, audio_features: torch.Tensor, **kwargs) -> torch.Tensor:
        """Like :meth:`generate`, collecting every frame: [F, H, W, 3] float 0..1 on the CPU."""
        frames: list[torch.Tensor] = []
        self.generate(reference, audio_features, sink=frames.append, **kwargs)
        return torch.cat(frames)

    def _check(self, s: SamplingSettings) -> None:
        if s.steps < 1:
            raise ValueError("steps must be at least 1")
        if s.strategy not in ("motion_frames", "context_windows"):
            raise ValueError(f"strategy must be motion_frames or context_windows, got {s.strategy!r}")
        longest = s.frames_per_clip + (s.motion_frames if s.strategy == "motion_frames" else 0)
        limit = self.config.backbone.temporal.max_len
        if longest > limit:
            raise ValueError(f"frames per clip + motion frames = {longest}, but the temporal modules handle at most {limit}")
        classes = self.model.denoising_unet.emotion_classes
        if classes is not None and s.emotion is not None:
            values = [s.emotion] if isinstance(s.emotion, int) else list(torch.as_tensor(s.emotion).flatten().tolist())
            if not values or any(isinstance(v, bool) or int(v) != v or not 0 <= v < classes for v in values):
                raise ValueError(f"emotion must be a class 0..{classes - 1} (one, or one per audio-feature row), got {s.emotion!r}")


