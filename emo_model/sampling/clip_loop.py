"""The clip loop of one generation: clips (or context windows) denoised in turn with guidance, motion frames and the seed stream."""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F

from ..network.context import KV, ReferenceBank
from ..network.model import Conditioning
from ..network.motion_frames import first_clip_motion
from ..network.unet_blocks import DeepFeatureCache
from ..validation import check_finite
from .clip_planner import context_schedule, frame_indices, plan_clips
from .colour_match import match_colours
from .pose_sequence import checked_pose_frames, pose_rows
from .reference_state import ReferenceState
from .schedulers import init_noise_sigma, make_scheduler, scale_model_input
from .seed_stream import SeedStream
from .settings import GenerationCancelled, SamplingSettings, StepInfo, guidance_weights, speed_curve


class _Run:
    """State of one :meth:`EMOPipeline.generate` call (``pipe``: that pipeline; not imported here, it imports this)."""

    def __init__(self, pipe: Any, ref: ReferenceState, features, s: SamplingSettings, sink, face_mask, region_masks, on_step, should_cancel, noise=None, num_frames=None, drop_draws=None, pose_frames=None):
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
        # a pose guider (FaceLocatorConfig.reads "pose_frames"): one pose image per frame, encoded per window (_pose_window)
        self.pose = None if pose_frames is None else checked_pose_frames(pose_frames, (h, w))
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
        skip = self.quirks.seed_draws_per_audio_layer
        self.stream = SeedStream(s.seed, self.quirks.seed_stream, self.dtype, skip=skip * pipe.config.audio.layers if skip else 0)
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

    def _pose_window(self, index: torch.Tensor) -> None:
        """With pose frames: the pose guider's features of the frames ``index`` ([1, C0, F, h, w]) become ``self.face``."""
        if self.pose is not None:
            poses = self.pose[pose_rows(index.cpu(), self.pose.shape[0])].to(self.device, self.dtype)
            self.face = self.model.face_features(poses).transpose(0, 1).unsqueeze(0)

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
            self._pose_window(index)
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
                self._pose_window(index)
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
