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

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .attention import KV, ReferenceBank
from .clip_planner import context_schedule, frame_indices, plan_clips, plan_windows
from .colour_match import colour_stats, match_colours
from .configs import PresetConfig
from .model import Conditioning, EMOModel
from .unet_blocks import DeepFeatureCache
from .motion_frames import first_clip_motion
from .schedulers import init_noise_sigma, make_scheduler, scale_model_input
from .seed_stream import SeedStream, clip_seed  # noqa: F401  (clip_seed: where it always was, for callers)
from .validation import check_finite
from .vae import LatentCodec

Sink = Callable[[torch.Tensor], None]


class GenerationCancelled(RuntimeError):
    """Raised between two denoising steps when the caller asked to stop."""


@dataclass
class SamplingSettings:
    steps: int = 40
    cfg: float = 3.5  # reference / overall guidance
    audio_cfg: float = 3.5  # audio guidance (same as cfg = classic CFG)
    sampler: str = "ddim"
    seed: int = 0
    speed: float | Sequence[float] = 0.7  # head-rotation speed, deg/frame: a constant or a per-frame curve
    strategy: str = "motion_frames"  # or "context_windows"
    frames_per_clip: int = 12
    motion_frames: int = 4
    context_overlap: int = 3
    first_clip_motion: str = "zeros"
    colour_match: str = "none"
    motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)  # the region audio modules' pose / face / lip weights
    pad_last_clip: bool = True
    # work savers (the fast mode, docs/performance.md): guidance branches only on the first
    # ``guidance_fraction`` of the steps (the full branch alone after that), and the whole denoiser
    # every ``deep_cache_interval`` steps with deep features reused in between (1 = every step)
    guidance_fraction: float = 1.0
    deep_cache_interval: int = 1
    # performance switches (the naive settings exist for the benchmark's baseline)
    batch_guidance: bool = True
    reference_every_step: bool = False
    # emotion class of the emotion audio modules: one for the whole video, or one per audio-feature row (each clip
    # uses the most frequent of its rows, the smallest on ties); None = the preset's
    emotion: int | Sequence[int] | None = None

    @classmethod
    def from_preset(cls, preset: PresetConfig, **overrides) -> "SamplingSettings":
        base = dict(
            steps=preset.steps,
            cfg=preset.cfg,
            audio_cfg=preset.audio_cfg,
            sampler=preset.sampler,
            speed=preset.speed,
            strategy=preset.strategy,
            frames_per_clip=preset.frames_per_clip,
            motion_frames=preset.motion_frames,
            context_overlap=preset.context_overlap,
            first_clip_motion=preset.first_clip_motion,
            emotion=preset.emotion,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


@dataclass
class StepInfo:
    clip: int  # index of the clip (or 0 for context windows)
    clips: int
    step: int  # step within the clip, 1-based
    steps: int
    done: int  # denoiser steps done in the whole run
    total: int


@dataclass
class ReferenceState:
    """The portrait, encoded once per video (the EMO_REFERENCE value)."""

    image: torch.Tensor  # [H, W, 3] float 0..1, CPU
    latent: torch.Tensor  # [1, C, h, w]
    bank: ReferenceBank
    identity_tokens: torch.Tensor | None
    identity_uncond: torch.Tensor | None
    colour: tuple
    # [3, H, W] (full, face, lip) masks for models with region-masked audio modules, made from the
    # portrait's face detection; used when the caller gives none. ``note`` says how they were made.
    region_masks: torch.Tensor | None = None
    note: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.image.shape[:2])

    def to(self, device: torch.device | str) -> "ReferenceState":
        """The same state with its tensors on ``device`` (states live on the CPU between runs)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return dataclasses.replace(
            self,
            latent=move(self.latent),
            bank=self.bank.to(device),
            identity_tokens=move(self.identity_tokens),
            identity_uncond=move(self.identity_uncond),
        )


def guidance_weights(cfg: float, audio_cfg: float) -> dict[str, float]:
    """Weights of the branches that contribute (zero-weight branches are not run)."""
    weights = {"uncond": 1.0 - cfg, "reference": cfg - audio_cfg, "full": audio_cfg}
    return {k: w for k, w in weights.items() if abs(w) > 1e-8}


def speed_curve(speed: float | Sequence[float] | torch.Tensor, num_frames: int) -> torch.Tensor:
    """A constant or any-length curve -> one speed per frame (linear resampling)."""
    values = torch.as_tensor(speed, dtype=torch.float32).flatten()
    if values.numel() == 1:
        return values.expand(num_frames).clone()
    if values.numel() == num_frames:
        return values
    return F.interpolate(values[None, None], size=num_frames, mode="linear", align_corners=True)[0, 0]


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
    ) -> int:
        """Generate one frame per row of ``audio_features`` ([F, ...], EMO_AUDIO layout) into ``sink``.

        ``audio_features`` is read clip by clip (``audio_features[index]``): a tensor, or a
        :class:`~emo_model.audio_stream.StreamedFeatures` that computes each clip's rows when it is read.

        ``num_frames``: generate only the first ``num_frames`` frames (``AudioFeatures.num_frames``); the rows
        after them are the audio of a padded last clip (InferenceQuirks.audio_padded_to_clips). None: every row.

        ``noise``: optional initial noise [C, F', h, w] (latent channels, every generated frame including
        a padded last clip, latent size), used instead of the seeded noise (e.g. to reproduce another run).
        ``motion_drop_draws``: optional [clips, H, W] uniform draws in [0, 1), one per pixel and clip, used instead of
        the seeded ones by the motion-frame pixel drop (InferenceQuirks.motion_frame_pixel_drop).

        ``face_mask``: [H, W] face-region mask in 0..1 at any size (None = the whole frame, which lets
        the face move anywhere). ``region_masks``: the [3, H, W] (full, face, lip) masks of the region audio modules.
        Returns the number of frames handed to the sink.
        """
        self._check(settings)
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
        run = _Run(self, reference, audio_features, settings, sink, face_mask, region_masks, on_step, should_cancel, noise, num_frames, motion_drop_draws)
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


class _Run:
    """State of one :meth:`EMOPipeline.generate` call."""

    def __init__(self, pipe: EMOPipeline, ref: ReferenceState, features, s: SamplingSettings, sink, face_mask, region_masks, on_step, should_cancel, noise=None, num_frames=None, drop_draws=None):
        self.pipe, self.model, self.ref, self.s, self.sink = pipe, pipe.model, ref, s, sink
        self.on_step, self.should_cancel = on_step, should_cancel
        self.device, self.dtype = pipe.device, pipe.model.dtype
        self.features = features
        self.num_frames = int(features.shape[0]) if num_frames is None else num_frames  # frames to emit
        self.feature_rows = int(features.shape[0])  # >= num_frames: rows after it pad the last clip
        self.speeds = speed_curve(s.speed, self.num_frames)
        self.weights = guidance_weights(s.cfg, s.audio_cfg)
        self.branches = list(self.weights)
        self.guided_steps = s.steps if s.guidance_fraction >= 1 else math.ceil(max(s.guidance_fraction, 0.0) * s.steps)
        h, w = ref.size
        self.latent_hw = (h // pipe.codec.scale_factor, w // pipe.codec.scale_factor)
        mask = torch.ones(h, w) if face_mask is None else face_mask.float().cpu()
        if mask.dim() == 3:
            mask = mask[0]
        if mask.shape != (h, w):
            mask = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        self.face = self.model.face_features(mask[None].to(self.device, self.dtype))
        self.region = None if region_masks is None else (  # a dict: masks per feature-map size {(h, w): [3, h, w]}
            {k: v[None].to(self.device, self.dtype) for k, v in region_masks.items()} if isinstance(region_masks, dict)
            else region_masks[None].to(self.device, self.dtype))
        self.reference_kv: dict[str, KV] | None = None
        if not s.reference_every_step:
            self.reference_kv = self.model.denoising_unet.project_reference(ref.bank)
        self.scheduler = make_scheduler(s.sampler, pipe.config.preset.scheduler)
        self.step_kwargs = {"eta": 0.0} if "eta" in inspect.signature(self.scheduler.step).parameters else {}
        self.uses_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        self.done = 0
        self.memories: dict[tuple, dict] = {}  # temporal modules with a memory: one per batch of branches, per video
        self.folded: set[tuple] = set()
        self.quirks = pipe.config.preset.quirks
        # one row of motion features per guidance branch (identities alternating as in the original), else shared
        self.per_branch_motion = (
            self.quirks.reference_identity_alternates and "uncond" in self.branches and ref.identity_tokens is not None
        )
        self.initial_noise = None if noise is None else self._checked_noise(noise)
        # InferenceQuirks.motion_frame_pixel_drop (motion frames as pixels only); the face region is spared
        self.pixel_drop = float(self.quirks.motion_frame_pixel_drop) if self.quirks.motion_frames_from_pixels else 0.0
        self.face_pixels = mask > 0  # [H, W]
        self.drop_draws = None if drop_draws is None else self._checked_draws(drop_draws)
        # which draws the seed gives, in what order (InferenceQuirks.seed_stream: ours per clip, or the original's one stream)
        self.stream = SeedStream(s.seed, self.quirks.seed_stream, self.dtype)
        # portrait rows [block 0, block 1] of the original's guidance batch (InferenceQuirks.reference_rows_tiled)
        self.row_bank = self._row_bank(ref.bank) if self.quirks.reference_rows_tiled and self.per_branch_motion else None
        if self.row_bank is not None and self.reference_kv is not None:
            self.reference_kv = self.model.denoising_unet.project_reference(self.row_bank)

    # ---- shared pieces ----------------------------------------------------------------------------
    def _cancel_point(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise GenerationCancelled("generation cancelled")

    def _row_bank(self, cond_bank: ReferenceBank) -> ReferenceBank:
        """The portrait rows of the original's two guidance blocks: block 0's portrait (row 0) reads the
        unconditional identity, block 1's (row n + 1) the conditional one when n + 1 is odd."""
        uncond_bank = self.model.encode_reference(self.ref.latent, self.ref.identity_uncond)
        second = cond_bank if (self.s.motion_frames + 1) % 2 == 1 else uncond_bank
        return ReferenceBank({k: torch.cat([v, second.tokens[k]]) for k, v in uncond_bank.tokens.items()})

    def _checked_noise(self, noise: torch.Tensor) -> torch.Tensor:
        s = self.s
        if s.strategy == "context_windows":
            frames = self.num_frames
        else:
            frames = plan_clips(self.num_frames, s.frames_per_clip, pad_last=s.pad_last_clip)[-1]
            frames = frames.start + frames.generate
        want = (self.model.config.latent_channels, frames, *self.latent_hw)
        if noise.dim() != 4 or (noise.shape[0], *noise.shape[2:]) != (want[0], *want[2:]) or noise.shape[1] < frames:
            raise ValueError(
                f"noise must be [channels, frames, height, width] = [{want[0]}, >={frames}, {want[2]}, {want[3]}] "
                f"(latent channels, every generated frame, latent size), got {list(noise.shape)}; or pass noise=None"
            )
        return noise.float()

    def _checked_draws(self, draws: torch.Tensor) -> torch.Tensor:
        s = self.s
        clips = len(plan_clips(self.num_frames, s.frames_per_clip, pad_last=s.pad_last_clip))
        h, w = self.ref.size
        if draws.dim() != 3 or tuple(draws.shape[1:]) != (h, w) or draws.shape[0] < clips:
            raise ValueError(
                f"motion_drop_draws must be [clips, height, width] = [>={clips}, {h}, {w}] (one uniform draw per pixel and "
                f"clip), got {list(draws.shape)}; or pass motion_drop_draws=None"
            )
        return draws.float().cpu()

    def _drop_pixels(self, frames: torch.Tensor, index: int) -> torch.Tensor:
        """Motion frames [n, H, W, 3] (0..1) with the pixel drop of clip ``index``: every pixel outside the face region
        whose uniform draw is <= the rate becomes mid grey (0 in the VAE's [-1, 1] input); one draw per pixel, shared
        by the frames and the channels (InferenceQuirks.motion_frame_pixel_drop)."""
        if self.drop_draws is not None:
            draws = self.drop_draws[index]
        else:
            draws = self.stream.clip(index)[0]
        keep = (draws > self.pixel_drop) | self.face_pixels
        return torch.where(keep[None, :, :, None], frames, torch.full((), 0.5, dtype=frames.dtype))

    def _clip_draws(self, index: int, frames: int) -> None:
        """Draw clip ``index``'s random numbers at its start, in the order the seed layout gives them (pixel-drop
        draws, then the initial noise); :meth:`_drop_pixels` and :meth:`_noise` read them."""
        shape = (1, self.model.config.latent_channels, frames, *self.latent_hw)
        self.stream.clip(index, shape, self.ref.size if self.pixel_drop and self.drop_draws is None else None)

    def _noise(self, frames: int, index: int, start: int = 0) -> tuple[torch.Tensor, torch.Generator]:
        if self.initial_noise is not None:
            noise = self.initial_noise[:, start : start + frames].unsqueeze(0).to(self.device)
        else:
            self._clip_draws(index, frames)
            noise = self.stream.clip(index)[1].to(self.device)
        return self._scaled_noise(noise), self.stream.step_generator(index, self.device)

    def _scaled_noise(self, noise: torch.Tensor) -> torch.Tensor:
        if self.quirks.initial_noise_clamp is not None:
            noise = noise.clamp(-self.quirks.initial_noise_clamp, self.quirks.initial_noise_clamp)
        return noise * init_noise_sigma(self.scheduler)

    def _clip_emotion(self, index: torch.Tensor) -> int | None:
        """The emotion class of the frames ``index`` (emotion audio modules), or None for models without them."""
        if self.model.denoising_unet.emotion_classes is None:
            return None
        emotion = self.s.emotion
        if emotion is None or isinstance(emotion, int):
            return emotion
        labels = torch.as_tensor(emotion, dtype=torch.long).flatten()
        counts = torch.bincount(labels[index.clamp(max=labels.numel() - 1)])
        return int((counts == counts.max()).nonzero()[0])  # the most frequent; the smallest on ties

    def _with_memory(self, groups, step: int) -> list:
        """Attach each group's memory (temporal modules with a memory: one per batch of branches, kept for the whole
        video); the past frames are folded in at a clip's first step (or a group's first use in the clip)."""
        if self.model.config.backbone.temporal.memory_decay is None:
            return groups
        out = []
        for names, cond in groups:
            key = tuple(names)
            fresh = step == 0 or key not in self.folded
            self.folded.add(key)
            out.append((names, dataclasses.replace(cond, memory=self.memories.setdefault(key, {}), update_memory=fresh)))
        return out

    def _branch_conditioning(self, audio_tokens, speed_tokens, motion, branches=None, emotion=None) -> list[tuple[list[str], Conditioning]]:
        """Conditioning for the guidance branches: one batched group, or one group per branch.

        ``emotion``: the clip's emotion class (None: the "no emotion" class); the unconditional branch gets "no emotion".
        """
        branches = self.branches if branches is None else branches
        groups = [branches] if self.s.batch_guidance else [[b] for b in branches]
        out = []
        for names in groups:
            bank = dataclasses.replace(self.row_bank or self.ref.bank, motion=self._branch_motion(motion, names))
            rows = None
            if self.row_bank is not None:  # frame j of a conditional branch is row f + j of the original's batch
                f = audio_tokens.shape[1]
                rows = torch.stack([(torch.arange(f) + (0 if n == "uncond" else f)) % 2 for n in names])
            zeros_audio = torch.zeros_like(audio_tokens)
            ident = self.ref.identity_tokens
            cond = Conditioning(
                reference=bank,
                reference_kv=self.reference_kv,
                reference_enabled=torch.tensor([n != "uncond" for n in names]),  # host data: no sync per layer
                reference_rows=rows,
                audio_tokens=torch.cat([audio_tokens if n == "full" else zeros_audio for n in names]),
                identity_tokens=None if ident is None else torch.cat([ident if n != "uncond" else self.ref.identity_uncond for n in names]),
                face_features=None if self.face is None else torch.cat([self.face if n != "uncond" else torch.zeros_like(self.face) for n in names]),
                region_masks=self.region,
                speed_tokens=speed_tokens,
                motion_scale=tuple(self.s.motion_scale),
                emotion=self._emotion_rows(names, emotion),
            )
            out.append((names, cond))
        return out

    def _emotion_rows(self, names: list[str], emotion: int | None) -> torch.Tensor | None:
        null = self.model.denoising_unet.emotion_classes
        if null is None:
            return None
        return torch.tensor([null if (n == "uncond" or emotion is None) else emotion for n in names], dtype=torch.long)

    def _encode_motion(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """Motion latents [1, n, C, h, w] -> ReferenceNet features [1 or len(branches), n, L, C].

        With ``per_branch_motion`` (``InferenceQuirks.reference_identity_alternates`` under guidance) branch
        ``b``'s motion frame ``k`` is row ``r = block * (n + 1) + k`` of the original's stacked rows (block 0 =
        unconditional, 1 = conditional; row 0 of a block is the portrait) and reads the unconditional identity
        when ``r`` is even, the conditional one when odd.
        """
        ident = self.ref.identity_tokens
        if not self.per_branch_motion:
            return self.model.encode_motion(latents, ident)
        n = latents.shape[1]
        rows = []
        for name in self.branches:
            first = 0 if name == "uncond" else n + 1
            rows += [self.ref.identity_uncond if (first + k) % 2 == 0 else ident for k in range(1, n + 1)]
        return self.model.encode_motion(latents.expand(len(self.branches), -1, -1, -1, -1), torch.cat(rows))

    def _branch_motion(self, motion: dict[str, torch.Tensor] | None, names: list[str]) -> dict[str, torch.Tensor] | None:
        """The motion features of ``names`` (per-branch rows) or the shared ones."""
        if motion is None or not self.per_branch_motion:
            return motion
        index = [self.branches.index(name) for name in names]
        return {k: v[index] for k, v in motion.items()}

    def _phases(self, audio_tokens, speed_tokens, motion, emotion=None):
        """Per step ``i``: (conditioning groups, guidance weights, cache key) — guided, then the full branch only."""
        guided = (self._branch_conditioning(audio_tokens, speed_tokens, motion, emotion=emotion), self.weights, "guided")
        if self.guided_steps >= self.s.steps:
            return lambda i: guided
        late = (self._branch_conditioning(audio_tokens, speed_tokens, motion, ["full"], emotion), {"full": 1.0}, "late")
        return lambda i: guided if i < self.guided_steps else late

    def _with_cache(self, groups, caches: dict, key) -> list:
        """Attach one :class:`DeepFeatureCache` per group; refresh it every ``deep_cache_interval`` steps."""
        if self.s.deep_cache_interval <= 1:
            return groups
        out = []
        for j, (names, cond) in enumerate(groups):
            cache = caches.setdefault((key, j), DeepFeatureCache())
            age = caches.get((key, j, "age"), self.s.deep_cache_interval)
            cache.refresh = cache.features is None or age >= self.s.deep_cache_interval
            caches[(key, j, "age")] = 1 if cache.refresh else age + 1
            out.append((names, dataclasses.replace(cond, feature_cache=cache)))
        return out

    def _predict(self, latents: torch.Tensor, t: torch.Tensor, groups, motion_latents, weights=None) -> torch.Tensor:
        """One guided denoiser evaluation (all branches) for latents [1, C, F, h, w]."""
        x = scale_model_input(self.scheduler, latents, t)
        preds: dict[str, torch.Tensor] = {}
        for names, cond in groups:
            if self.s.reference_every_step:  # naive baseline: ReferenceNet on every step
                bank = self.model.encode_reference(self.ref.latent, self.ref.identity_tokens)
                bank = bank if self.row_bank is None else self._row_bank(bank)
                bank.motion = cond.reference.motion if motion_latents is None else self._branch_motion(self._encode_motion(motion_latents), names)
                cond = dataclasses.replace(cond, reference=bank, reference_kv=None)
            out = self.model(x.expand(len(names), -1, -1, -1, -1), t, cond).float()
            preds.update(zip(names, out.split(1)))
        return sum(w * preds[name] for name, w in (weights or self.weights).items())

    def _step(self, pred, t, latents, generator) -> torch.Tensor:
        kwargs = dict(self.step_kwargs)
        if self.uses_generator:
            kwargs["generator"] = generator
        return self.scheduler.step(pred, t, latents, **kwargs).prev_sample

    def _report(self, clip: int, clips: int, step: int, total: int, latents: torch.Tensor | None = None) -> None:
        if latents is not None:  # one isfinite().all() per step: NaN stops the run here, not as black frames
            check_finite(latents, "latents", clip=clip, clips=clips, step=step, steps=self.s.steps)
        self.done += 1
        if self.on_step is not None:
            self.on_step(StepInfo(clip, clips, step, self.s.steps, self.done, total))

    def _emit(self, latents: torch.Tensor, keep_last: int = 0) -> torch.Tensor | None:
        """Decode [1, C, F, h, w], colour-match, hand to the sink; returns the last ``keep_last`` decoded frames."""
        frames = self.pipe.codec.decode(latents[0].transpose(0, 1)).float().cpu()
        self.emitted = getattr(self, "emitted", 0) + 1
        check_finite(frames, "decoded frames (VAE output)", clip=self.emitted - 1, clips=None)
        kept = frames[-keep_last:].clone() if keep_last else None  # before the sink sees (and may change) them
        self.sink(match_colours(frames, self.ref.colour, self.s.colour_match))
        return kept

    def _audio_tokens(self, index: torch.Tensor) -> torch.Tensor:
        return self.model.audio_tokens(self.features[index].to(self.device))

    # ---- strategies ---------------------------------------------------------------------------------
    def motion_frames(self) -> int:
        s, model = self.s, self.model
        clips = plan_clips(self.num_frames, s.frames_per_clip, pad_last=s.pad_last_clip)
        total = len(clips) * s.steps
        n = s.motion_frames
        history: torch.Tensor | None = None  # the last n generated latents, [1, n, C, h, w]
        frames_before: torch.Tensor | None = None  # with a pixel drop: the last n decoded frames, [n, H, W, 3]
        for clip in clips:
            self._cancel_point()
            self._clip_draws(clip.index, clip.generate)  # in the seed layout's order (used where nothing is injected)
            if n == 0:
                motion, motion_latents = None, None
            elif self.pixel_drop and (frames_before is not None or s.first_clip_motion == "reference"):
                # the frames before this clip (first clip: the portrait repeated) with this clip's pixel drop, encoded
                frames = frames_before if frames_before is not None else self.ref.image[None].expand(n, -1, -1, -1)
                motion_latents = self.pipe.codec.encode(self._drop_pixels(frames, clip.index)).to(self.device, self.dtype).unsqueeze(0)
                motion = self._encode_motion(motion_latents)
            elif history is None and s.first_clip_motion != "reference":
                motion, motion_latents = first_clip_motion(self.ref.bank, n, s.first_clip_motion), None
            else:  # the frames before this clip, or (first clip, "reference") the portrait repeated
                motion_latents = history if history is not None else self.ref.latent.unsqueeze(1).expand(-1, n, -1, -1, -1)
                motion = self._encode_motion(motion_latents)
            index = frame_indices(clip.start, clip.generate, self.feature_rows)
            speed_index = frame_indices(clip.start - n, n + clip.generate, self.num_frames).clamp(min=0)
            phase = self._phases(
                self._audio_tokens(index), model.speed_tokens(self.speeds[speed_index][None]), motion, self._clip_emotion(index)
            )
            caches: dict = {}
            self.folded = set()
            latents, generator = self._noise(clip.generate, clip.index, clip.start)
            self.scheduler.set_timesteps(s.steps, device=self.device)
            for i, t in enumerate(self.scheduler.timesteps):
                self._cancel_point()
                groups, weights, key = phase(i)
                groups = self._with_memory(self._with_cache(groups, caches, key), i)
                pred = self._predict(latents, t, groups, motion_latents, weights)
                latents = self._step(pred, t, latents, generator)
                self._report(clip.index, len(clips), i + 1, total, latents)
            kept = latents[:, :, : clip.length]
            pixels = self._emit(kept, keep_last=n if self.quirks.motion_frames_from_pixels else 0)
            if n and pixels is not None and self.pixel_drop:  # encoded at the next clip, after its pixel drop
                frames_before = pixels if frames_before is None else torch.cat([frames_before, pixels])[-n:]
            elif n:
                if pixels is not None:  # the decoded frames encoded again (InferenceQuirks.motion_frames_from_pixels)
                    recent = self.pipe.codec.encode(pixels).to(self.device, self.dtype).unsqueeze(0)
                else:
                    recent = kept.transpose(1, 2).to(self.dtype)
                history = recent[:, -n:] if history is None else torch.cat([history, recent], dim=1)[:, -n:]
        return self.num_frames

    def context_windows(self) -> int:
        s = self.s
        size, n_frames = s.frames_per_clip, self.num_frames
        q = self.quirks
        plan = context_schedule(n_frames, size, s.context_overlap, schedule=q.context_schedule, shift_per_step=q.context_shift_per_step)
        if self.initial_noise is not None:
            latents = self._scaled_noise(self.initial_noise[:, :n_frames].unsqueeze(0).to(self.device))
        else:  # the whole sequence at once (the single layout: as the original draws it)
            shape = (1, self.model.config.latent_channels, n_frames, *self.latent_hw)
            latents = self._scaled_noise(self.stream.video(shape, size).to(self.device))
        generator = self.stream.step_generator(0, self.device)
        motion = None
        self.scheduler.set_timesteps(s.steps, device=self.device)
        speed_tokens = self.model.speed_tokens(self.speeds[None])
        caches: dict = {}
        for i, t in enumerate(self.scheduler.timesteps):
            self._cancel_point()
            acc = torch.zeros_like(latents)
            norm = torch.zeros(n_frames, device=self.device)
            for frames, blend in plan(i):  # frame indices (may wrap around the end), blend weights
                self._cancel_point()
                index = torch.tensor(frames)
                spd = None if speed_tokens is None else speed_tokens[:, index.to(speed_tokens.device)]
                groups, weights, key = self._phases(self._audio_tokens(index), spd, motion, self._clip_emotion(index))(i)
                groups = self._with_cache(groups, caches, (key, frames[0]))
                pred = self._predict(latents[:, :, index.to(self.device)], t, groups, None, weights)
                at = index.to(self.device)  # distinct frames within a window
                acc[:, :, at] += pred * blend.to(self.device).view(1, 1, -1, 1, 1)
                norm[at] += blend.to(self.device)
            latents = self._step(acc / norm.view(1, 1, -1, 1, 1), t, latents, generator)
            self._report(0, 1, i + 1, s.steps, latents)
        for start in range(0, n_frames, size):
            self._cancel_point()
            self._emit(latents[:, :, start : start + size])
        return n_frames


def fast_settings(preset: PresetConfig) -> dict:
    """The fast mode (``generate --fast``, the sampler node's ``fast``): overrides of a family's preset.

    DPM++ 2M at 0.4x the preset's steps (never fewer than 8, or than the preset's own count where that is
    lower, e.g. distilled models) and the whole denoiser every second step, with deep features reused in
    between; guidance stays on every step (cutting it cost the most lip sync of the three savers).
    Chosen from the table of ``python -m emo_model eval-fast`` (``docs/performance.md``): on the demo,
    a third of the default recipe's denoiser work with lip sync no worse.
    """
    steps = max(round(preset.steps * 0.4), min(preset.steps, 8))
    sampler = "dpmpp_2m" if preset.scheduler.flow_shift is None else preset.sampler  # flow models keep their sampler
    return {"sampler": sampler, "steps": steps, "guidance_fraction": 1.0, "deep_cache_interval": 2}


def estimate_clips(num_frames: int, settings: SamplingSettings) -> int:
    """How many clips (or windows) a run of ``num_frames`` frames takes (for run summaries)."""
    if settings.strategy == "context_windows":
        return len(plan_windows(num_frames, settings.frames_per_clip, settings.context_overlap))
    return math.ceil(num_frames / settings.frames_per_clip)
