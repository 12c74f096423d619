"""Samples during training: a few frames (stage 1) or a short video (stages 2-3) of the held-out segment, for the eye."""

from __future__ import annotations

from pathlib import Path

import torch

from ..network.model import Conditioning, EMOModel


def held_out(trainer):
    """The first held-out segment and its tensors."""
    entry = trainer.store.entries[trainer.holdout[0]]
    return entry, trainer.store.tensors(entry)


def sample_images(trainer, model: EMOModel) -> Path:
    """Stage 1: independent frames from the reference (temporal off, no audio), with reference CFG."""
    import cv2
    import numpy as np

    from ..sampling.schedulers import make_scheduler

    entry, tensors = held_out(trainer)
    total = entry["frames"]
    picks = [0, total // 3, 2 * total // 3]
    pixels = trainer.store.frames(entry, picks)
    device = trainer.accelerator.device
    ref_latent = trainer.encode(torch.from_numpy(pixels[:1]))
    bank = model.encode_reference(ref_latent, model.identity_tokens(None))
    face = model.face_features(tensors["mask"].float()[None].to(device))
    scheduler = make_scheduler("ddim", trainer.config.preset.scheduler)
    scheduler.set_timesteps(trainer.cfg.sample_steps, device=device)
    g = torch.Generator().manual_seed(trainer.cfg.seed)
    shape = (2, trainer.config.latent_channels, 1, *ref_latent.shape[-2:])
    x = (torch.randn(shape, generator=g) * scheduler.init_noise_sigma).to(device)
    cond = Conditioning(
        reference=bank,
        reference_enabled=torch.tensor([True, False], device=device),  # conditional, unconditional
        face_features=torch.cat([face, torch.zeros_like(face)]),
        identity_tokens=model.identity_tokens(None, 2),
        temporal=False,
    )
    scale = trainer.config.preset.cfg
    for t in scheduler.timesteps:
        outs = []
        for i in range(2):  # each sample with its conditional and unconditional branch
            xi = scheduler.scale_model_input(x[i : i + 1], t).expand(2, -1, -1, -1, -1)
            out = model(xi, t, cond).float()
            outs.append(out[1:] + scale * (out[:1] - out[1:]))
        x = scheduler.step(torch.cat(outs), t, x).prev_sample
    images = trainer.codec.decode(x[:, :, 0]).cpu().numpy()
    row = [pixels[0]] + [(im * 255).round().astype(np.uint8) for im in images] + [pixels[1]]
    path = trainer.paths.samples / f"stage1-step{trainer.global_step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(row, axis=1), cv2.COLOR_RGB2BGR))
    return path

def sample_video(trainer, model: EMOModel) -> Path:
    """Stages 2-3: the held-out segment's audio through the sampling pipeline (generated | ground truth)."""
    import numpy as np

    from ..sampling.pipeline import EMOPipeline
    from ..sampling.settings import SamplingSettings
    from ..video_io import VideoWriter
    from .dataset import segment_audio_features

    entry, tensors = held_out(trainer)
    frames = min(entry["frames"], trainer.frames * trainer.cfg.sample_clips)
    truth = trainer.store.frames(entry, list(range(frames)))
    features = segment_audio_features(tensors["audio_features"], trainer.config.audio, 0, frames)
    pipe = EMOPipeline(model, trainer.codec, device=trainer.accelerator.device)
    reference = pipe.encode_reference(torch.from_numpy(truth[0]).float() / 255.0, size=truth.shape[1])
    settings = SamplingSettings.from_preset(
        trainer.config.preset,
        steps=trainer.cfg.sample_steps,
        seed=trainer.cfg.seed,
        frames_per_clip=trainer.frames,
        motion_frames=trainer.motion_frames,
        speed=float(tensors["speed"][:frames].mean()),
    )
    generated = pipe.generate_frames(reference, features, settings=settings, face_mask=tensors["mask"].float())
    video = np.concatenate([(generated.numpy() * 255).round().astype(np.uint8), truth], axis=2)
    audio = tensors["audio"][: round(frames * 16000 / entry["fps"])].numpy()
    path = trainer.paths.samples / f"stage{trainer.cfg.stage}-step{trainer.global_step:07d}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, entry["fps"], audio=(audio, 16000)) as writer:
        writer.write(video)
    return path
