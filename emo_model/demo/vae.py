"""The demo's tiny VAE: a diffusers ``AutoencoderKL`` (/8, 4 latent channels) trained on the demo's frames.

The SD VAE (84 M parameters) cannot be downloaded here and would dwarf the demo, so the demo trains
its own on the 64x64 face crops of the preprocessed synthetic dataset (the frames the EMO stages
then learn to generate). Loss: L1 reconstruction, weighted 3x inside the segment's face-region mask
(the face is what matters, the backgrounds are soft gradients), plus 0.5 x MSE, plus a small KL
term (1e-6 x the summed KL per image, the latent-diffusion recipe) that keeps the posterior a smooth
distribution the diffusion model can sample from. Horizontal flips double the faces. AdamW, lr 1e-3
with a cosine decay. Batches are drawn from a generator seeded by (seed, step), and the state is
checkpointed, so a run resumes exactly.

After training, ``scaling_factor`` (the diffusers config entry that :class:`~emo_model.network.vae.DiffusersVAE`
multiplies the latents by) is set to ``1 / std`` of the posterior means over the training frames,
as SD's 0.18215 was, so the EMO model sees unit-variance latents.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import vae_config


def new_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**vae_config())


def load_dataset_frames(dataset_dir: str | Path, every: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Every ``every``-th frame of every segment: (uint8 [N, H, W, 3], uint8 face masks [N, H, W])."""
    from ..train.dataset import SegmentStore

    store = SegmentStore(dataset_dir)
    frames, masks = [], []
    for entry in store.entries:
        picks = list(range(0, entry["frames"], every))
        frames.append(store.frames(entry, picks))
        mask = store.tensors(entry)["mask"].numpy()
        masks.append(np.broadcast_to(mask, (len(picks), *mask.shape)))
    return np.concatenate(frames), np.concatenate(masks)


def _batch(frames: np.ndarray, masks: np.ndarray, size: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([seed, step])
    idx = rng.integers(0, len(frames), size)
    x = torch.from_numpy(frames[idx]).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    w = torch.from_numpy(masks[idx].astype(np.float32))[:, None]
    flip = torch.from_numpy(rng.random(size) < 0.5)
    x[flip] = x[flip].flip(-1)
    w[flip] = w[flip].flip(-1)
    return x, 1.0 + 2.0 * w


def train_vae(
    frames: np.ndarray,
    masks: np.ndarray,
    out: str | Path,
    *,
    steps: int = 3000,
    batch_size: int = 32,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    seed: int = 0,
    checkpoint_every: int = 500,
    log=print,
):
    """Train (or resume) the demo VAE in ``out``; returns the trained ``AutoencoderKL`` (eval mode).

    ``out/vae/`` receives the final model as a diffusers folder (what ``--vae`` of the trainer reads).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "vae"
    if (final / "config.json").is_file():
        from ..weights.vae_files import load_vae

        log(f"vae: {final} exists, reusing it")
        return load_vae(final)
    vae = new_vae(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    step = 0
    state_path = out / "vae-state.pt"
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        step = int(state["step"])
        log(f"vae: resumed at step {step}")
    vae.train()
    t0, running = time.time(), []
    while step < steps:
        x, w = _batch(frames, masks, batch_size, seed, step)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=torch.Generator().manual_seed(seed * 1_000_003 + step))
        rec = vae.decode(z).sample
        loss_rec = ((rec - x).abs() * w).mean() + 0.5 * F.mse_loss(rec, x)
        loss = loss_rec + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        running.append(float(loss_rec.detach()))
        if step % 100 == 0 or step == steps:
            log(f"vae step {step}/{steps}: reconstruction {np.mean(running):.4f} ({(time.time() - t0) / len(running):.2f} s/step)")
            running, t0 = [], time.time()
        if step % checkpoint_every == 0 and step < steps:
            tmp = state_path.with_suffix(".partial")
            torch.save({"model": vae.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(), "step": step}, tmp)
            tmp.replace(state_path)
    vae.eval()
    scale = latent_scale(vae, frames)
    vae.register_to_config(scaling_factor=scale)
    metrics = reconstruction_metrics(vae, frames)
    log(f"vae: scaling_factor {scale:.4f}; reconstruction PSNR {metrics['psnr']:.2f} dB on {metrics['frames']} frames")
    vae.save_pretrained(final)
    (out / "vae-metrics.json").write_text(json.dumps({"scaling_factor": scale, **metrics}, indent=2))
    state_path.unlink(missing_ok=True)
    return vae


@torch.no_grad()
def latent_scale(vae, frames: np.ndarray, count: int = 512) -> float:
    """``1 / std`` of the posterior means of up to ``count`` evenly spaced frames."""
    idx = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    x = torch.from_numpy(frames[idx]).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    z = torch.cat([vae.encode(c).latent_dist.mean for c in x.split(64)])
    return float(1.0 / z.std())


@torch.no_grad()
def reconstruction_metrics(vae, frames: np.ndarray, count: int = 256) -> dict:
    idx = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    x = torch.from_numpy(frames[idx]).float().div(255).permute(0, 3, 1, 2)
    rec = torch.cat([vae.decode(vae.encode(c * 2 - 1).latent_dist.mean).sample for c in x.split(64)])
    mse = float(F.mse_loss((rec.clamp(-1, 1) + 1) / 2, x))
    return {"psnr": 10 * math.log10(1 / max(mse, 1e-12)), "frames": int(len(idx))}
