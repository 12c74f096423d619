"""``train --stage distill``: latent consistency distillation of a teacher into a few-step student with guidance folded in."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..configs import EMOConfig
from ..sampling.schedulers import make_scheduler
from ..sampling.settings import guidance_weights
from .train_config import EMAConfig, TrainConfig, TrainError, _message, load_train_config
from .trainer import Trainer, step_generator
from .training_net import TrainingNet

# The student learns the whole denoising path; the ReferenceNet (run once per clip, not per step) stays the teacher's.
DISTILL_TRAINABLE = ("backbone", "temporal", "audio", "speed", "face_locator")
GRIDS = ("lcm", "student")
SAMPLE_STAGE = 2  # the inputs of a distillation step are stage 2-3's: motion frames + frames, audio, speed labels


@dataclass
class DistillOptions:
    steps: int = 4  # the student's preset: denoising steps with the lcm sampler
    cfg: float | None = None  # the guidance folded into the student; None = the teacher preset's cfg / audio_cfg
    audio_cfg: float | None = None
    huber_c: float = 0.0  # 0 = plain MSE; LCM's pseudo-Huber loss with this c otherwise
    grid: str = "student"  # "student": the student's own sampling timesteps, one hop each; "lcm": LCM's skipping grid (k = 20)
    solver_steps: int = 1  # the teacher's guided DDIM sub-steps from t to s


@dataclass
class DistillConfig(TrainConfig):
    """A training config with a ``distill:`` section; ``model: null`` (the teacher's architecture) and the EMA on (the
    EMA of the student is LCM's target network) by default."""

    model: str | None = None
    stage: int = SAMPLE_STAGE
    ema: EMAConfig = field(default_factory=lambda: EMAConfig(enabled=True, decay=0.95))
    distill: DistillOptions = field(default_factory=DistillOptions)

    def validate(self) -> DistillConfig:
        self.stage = SAMPLE_STAGE
        super().validate()
        from .. import validation as v

        d = self.distill
        v.check("steps", d.steps, label="training config distill.steps", hint="the student's denoising steps; 4 is LCM's")
        for key in ("cfg", "audio_cfg"):
            if getattr(d, key) is not None:
                v.check("cfg", getattr(d, key), label=f"training config distill.{key}", hint="null = the teacher preset's")
        v.check("fraction", d.huber_c, label="training config distill.huber_c", hint="0 = MSE; LCM uses 0.001")
        if d.grid not in GRIDS:
            raise TrainError(
                f"training config distill.grid is {d.grid!r}; choose one of {', '.join(GRIDS)} "
                "(lcm: LCM's skipping grid, student: the student's own sampling timesteps)"
            )
        v.check("steps", d.solver_steps, label="training config distill.solver_steps", hint="the teacher's DDIM sub-steps per hop")
        if not self.ema.enabled:
            raise TrainError(
                "distillation's target network is the EMA of the student: set ema.enabled: true (ema.decay 0.95 is LCM's)"
            )
        return self


def student_config(teacher: EMOConfig, steps: int) -> EMOConfig:
    """The teacher's config with the student's preset: ``steps`` lcm steps, no guidance (it is folded in)."""
    preset = dataclasses.replace(teacher.preset, sampler="lcm", steps=steps, cfg=1.0, audio_cfg=1.0)
    return dataclasses.replace(teacher, preset=preset)


def boundary_scalings(lcm, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's c_skip, c_out at ``timesteps`` (c_skip(0) = 1, c_out(0) = 0: the consistency function is the identity there)."""
    c_skip, c_out = lcm.get_scalings_for_boundary_condition_discrete(timesteps.double())
    return c_skip.float(), c_out.float()


def distill_grid(lcm, grid: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The start timesteps ``t`` a training step draws from, and each one's ``s`` (where the teacher's solve ends).

    ``lcm``: LCM's skipping grid, ``k = 1000 / original_inference_steps`` (20): t = 19, 39, ..., 999 and s = max(t - k, 0).
    ``student``: the ``steps`` timesteps the student samples at (``LCMScheduler.set_timesteps``: 999, 759, 499, 259
    for 4), each one's s the next of them and 0 after the last: one hop per sampling step, so the consistency target
    reaches the boundary in ``steps`` hops instead of 50, and the guidance folds in over the student's whole step.
    """
    if grid == "lcm":
        k = lcm.config.num_train_timesteps // lcm.config.original_inference_steps
        t = torch.arange(1, lcm.config.original_inference_steps + 1) * k - 1
        return t, (t - k).clamp(min=0)
    lcm.set_timesteps(steps)
    t = lcm.timesteps.long().clone()
    return t, torch.cat([t[1:], t.new_zeros(1)])


def to_x0_eps(scheduler, pred: torch.Tensor, sample: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A prediction (epsilon or v) at timesteps ``t`` [B] -> (x0, epsilon)."""
    a = scheduler.alphas_cumprod.to(sample.device)[t].view(-1, *[1] * (sample.dim() - 1)).float()
    if scheduler.config.prediction_type == "epsilon":
        return (sample - (1 - a).sqrt() * pred) / a.sqrt().clamp(min=1e-8), pred
    return a.sqrt() * sample - (1 - a).sqrt() * pred, a.sqrt() * pred + (1 - a).sqrt() * sample  # v-prediction


def ddim_step(scheduler, x0: torch.Tensor, eps: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
    """The deterministic DDIM step to ``t_prev`` from (x0, epsilon)."""
    a = scheduler.alphas_cumprod.to(x0.device)[t_prev].view(-1, *[1] * (x0.dim() - 1)).float()
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def consistency(c_skip, c_out, sample, x0) -> torch.Tensor:
    view = (-1, *[1] * (sample.dim() - 1))
    return c_skip.view(view) * sample + c_out.view(view) * x0


class DistillTrainer(Trainer):
    """Latent consistency distillation (Luo et al. 2023, "Latent Consistency Models", arXiv 2310.04378) on :class:`Trainer`.

    Per sample: a start timestep ``t`` and its end ``s`` from :func:`distill_grid` (by default the student's own sampling
    timesteps, one hop per step; or LCM's skipping grid); the clip noised to ``t``; the teacher's **guided** DDIM solve
    ``t -> s`` in ``distill.solver_steps`` steps (the guidance
    branches of the sampler, weighted by :func:`~emo_model.sampling.settings.guidance_weights` at the teacher preset's
    cfg / audio_cfg: classifier-free guidance folded in); the target network (the trainer's EMA of the student) maps
    the result to ``f(x_s, s) = c_skip(s) x_s + c_out(s) x0(x_s, s)``; the student, initialised from the teacher and
    fed the full condition only, is trained to give the same at ``(x_t, t)``. ``c_skip`` / ``c_out`` are LCM's
    (``diffusers.LCMScheduler``, timestep_scaling 10); the student samples with that scheduler (sampler ``lcm``).

    The same data pipeline, accelerate setup, checkpoints and exact resume as the three stages: the teacher is
    ``--init`` (an EMO checkpoint or any family's weights ``load_emo_model`` reads), the student starts from it, and
    the exported checkpoints carry the student's preset (``distill.steps`` lcm steps, guidance 1).
    """

    label = "distillation (stage 2 inputs)"
    solver_steps = 1

    def __init__(self, cfg: DistillConfig, output, *, vae, init=None, resume=None, accelerator=None, log=print, **unused):
        if unused.get("sd15") or unused.get("animatediff"):
            raise TrainError("--stage distill starts from the teacher (--init); --sd15 / --animatediff are for stages 1 and 2")
        if not isinstance(cfg, DistillConfig):
            raise TrainError("--stage distill needs a distillation config (a distill: section), e.g. emo_model/train/configs/distill/tiny.yaml")
        super().__init__(cfg, output, vae=vae, init=init, resume=resume, accelerator=accelerator, log=log)

    def check_inputs(self) -> None:
        if self.init is None:
            raise TrainError(
                "--stage distill needs a teacher: give --init TEACHER (an EMO .safetensors or a family's weights); "
                "the student starts from it"
            )
        super().check_inputs()

    def setup(self) -> DistillTrainer:
        from .. import weights

        cfg = self.cfg
        if cfg.trainable is None:
            cfg.trainable = list(DISTILL_TRAINABLE)
        self.check_inputs()
        teacher = weights.load_emo_model(self.init, dtype=torch.float32)
        d = cfg.distill
        self.guidance = guidance_weights(
            teacher.config.preset.cfg if d.cfg is None else d.cfg,
            teacher.config.preset.audio_cfg if d.audio_cfg is None else d.audio_cfg,
        )
        super().setup()
        from .trainer import _architecture

        if _architecture(teacher.config) != _architecture(self.config):
            raise TrainError(f"the teacher {self.init} is a {teacher.config.name!r} model; the student is {self.config.name!r}")
        acc = self.accelerator
        self.config = student_config(self.config, d.steps)
        acc.unwrap_model(self.net).model.config = self.config
        teacher.requires_grad_(False).eval().to(acc.device)
        self.teacher = TrainingNet(teacher, SAMPLE_STAGE, teacher.config.preset.first_clip_motion)
        self.lcm = make_scheduler("lcm", self.config.preset.scheduler)
        self.grid_t, self.grid_s = distill_grid(self.lcm, d.grid, d.steps)
        self.solver_steps = d.solver_steps
        hops = ", ".join(f"{t}->{s}" for t, s in zip(self.grid_t.tolist(), self.grid_s.tolist())) if d.grid == "student" else (
            f"skipping step k = {int(self.grid_t[0]) + 1}"
        )
        self.log(
            f"distill: teacher {Path(self.init).name}, guidance branches {self.guidance} ({len(self.guidance)} rows per "
            f"teacher step, {d.solver_steps} DDIM step(s) per hop), {d.grid} grid: {hops}; "
            f"the student samples with lcm in {d.steps} steps"
        )
        return self

    # ---- the loss ---------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor], micro: int = 0) -> torch.Tensor:
        cfg, acc = self.cfg, self.accelerator
        device = acc.device
        g = step_generator(cfg.seed, self.global_step, acc.process_index, micro)
        frames = batch["frames"]
        b = frames.shape[0]
        latents = self.encode(frames.flatten(0, 1)).view(b, frames.shape[1], *self._latent_shape(frames))
        n = self.motion_frames
        inputs = dict(
            reference_latents=self.encode(batch["reference"]),
            mask=batch["mask"].to(device),
            motion_latents=latents[:, :n] if n else None,
            audio_features=batch["audio_features"].to(device) if "audio_features" in batch else None,
            speed=batch["speed"].to(device) if "speed" in batch else None,
        )
        x0 = latents[:, n:].transpose(1, 2)  # [B, C, F, h, w]
        noise = torch.randn(x0.shape, generator=g).to(device)
        index = torch.randint(0, len(self.grid_t), (b,), generator=g)
        first_clip = torch.rand(b, generator=g) < cfg.first_clip_ratio
        if n:
            inputs["first_clip"] = first_clip.to(device)
        t, s = self.grid_t[index].to(device), self.grid_s[index].to(device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        with torch.no_grad():
            target = self.target(noisy, t, s, inputs)
        pred = self._call(self.net, noisy, t, b, True, True, inputs)  # the student: the full condition only
        x0_student, _ = to_x0_eps(self.scheduler, pred, noisy, t)
        student = consistency(*boundary_scalings(self.lcm, t), noisy, x0_student)
        return self.distance(student, target)

    def target(self, noisy, t, s, inputs) -> torch.Tensor:
        """The consistency target: the teacher's guided DDIM step ``t -> s``, then the EMA student's ``f(x_s, s)``."""
        b = noisy.shape[0]
        x_s = self.teacher_step(noisy, t, s, inputs)
        net = self.accelerator.unwrap_model(self.net)
        params = [p for p in net.model.parameters() if p.requires_grad]
        self.ema.store(params)
        self.ema.copy_to(params)  # the EMA weights for this forward only (restored before the student's, with grad)
        try:
            pred = self._call(net, x_s, s, b, True, True, inputs)
        finally:
            self.ema.restore(params)
        x0, _ = to_x0_eps(self.scheduler, pred, x_s, s)
        return consistency(*boundary_scalings(self.lcm, s), x_s, x0)

    def teacher_step(self, noisy, t, s, inputs) -> torch.Tensor:
        """The teacher's guided DDIM solve from ``t`` to ``s`` in ``solver_steps`` even sub-steps; each is the weighted
        sum of its branch predictions, as the sampler combines them, turned into one DDIM step."""
        b, n = noisy.shape[0], self.solver_steps
        keeps = {"uncond": (False, False), "reference": (True, False), "full": (True, True)}
        x = noisy
        for j in range(n):
            here, there = t - (t - s) * j // n, t - (t - s) * (j + 1) // n
            pred = sum(w * self._call(self.teacher, x, here, b, *keeps[name], inputs) for name, w in self.guidance.items())
            x0, eps = to_x0_eps(self.scheduler, pred, x, here)
            x = ddim_step(self.scheduler, x0, eps, there)
        return x

    @staticmethod
    def _call(net, sample, t, b, reference: bool, audio: bool, inputs) -> torch.Tensor:
        device = sample.device
        return net(
            sample,
            t,
            reference_keep=torch.full((b,), reference, device=device),
            audio_keep=torch.full((b,), audio, device=device),
            **inputs,
        ).float()

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        c = self.cfg.distill.huber_c
        if c <= 0:
            return F.mse_loss(a, b)
        return (torch.sqrt((a - b) ** 2 + c**2) - c).mean()

    # ---- checkpoints ------------------------------------------------------------------------------
    def _native_name(self) -> str:
        return f"emo-stage-distill-step{self.global_step}.safetensors"  # the run-folder globs (emo-stage*-...) find it

    def export_native(self, path: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """The student (the EMA weights: LCM's target network) with its preset and the run's VAE, as a native file."""
        from ..weights.native import DISTILL_TEACHER_KEY
        from .checkpointing import export_native

        metadata = {
            "emo_training_stage": "distill",
            "emo_training_step": str(self.global_step),
            DISTILL_TEACHER_KEY: Path(self.init).name,
            "emo_distill_guidance": json.dumps(self.guidance),
        }
        return export_native(self, path, state, metadata)

    def _load_checkpoint(self, folder: Path) -> None:
        state = json.loads((folder / "trainer_state.json").read_text())
        if "distill" not in state.get("train_config", {}):
            raise TrainError(f"{folder} is a stage-{state.get('stage')} checkpoint, not a distillation one; give --init to distill from its weights")
        super()._load_checkpoint(folder)

    def train(self) -> dict:
        summary = super().train()
        final = self.paths.output / "emo-stage-distill-final.safetensors"
        if self.accelerator.is_main_process and Path(summary["final"]).is_file():
            os.replace(summary["final"], final)
        summary["final"] = final
        return summary


# --------------------------------------------------------------------------------------------------
# CLI (``python -m emo_model train --stage distill``; the other flags as for the stages)


def run(args: argparse.Namespace) -> int:
    from .. import validation

    if args.max_steps is not None:
        validation.check("train_steps", args.max_steps, label="--max-steps")
    if args.init is None:
        raise TrainError(
            "--stage distill needs a teacher: give --init TEACHER (an EMO .safetensors or a family's weights); the student starts from it"
        )
    validation.check_input_path(args.config, label="--config", kind="file")
    cfg = load_train_config(args.config, args.set, cls=DistillConfig)
    if args.data:
        cfg.data.dir = args.data
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    trainer = DistillTrainer(
        cfg, args.output or "runs/distill", vae=args.vae, init=args.init, resume=args.resume, sd15=args.sd15, animatediff=args.animatediff
    )
    trainer.check_inputs()
    try:
        trainer.setup()
    except KeyError as exc:
        raise TrainError(_message(exc)) from exc
    summary = trainer.train()
    if trainer.accelerator.is_main_process:
        print(f"done: {summary['steps']} steps, the student in {summary['final']}")
    return 0


__all__ = ["DistillConfig", "DistillTrainer", "boundary_scalings", "ddim_step", "distill_grid", "student_config", "to_x0_eps"]
