"""``python -m emo_model train``: EMO's three training stages on HF accelerate.

The recipe (paper §3.3 and §4.1; what the paper leaves open follows the open re-implementations' published training setups)
----------------------------------------------------------------------------------------------------
* **Stage 1, image pretraining.** The backbone gets one frame; the ReferenceNet gets another random
  frame of the same segment; temporal modules are bypassed (``Conditioning.temporal=False``) and no
  audio is fed (the backbone's ``attn2`` is skipped). Trains the ReferenceNet, the backbone's spatial
  layers and the Face Locator (less the ReferenceNet's layers after its last bank input, which never reach the loss:
  :func:`.parameter_groups.unreachable_parameters`), initialised from SD1.5 (``--sd15``). The audio layers (``attn2`` /
  ``norm2`` of the emo layout, the audio projection) get no signal here and stay frozen, bit for bit.
* **Stage 2, video.** ``n`` motion frames + ``f`` frames per sample (4 + 12 for ``emo``); the motion
  frames' latents go through the ReferenceNet (:meth:`EMOModel.encode_motion`) exactly as the sampler
  feeds the previous clip's last frames; with probability ``first_clip_ratio`` a sample is trained as a
  first clip instead (zero motion features, or the portrait's, per the preset). Temporal modules come
  from AnimateDiff v2 (``--animatediff``). Default trainable groups: ``temporal``, ``audio`` and
  ``face_locator``. The paper does not say what is frozen in stage 2; the published setups freeze everything but the
  motion and audio modules, for two reasons that hold here too: with batch 4 of 16-frame clips the
  spatial layers would drift from the stage-1 image quality and identity, and optimiser state for the
  2.2 B parameters would roughly double the memory (see docs/training.md). The Face Locator (1 M
  parameters) is kept trainable because the temporal layers now change what its features are added
  to. ``trainable: [...]`` in the config overrides the list.
* **Stage 3, speed.** Only ``temporal`` and ``speed`` (the speed encoder MLP and the ``speed_attn`` /
  ``speed_norm`` inside the motion modules) train; the audio layers stay frozen, as the paper insists
  (training both "undermines the driven ability of the audio").

Shared by all stages: lr 1e-5 (AdamW, or 8-bit AdamW with bitsandbytes), gradient clipping 1.0,
condition dropout for classifier-free guidance per sample (the unconditional branch of
:mod:`emo_model.sampling.pipeline`: reference dropped = ``reference_enabled`` False + zero Face Locator features;
audio dropped = zero audio tokens; both; 5 % each by default, as the published setups), optional noise offset and
min-SNR-gamma loss weighting, epsilon or v-prediction from the config's :class:`SchedulerConfig`
(a diffusers ``DDPMScheduler`` with the same betas and zero-SNR rescale the sampler uses), mixed
precision and multi-GPU from accelerate, gradient checkpointing, optional EMA.

Parameter groups: :mod:`.parameter_groups`. Configuration: :mod:`.train_config`. The module accelerate
wraps: :mod:`.training_net`.

Checkpoints and exact resume
----------------------------
Every ``checkpoint_every`` steps ``OUTPUT/checkpoints/step-NNNNNNN/`` (written atomically, :mod:`.checkpointing`) receives accelerate's state
(model, optimiser, LR schedule, EMA, RNG states, via ``save_state``), ``trainer_state.json`` (step,
epoch and the number of batches this epoch already used) and the weights in our native format
(``emo-stageS-stepN.safetensors``, :func:`emo_model.weights.checkpoints.save_native`, the EMA weights when EMA is
on), which the LoadEMOModel node opens directly. The final weights also go to
``OUTPUT/emo-stageS-final.safetensors``. ``--resume latest`` (or a checkpoint folder) restores all
of it; the per-step randomness (timesteps, noise, dropout) is drawn from generators seeded by
``(seed, step, rank)`` and the data order from ``(seed, epoch)``, so N steps straight and N/2 + resume
+ N/2 give the same weights.

Samples: every ``sample_every`` steps, on the main process, a held-out segment (the dataset's
``holdout_segments``) is generated: stage 1 writes a PNG (reference | samples | ground truth), stages
2-3 an mp4 through :class:`EMOPipeline` with the segment's audio (generated | ground truth), in
``OUTPUT/samples``. Logs (loss: the mean over the processes, lr, grad norm, seconds per step) go to TensorBoard in
``OUTPUT/logs``; the console gets them with the ETA, and one line at the start names the processes and devices
(:mod:`.progress`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..configs import EMOConfig
from ..network.model import EMOModel
from . import progress
from .checkpointing import PARTIAL, export_native, latest_checkpoint, load_checkpoint, publish_final, save_checkpoint
from .parameter_groups import (  # noqa: F401 (also the public names of this module)
    GROUPS,
    STAGE_TRAINABLE,
    check_trainable,
    parameter_group,
    set_trainable,
    stage_groups,
    unreachable_parameters,
)
from .samples import sample_images, sample_video
from .train_config import (  # noqa: F401
    TrainConfig,
    TrainError,
    _message,
    load_train_config,
    resolve_model_config,
)
from .training_net import TrainingNet

# --------------------------------------------------------------------------------------------------
# Trainer


@dataclass
class Paths:
    output: Path

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.output / "samples"

    @property
    def logs(self) -> Path:
        return self.output / "logs"


def step_generator(seed: int, step: int, rank: int, micro: int = 0) -> torch.Generator:
    """The generator for one micro-batch: a function of (seed, step, rank, micro) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + rank * 104_729 + micro * 31) % (2**63 - 1))


class Trainer:
    label = ""  # how the logs name the run (set in __init__: "stage N" unless a subclass names it)

    def __init__(
        self,
        cfg: TrainConfig,
        output: str | Path,
        *,
        vae: str | Path,
        init: str | Path | None = None,
        sd15: str | Path | None = None,
        animatediff: str | Path | None = None,
        resume: str | None = None,
        accelerator=None,
        log=print,
    ):
        self.cfg = cfg.validate()
        self.label = self.label or f"stage {cfg.stage}"
        self.paths = Paths(Path(output))
        self.log_fn = log
        self._accelerator = accelerator
        self.vae_path, self.init, self.sd15, self.animatediff, self.resume = vae, init, sd15, animatediff, resume
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.history: list[float] = []  # this rank's loss of every step
        self.logged: list[dict] = []  # what went to the log (the loss: mean over the processes)

    # ---- setup ------------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        if self.accelerator.is_main_process:
            self.log_fn(text)

    def check_inputs(self) -> None:
        """The run folder, the dataset and every given weights path, before any model work (one line each)."""
        from .. import validation as v

        v.check_output_folder(self.paths.output, label="--output")
        if not self.cfg.data.dir:
            raise TrainError("no dataset: give --data DATASET_DIR (made by `python -m emo_model preprocess`) or data.dir")
        data = v.check_input_path(self.cfg.data.dir, label="the dataset (--data or data.dir)", kind="folder")
        if not (data / "index.jsonl").is_file():
            raise TrainError(f"the dataset {str(data)!r} has no index.jsonl; make it with `python -m emo_model preprocess` (or resume that run)")
        if self.vae_path is None:
            raise TrainError("--vae is required (a diffusers AutoencoderKL folder or an SD VAE file, e.g. sd-vae-ft-mse)")
        for label, path in (("--vae", self.vae_path), ("--init", self.init), ("--sd15", self.sd15), ("--animatediff", self.animatediff)):
            v.check_input_path(path, label=label)
        if self.resume and self.resume != "latest":
            folder = v.check_input_path(self.resume, label="--resume", kind="folder")
            if folder.name.endswith(PARTIAL):
                raise TrainError(f"--resume {str(folder)!r} is a checkpoint whose write failed (incomplete); give latest or a step-N folder")
            if not (folder / "trainer_state.json").is_file():
                raise TrainError(f"--resume {str(folder)!r} is not a training checkpoint folder (no trainer_state.json); give latest or OUTPUT/checkpoints/step-N")
        config = resolve_model_config(self.cfg.model) if self.cfg.trainable else None
        if config is not None:  # the groups a stage cannot train, before any weights load
            check_trainable(config, self.cfg.stage, self.cfg.trainable, self.cfg.data.frames, self.cfg.data.motion_frames)

    def setup(self) -> Trainer:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        self.check_inputs()
        cfg = self.cfg
        if self._accelerator is None:
            log_with = cfg.log_with if cfg.log_with not in (None, "none") else None
            if log_with == "tensorboard":
                try:
                    import tensorboard  # noqa: F401
                except ImportError:
                    print("tensorboard is not installed: logging to the console only (pip install tensorboard)", file=sys.stderr)
                    log_with = None
            # Several processes and no CUDA (torchrun on CPU, as the tests do): accelerate only sets up
            # gloo when told the run is on the CPU.
            cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
            self._accelerator = Accelerator(
                cpu=cpu,
                mixed_precision=cfg.mixed_precision,
                gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
                log_with=log_with,
                project_config=ProjectConfiguration(project_dir=str(self.paths.output), logging_dir=str(self.paths.logs)),
                kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)],
            )
        acc = self.accelerator
        self.log(f"{self.label} on {progress.start_line(acc)}")
        warning = progress.launch_warning(os.environ, acc.num_processes)
        if warning:
            self.log(warning)
        if cfg.ema.enabled and acc.distributed_type.name == "FSDP":
            raise TrainError("EMA needs replicated parameters: use DDP or DeepSpeed ZeRO-2, or set ema.enabled: false under FSDP")
        torch.manual_seed(cfg.seed)
        resume_dir = self._resume_dir()
        self.model = self._build_model(resume_dir)
        self.config = self.model.config
        preset = self.config.preset
        self.frames = 1 if cfg.stage == 1 else (cfg.data.frames or preset.frames_per_clip)
        self.motion_frames = (
            0 if cfg.stage == 1 else (cfg.data.motion_frames if cfg.data.motion_frames is not None else preset.motion_frames)
        )
        if cfg.stage > 1 and self.frames + self.motion_frames > self.config.backbone.temporal.max_len:
            raise TrainError(
                f"frames + motion frames = {self.frames + self.motion_frames} exceeds the "
                f"{self.config.backbone.temporal.max_len} frames the temporal modules handle"
            )
        if cfg.stage == 3 and self.model.speed_encoder is None:
            raise TrainError(f"stage 3 trains the speed layers, and the {self.config.name!r} config has none")
        self.scheduler = self._noise_scheduler()
        self._setup_vae()
        self._setup_data()
        self._set_trainable()
        if cfg.gradient_checkpointing:
            self.model.set_gradient_checkpointing(True)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._optimizer(self._param_groups())
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(
            cfg.optim.lr_scheduler, self.optimizer, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=cfg.max_steps
        )
        self.ema = None
        if cfg.ema.enabled:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(params, decay=cfg.ema.decay, update_after_step=cfg.ema.update_after_step)
        self.net = TrainingNet(self.model, cfg.stage, preset.first_clip_motion)
        self._fix_deepspeed_batch()
        self.net, self.optimizer = acc.prepare(self.net, self.optimizer)
        if self.ema is not None:
            self.ema.to(acc.device)
        if resume_dir is not None:
            self._load_checkpoint(resume_dir)
        if acc.is_main_process and acc.log_with:
            acc.init_trackers(f"emo-stage{cfg.stage}", config=_flat_hparams(cfg.to_dict()))
        return self

    @property
    def accelerator(self):
        return self._accelerator

    def _set_trainable(self) -> None:
        """The stage's groups, less the parameters that cannot reach its loss (:func:`unreachable_parameters`)."""
        cfg = self.cfg
        audio = self.dataset[(0, 0)].get("audio_features") if cfg.stage > 1 else None
        try:
            unreachable = unreachable_parameters(
                self.config, cfg.stage, self.frames, self.motion_frames, None if audio is None else tuple(audio.shape[1:])
            )
        except (RuntimeError, NotImplementedError, TypeError, KeyError, ValueError) as exc:  # a layout the dry run cannot trace
            unreachable = frozenset()
            self.log(f"note: could not trace which parameters reach the loss ({type(exc).__name__}: {exc}); all of the groups train")
        groups = tuple(cfg.trainable) if cfg.trainable else STAGE_TRAINABLE[cfg.stage]
        self.groups = stage_groups(self.model, cfg.stage, groups, unreachable, chosen=bool(cfg.trainable))
        counts = set_trainable(self.model, self.groups, exclude=unreachable)
        self.log(
            f"{self.label}: training {', '.join(f'{g} ({n / 1e6:.2f} M)' for g, n in counts.items())}; "
            f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.1f} M parameters in total"
        )
        left = [
            (n, p.numel()) for n, p in self.model.named_parameters() if n in unreachable and parameter_group(n, self.config) in self.groups
        ]
        if left:
            self.log(
                f"  kept frozen: {len(left)} tensors ({sum(k for _, k in left) / 1e6:.2f} M) of those groups that never reach "
                f"the loss in stage {cfg.stage}, e.g. {left[0][0]}"
            )

    def _resume_dir(self) -> Path | None:
        if not self.resume:
            return None
        if self.resume == "latest":
            found = latest_checkpoint(self.paths.checkpoints)
            if found is None:
                self.log_fn(f"--resume latest: no checkpoint in {self.paths.checkpoints} yet, starting fresh")
            return found
        path = Path(self.resume)
        if not (path / "trainer_state.json").is_file():
            raise TrainError(f"{path} is not a training checkpoint folder (no trainer_state.json)")
        return path

    def _build_model(self, resume_dir: Path | None) -> EMOModel:
        from .. import weights

        wanted = resolve_model_config(self.cfg.model)
        if resume_dir is not None:
            saved = EMOConfig.from_json((resume_dir / "emo_config.json").read_text())
            if wanted is not None and _architecture(wanted) != _architecture(saved):
                raise TrainError(
                    f"{resume_dir} was trained with config {saved.name!r}, the training config asks for {wanted.name!r}"
                )
            return EMOModel(saved)  # weights come from the checkpoint's state
        if self.init:
            model = weights.load_emo_model(self.init, dtype=torch.float32)
            if wanted is not None and _architecture(wanted) != _architecture(model.config):
                raise TrainError(
                    f"--init {self.init} holds a {model.config.name!r} model; the training config asks for {wanted.name!r} "
                    "(set model: null to take the checkpoint's)"
                )
            if wanted is not None:  # keep the config's preset (frames per clip, scheduler) for this run
                fresh = EMOModel(wanted)
                fresh.load_state_dict(model.state_dict())
                model = fresh
            self.log(f"initialised from {self.init}")
        else:
            if wanted is None:
                raise TrainError("the training config has model: null; give --init with a checkpoint to take the config from")
            model = EMOModel(wanted)
        if self.sd15:
            for line in weights.load_sd15_unet_weights(model, self.sd15).lines():
                self.log(f"  sd15: {line}")
        if self.animatediff:
            for line in weights.load_animatediff_motion_module(model, self.animatediff).lines():
                self.log(f"  animatediff: {line}")
        return model

    def _noise_scheduler(self):
        from diffusers import DDPMScheduler

        sch = self.config.preset.scheduler
        if sch.rescale_betas_zero_snr and sch.prediction_type == "epsilon":
            raise TrainError("zero-terminal-SNR needs v_prediction (see EMOConfig.validate)")
        return DDPMScheduler(
            num_train_timesteps=sch.num_train_timesteps,
            beta_start=sch.beta_start,
            beta_end=sch.beta_end,
            beta_schedule=sch.beta_schedule,
            prediction_type=sch.prediction_type,
            rescale_betas_zero_snr=sch.rescale_betas_zero_snr,
            clip_sample=False,
        )

    def _setup_vae(self) -> None:
        from .. import weights
        from ..network.vae import DiffusersVAE

        if self.vae_path is None:
            raise TrainError("--vae is required (a diffusers AutoencoderKL folder or an SD VAE file, e.g. sd-vae-ft-mse)")
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.cfg.mixed_precision, torch.float32)
        vae = weights.load_vae(self.vae_path, device=self.accelerator.device, dtype=dtype)
        vae.requires_grad_(False)
        self.codec = DiffusersVAE(vae)
        if self.codec.scale_factor != self.config.vae_scale_factor:
            raise TrainError(
                f"the VAE downsamples by {self.codec.scale_factor}, the model expects {self.config.vae_scale_factor}"
            )

    def _setup_data(self) -> None:
        from torch.utils.data import DataLoader

        from .dataset import EMODataset, ResumableSampler, SegmentStore, split_holdout

        cfg, acc = self.cfg, self.accelerator
        if not cfg.data.dir:
            raise TrainError("no dataset: give --data DATASET_DIR (made by `python -m emo_model preprocess`) or data.dir")
        store = SegmentStore(cfg.data.dir)
        train, held = split_holdout(store.entries, cfg.data.holdout_segments)
        if not train:
            raise TrainError(f"{cfg.data.dir}: all {len(store)} segments are held out; lower data.holdout_segments")
        self.store, self.holdout = store, (held or train[:1])
        fps = {e["fps"] for e in store.entries}
        if fps != {self.config.preset.fps}:
            self.log(f"note: the dataset is at {sorted(fps)} fps, the model preset samples at {self.config.preset.fps} fps")
        self.dataset = EMODataset(
            store,
            train,
            stage=cfg.stage,
            frames=self.frames,
            motion_frames=self.motion_frames,
            audio=self.config.audio,
            seed=cfg.seed,
        )
        self.sampler = ResumableSampler(
            len(self.dataset), seed=cfg.seed, batch_size=cfg.data.batch_size, rank=acc.process_index, world_size=acc.num_processes
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=cfg.data.batch_size,
            sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            drop_last=True,
            worker_init_fn=_worker_init,
            persistent_workers=False,
        )

    def _param_groups(self) -> list[dict]:
        """Trainable parameters as optimizer groups: one per ``optim.group_lr`` entry, the rest at ``optim.lr``."""
        o = self.cfg.optim
        buckets: dict[float, list] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                lr = o.group_lr.get(parameter_group(name, self.config), o.lr)
                buckets.setdefault(float(lr), []).append(p)
        return [{"params": ps, "lr": lr} for lr, ps in buckets.items()]

    def _optimizer(self, params):
        o = self.cfg.optim
        if o.use_8bit_adam:
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise TrainError(
                    "optim.use_8bit_adam needs bitsandbytes (pip install bitsandbytes, CUDA only); or set it to false"
                ) from None
            return bnb.optim.AdamW8bit(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)

    def _fix_deepspeed_batch(self) -> None:
        """DeepSpeed wants the micro-batch size, which it normally reads from a prepared DataLoader."""
        state = getattr(self.accelerator, "state", None)
        plugin = getattr(state, "deepspeed_plugin", None)
        if plugin is not None:
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = self.cfg.data.batch_size

    # ---- one step ---------------------------------------------------------------------------------
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> latents [N, C, h, w] (frozen VAE, posterior mean)."""
        out = []
        for chunk in frames.split(8):  # bounds the VAE's activations (about 0.5 GB per 512^2 frame in fp32)
            images = chunk.to(self.accelerator.device).float() / 255.0
            out.append(self.codec.encode(images).float())
        return torch.cat(out)

    def loss(self, batch: dict[str, torch.Tensor], micro: int = 0) -> torch.Tensor:
        cfg, acc = self.cfg, self.accelerator
        device = acc.device
        g = step_generator(cfg.seed, self.global_step, acc.process_index, micro)
        frames = batch["frames"]  # [B, N, H, W, 3] uint8
        b, total = frames.shape[:2]
        latents = self.encode(frames.flatten(0, 1)).view(b, total, *self._latent_shape(frames))
        reference = self.encode(batch["reference"])
        n = self.motion_frames
        motion, target_latents = latents[:, :n], latents[:, n:]
        x0 = target_latents.transpose(1, 2)  # [B, C, F, h, w]
        noise = torch.randn(x0.shape, generator=g)
        if cfg.noise_offset > 0:
            noise = noise + cfg.noise_offset * torch.randn((b, x0.shape[1], 1, 1, 1), generator=g)
        noise = noise.to(device)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=g).to(device)
        u = torch.rand(b, generator=g)
        both = u < cfg.uncond_both
        ref_only = (u >= cfg.uncond_both) & (u < cfg.uncond_both + cfg.uncond_reference)
        audio_only = (u >= cfg.uncond_both + cfg.uncond_reference) & (
            u < cfg.uncond_both + cfg.uncond_reference + cfg.uncond_audio
        )
        reference_keep = ~(both | ref_only)
        audio_keep = ~(both | audio_only)
        first_clip = torch.rand(b, generator=g) < cfg.first_clip_ratio
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        if self.scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(x0, noise, timesteps)
        pred = self.net(
            noisy,
            timesteps,
            reference,
            batch["mask"].to(device),
            reference_keep.to(device),
            audio_keep.to(device),
            motion_latents=motion if n else None,
            first_clip=first_clip.to(device) if n else None,
            audio_features=batch["audio_features"].to(device) if "audio_features" in batch else None,
            speed=batch["speed"].to(device) if "speed" in batch else None,
        ).float()
        if cfg.snr_gamma > 0:
            return self._snr_weighted(pred, target, timesteps)
        return F.mse_loss(pred, target.float())

    def _latent_shape(self, frames: torch.Tensor) -> tuple[int, int, int]:
        h, w = frames.shape[-3:-1]
        s = self.codec.scale_factor
        return (self.config.latent_channels, h // s, w // s)

    def _snr_weighted(self, pred, target, timesteps) -> torch.Tensor:
        """Min-SNR-gamma weighting (Hang et al. 2023), as in diffusers' trainers and the published setups."""
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.scheduler, timesteps)
        if self.scheduler.config.prediction_type == "v_prediction":
            snr = snr + 1
        weights = torch.minimum(snr, torch.full_like(snr, self.cfg.snr_gamma)) / snr.clamp(min=1e-8)
        per_sample = F.mse_loss(pred, target.float(), reduction="none").mean(dim=list(range(1, pred.dim())))
        return (per_sample * weights).mean()

    # ---- loop -------------------------------------------------------------------------------------
    def train(self) -> dict:
        """Train until ``max_steps``; returns a summary (losses of every step on this rank)."""
        cfg, acc = self.cfg, self.accelerator
        accum = cfg.optim.gradient_accumulation_steps
        batches = self.sampler.batches_per_epoch()
        if batches == 0:
            raise TrainError("the dataset has fewer segments than one batch; lower data.batch_size")
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.log(f"training from step {self.global_step} to {cfg.max_steps} ({batches} batches per epoch per process)")
        clock = progress.StepClock(self.global_step, cfg.max_steps)
        micro, step_loss, grad_norm = 0, 0.0, None
        while self.global_step < cfg.max_steps:
            self.sampler.set_epoch(self.epoch, self.batches_in_epoch * cfg.data.batch_size)
            for batch in self.loader:
                with acc.accumulate(self.net):
                    loss = self.loss(batch, micro)
                    acc.backward(loss)
                    step_loss += loss.detach().float().item() / accum
                    if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                        grad_norm = acc.clip_grad_norm_(params, cfg.optim.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.batches_in_epoch += 1
                micro += 1
                if not acc.sync_gradients:
                    continue
                self.lr_scheduler.step()
                if self.ema is not None:
                    self.ema.step([p for p in acc.unwrap_model(self.net).model.parameters() if p.requires_grad])
                self.global_step += 1
                self.history.append(step_loss)
                if self.global_step % cfg.log_every == 0 or self.global_step == cfg.max_steps:
                    loss = progress.mean_over_processes(acc, step_loss)  # every rank takes part
                    line, per_step = clock.line(self.global_step, loss)
                    logs = {"loss": loss, "lr": self.lr_scheduler.get_last_lr()[0], "seconds_per_step": per_step}
                    if grad_norm is not None:
                        logs["grad_norm"] = float(grad_norm)
                    acc.log(logs, step=self.global_step)
                    self.logged.append({"step": self.global_step, **logs})
                    self.log(line)
                micro, step_loss, grad_norm = 0, 0.0, None
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0 and self.global_step < cfg.max_steps:
                    self.save_checkpoint()
                if cfg.sample_every and self.global_step % cfg.sample_every == 0:
                    self.sample()
                if self.global_step >= cfg.max_steps:
                    break
            else:
                self.epoch += 1
                self.batches_in_epoch = 0
        final = self.save_checkpoint()
        acc.wait_for_everyone()
        if acc.is_main_process:
            publish_final(self, final)
        acc.end_training()
        return {
            "steps": self.global_step,
            "losses": list(self.history),
            "final": self.paths.output / f"emo-stage{cfg.stage}-final.safetensors",
        }

    # ---- checkpoints ------------------------------------------------------------------------------
    def _native_name(self) -> str:
        return f"emo-stage{self.cfg.stage}-step{self.global_step}.safetensors"

    def save_checkpoint(self) -> Path:
        """``OUTPUT/checkpoints/step-N``, written atomically (:func:`.checkpointing.save_checkpoint`)."""
        return save_checkpoint(self)

    def export_native(self, path: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """The model (EMA weights where EMA is on) as a native safetensors file."""
        return export_native(self, path, state)

    def _load_checkpoint(self, folder: Path) -> None:
        load_checkpoint(self, folder)

    # ---- samples ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self) -> Path | None:
        acc = self.accelerator
        path = None
        if acc.distributed_type.name == "FSDP":
            self.log("samples are skipped under FSDP (the weights are sharded); sample from the exported checkpoints instead")
            return None
        if acc.is_main_process:
            model = acc.unwrap_model(self.net).model
            params = [p for p in model.parameters() if p.requires_grad]
            if self.ema is not None:
                self.ema.store(params)
                self.ema.copy_to(params)
            model.eval()
            try:
                with acc.autocast():
                    path = sample_images(self, model) if self.cfg.stage == 1 else sample_video(self, model)
                self.log(f"sample: {path}")
            finally:
                model.train()
                if self.ema is not None:
                    self.ema.restore(params)
        acc.wait_for_everyone()
        return path


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def _architecture(config: EMOConfig) -> dict:
    d = config.to_dict()
    return {k: v for k, v in d.items() if k not in ("name", "preset")}


def _flat_hparams(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, f"{key}."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


# --------------------------------------------------------------------------------------------------
# CLI


