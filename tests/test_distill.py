"""Distillation (``train --stage distill``): LCM's target on stand-in networks, a few steps with exact resume, the
student's preset in its checkpoint, and one line without a teacher. Tiny config, random weights, the CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import ROOT, tiny_vae
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file
from test_train import dataset, init_checkpoint, vae_dir, videos  # noqa: F401 (module fixtures: a tiny dataset, VAE, teacher)
from torch import nn

from emo_model.sampling.schedulers import make_scheduler
from emo_model.train.distill import DistillConfig, DistillTrainer, boundary_scalings, distill_grid, student_config
from emo_model.train.train_config import load_train_config

CONFIG = ROOT / "emo_model" / "train" / "configs" / "distill" / "tiny.yaml"


def _schedulers():
    from emo_model.families import get_config

    sch = get_config("tiny").preset.scheduler
    ddpm = DDPMScheduler(
        num_train_timesteps=sch.num_train_timesteps, beta_start=sch.beta_start, beta_end=sch.beta_end,
        beta_schedule=sch.beta_schedule, prediction_type=sch.prediction_type, rescale_betas_zero_snr=sch.rescale_betas_zero_snr,
    )
    return ddpm, make_scheduler("lcm", sch)


class StandIn(nn.Module):
    """A 'denoiser' whose v-prediction is ``w * sample + bias[branch]`` (branch from the keep flags)."""

    def __init__(self, w: float, biases: dict):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.biases = biases

    @property
    def model(self):  # the trainer's TrainingNet exposes its EMOModel as .model
        return self

    def forward(self, sample, t, reference_keep, audio_keep, **_):
        key = (bool(reference_keep[0]), bool(audio_keep[0]))
        return self.w * sample + self.biases[key]


class Bare(DistillTrainer):
    """The loss pieces of DistillTrainer on stand-ins (no accelerate, no data)."""

    def __init__(self, teacher, student, guidance):
        self.scheduler, self.lcm = _schedulers()
        self.teacher, self.net, self.guidance = teacher, student, guidance
        self.ema = EMAModel(list(student.parameters()), decay=0.5)
        self._accelerator = type("A", (), {"unwrap_model": staticmethod(lambda m: m)})()


def test_boundary_conditions_and_the_skipping_grid():
    _, lcm = _schedulers()
    c_skip, c_out = boundary_scalings(lcm, torch.tensor([0, 19, 999]))
    assert (c_skip[0].item(), c_out[0].item()) == (1.0, 0.0)  # f(x, 0) = x: the consistency function's boundary
    # LCM's: sigma_data 0.5, timestep_scaling 10 -> c_skip = 0.25 / ((10 t)^2 + 0.25), c_out = 10 t / sqrt((10 t)^2 + 0.25)
    assert c_skip[1].item() == pytest.approx(0.25 / (190**2 + 0.25)) and c_out[1].item() == pytest.approx(190 / (190**2 + 0.25) ** 0.5)
    assert c_out[2].item() == pytest.approx(1.0, abs=1e-6)
    # the student's 4 lcm steps are all on the grid it was distilled on (k = 20: t = 19, 39, ..., 999)
    lcm.set_timesteps(4)
    assert all((int(t) + 1) % 20 == 0 for t in lcm.timesteps) and int(lcm.timesteps[0]) == 999


def test_target_is_the_guided_ddim_step_then_the_ema_consistency_function():
    unc, full = torch.full((1, 1, 1, 1, 1), 0.3), torch.full((1, 1, 1, 1, 1), -0.2)
    teacher = StandIn(0.5, {(False, False): unc, (True, True): full})
    student = StandIn(0.1, {(True, True): torch.tensor(0.05)})
    bare = Bare(teacher, student, {"uncond": -1.0, "full": 2.0})  # cfg 2: 2 full - 1 uncond
    x = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    a = bare.scheduler.alphas_cumprod
    for t, s in ((399, 379), (19, 0)):
        tt, ss = torch.tensor([t]), torch.tensor([s])
        v = 2 * (0.5 * x + full) - (0.5 * x + unc)  # the guided v-prediction, by hand
        x0 = a[t].sqrt() * x - (1 - a[t]).sqrt() * v
        eps = a[t].sqrt() * v + (1 - a[t]).sqrt() * x
        x_s = a[s].sqrt() * x0 + (1 - a[s]).sqrt() * eps  # DDIM t -> s
        torch.testing.assert_close(bare.teacher_step(x, tt, ss, {}), x_s, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            student.w.fill_(0.9)  # the online weights move; the target uses the EMA's (w = 0.1 still)
        v_s = 0.1 * x_s + 0.05
        x0_s = a[s].sqrt() * x_s - (1 - a[s]).sqrt() * v_s
        c_skip, c_out = boundary_scalings(bare.lcm, ss)
        want = c_skip * x_s + c_out * x0_s
        got = bare.target(x, tt, ss, {})
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert student.w.item() == pytest.approx(0.9)  # restored after the target's forward
        if s == 0:
            torch.testing.assert_close(got, x_s, rtol=1e-5, atol=1e-6)  # at the boundary the target is the teacher's step


def test_the_grids_a_training_step_draws_from():
    _, lcm = _schedulers()
    t, s = distill_grid(lcm, "lcm", 4)  # LCM's: k = 1000 / 50, s = max(t - k, 0)
    assert t.tolist() == list(range(19, 1000, 20)) and s.tolist() == [0] + list(range(19, 980, 20))
    t, s = distill_grid(lcm, "student", 4)  # the student's own 4 sampling timesteps, one hop each, the last to 0
    lcm.set_timesteps(4)
    assert t.tolist() == lcm.timesteps.tolist() == [999, 759, 499, 259] and s.tolist() == [759, 499, 259, 0]
    t, s = distill_grid(lcm, "student", 2)
    assert t.tolist() == [999, 499] and s.tolist() == [499, 0]


def test_the_teachers_solve_takes_even_ddim_sub_steps():
    unc, full = torch.full((1, 1, 1, 1, 1), 0.3), torch.full((1, 1, 1, 1, 1), -0.2)
    teacher = StandIn(0.5, {(False, False): unc, (True, True): full})
    bare = Bare(teacher, StandIn(0.1, {(True, True): torch.tensor(0.05)}), {"uncond": -1.0, "full": 2.0})
    a = bare.scheduler.alphas_cumprod
    x = torch.randn(2, 4, 2, 3, 3, generator=torch.Generator().manual_seed(1))

    def ddim(x, t, s):  # one guided DDIM step, by hand
        v = 2 * (0.5 * x + full) - (0.5 * x + unc)
        x0, eps = a[t].sqrt() * x - (1 - a[t]).sqrt() * v, a[t].sqrt() * v + (1 - a[t]).sqrt() * x
        return a[s].sqrt() * x0 + (1 - a[s]).sqrt() * eps

    bare.solver_steps = 3
    got = bare.teacher_step(x, torch.tensor([999, 259]), torch.tensor([759, 0]), {})
    want = [ddim(ddim(ddim(x[:1], 999, 919), 919, 839), 839, 759), ddim(ddim(ddim(x[1:], 259, 173), 173, 87), 87, 0)]
    torch.testing.assert_close(got, torch.cat(want), rtol=1e-5, atol=1e-6)
    bare.solver_steps = 1  # one step: the plain guided DDIM step
    torch.testing.assert_close(bare.teacher_step(x[:1], torch.tensor([999]), torch.tensor([759]), {}), ddim(x[:1], 999, 759))


@pytest.mark.parametrize(("key", "value", "says"), [
    ("distill.grid", "coarse", "training config distill.grid is 'coarse'; choose one of lcm, student"),
    ("distill.solver_steps", "0", "distill.solver_steps"),
])
def test_a_wrong_grid_or_solver_is_one_line(key, value, says):
    from emo_model.train.trainer import TrainError

    with pytest.raises((TrainError, ValueError), match=says) as info:
        load_train_config(CONFIG, [f"{key}={value}"], cls=DistillConfig).validate()  # as the trainer does first
    assert "\n" not in str(info.value)


def _config(steps: int) -> DistillConfig:
    cfg = load_train_config(CONFIG, [f"max_steps={steps}", "data.frames=4", "data.motion_frames=2", "data.batch_size=2",
                                     "data.num_workers=0", "data.holdout_segments=0", "optim.lr=1e-3", "optim.warmup_steps=0",
                                     "optim.lr_scheduler=constant",  # a cosine's lr depends on max_steps, which the resume test changes
                                     "checkpoint_every=0", "log_with=none"], cls=DistillConfig)
    return cfg


def _trainer(cfg, output, dataset, vae_dir, log=None, **kw):  # noqa: F811
    cfg.data.dir = str(dataset)
    return DistillTrainer(cfg, output, vae=vae_dir, log=log or (lambda *_: None), **kw).setup()


def test_distill_runs_resumes_exactly_and_the_student_carries_its_preset(dataset, vae_dir, init_checkpoint, tmp_path):  # noqa: F811
    from emo_model.weights.checkpoints import load_emo_model

    lines: list[str] = []
    straight = _trainer(_config(2), tmp_path / "a", dataset, vae_dir, log=lines.append, init=init_checkpoint)
    straight.train()
    assert lines[0].startswith("distillation (stage 2 inputs) on 1 process")  # not "stage 2": the log names the run
    assert any(line.startswith("distillation (stage 2 inputs): training backbone") for line in lines)
    first = _trainer(_config(1), tmp_path / "b", dataset, vae_dir, init=init_checkpoint)
    first.train()
    resumed = _trainer(_config(2), tmp_path / "b", dataset, vae_dir, init=init_checkpoint, resume="latest")
    assert resumed.global_step == 1
    resumed.train()
    assert straight.history[1:] == resumed.history and all(torch.isfinite(torch.tensor(straight.history)))
    a = load_file(str(tmp_path / "a" / "emo-stage-distill-final.safetensors"))
    b = load_file(str(tmp_path / "b" / "emo-stage-distill-final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    teacher = load_file(str(init_checkpoint))
    assert any(k.startswith("vae.") for k in a)  # the run's VAE rides along, as in the stages' exports
    moved = [k for k in a if not k.startswith("vae.") and not torch.equal(a[k], teacher[k])]
    assert moved and not any(k.startswith("reference_unet.") for k in moved)  # the student trained; the ReferenceNet is the teacher's

    student = load_emo_model(tmp_path / "a" / "emo-stage-distill-final.safetensors", dtype=torch.float32)
    p = student.config.preset
    assert (p.steps, p.sampler, p.cfg, p.audio_cfg) == (4, "lcm", 1.0, 1.0)
    teacher_preset = load_emo_model(init_checkpoint).config.preset
    assert dataclasses.replace(p, steps=teacher_preset.steps, sampler=teacher_preset.sampler, cfg=teacher_preset.cfg,
                               audio_cfg=teacher_preset.audio_cfg) == teacher_preset  # everything else is the teacher's
    assert student_config(student.config, 4) == student.config
    from emo_model.app.session import Session

    loaded = Session.load(tmp_path / "a" / "emo-stage-distill-final.safetensors")
    assert loaded.info["distilled_from"] == init_checkpoint.name  # Load EMO Model's summary names the teacher
    assert "distilled_from" not in Session.load(init_checkpoint, vae=vae_dir).info

    # a stage-2 run refuses a distillation checkpoint (both record stage 2), and the other way round, in one line
    from types import SimpleNamespace

    from emo_model.train.checkpointing import load_checkpoint
    from emo_model.train.trainer import TrainError

    ckpt = next((tmp_path / "a" / "checkpoints").glob("step-*"))
    with pytest.raises(TrainError, match="is a distillation checkpoint .*; resume it with --stage distill"):
        load_checkpoint(SimpleNamespace(cfg=SimpleNamespace(stage=2)), ckpt)  # a stage-2 run's config has no distill section

    with pytest.raises(TrainError, match="not a distillation one"):
        ckpt = next((tmp_path / "a" / "checkpoints").glob("step-*"))
        state = ckpt / "trainer_state.json"
        import json

        data = json.loads(state.read_text())
        data["train_config"].pop("distill")
        state.write_text(json.dumps(data))
        _trainer(_config(4), tmp_path / "a", dataset, vae_dir, init=init_checkpoint, resume=str(ckpt))


def test_the_student_samples_one_row_per_step(tmp_path, dataset, init_checkpoint):  # noqa: F811
    """4 lcm steps x 1 denoiser row (guidance folded in), through the real sampler."""
    from emo_model.network.vae import DiffusersVAE
    from emo_model.sampling.pipeline import EMOPipeline
    from emo_model.sampling.settings import SamplingSettings
    from emo_model.train.dataset import SegmentStore, segment_audio_features
    from emo_model.weights.checkpoints import load_emo_model
    from emo_model.weights.native import save_native

    teacher = load_emo_model(init_checkpoint, dtype=torch.float32)
    teacher.config = student_config(teacher.config, 4)
    path = save_native(teacher, tmp_path / "student.safetensors")
    model = load_emo_model(path, dtype=torch.float32)
    rows = []
    forward = model.forward
    model.forward = lambda sample, t, cond: rows.append(sample.shape[0]) or forward(sample, t, cond)
    pipe = EMOPipeline(model, DiffusersVAE(tiny_vae()))
    store = SegmentStore(dataset)
    features = segment_audio_features(store.tensors(store.entries[0])["audio_features"], model.config.audio, 0, 4)
    reference = pipe.encode_reference(torch.rand(64, 64, 3))
    settings = SamplingSettings.from_preset(model.config.preset, frames_per_clip=4, motion_frames=2)
    frames = pipe.generate_frames(reference, features, settings=settings)
    assert torch.isfinite(frames).all() and rows == [1, 1, 1, 1]


def test_distill_without_a_teacher_is_one_line(dataset, vae_dir, tmp_path, capsys):  # noqa: F811
    from emo_model.app.cli import main

    code = main(["train", "--stage", "distill", "--config", str(CONFIG), "--data", str(dataset), "--vae", str(vae_dir),
                 "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "--stage distill needs a teacher: give --init" in err
    assert not (tmp_path / "run").exists()


def test_a_family_teacher_in_its_own_file_layout_distils(videos, tmp_path):  # noqa: F811
    """The teacher as Hallo ships it (net.pth, tiny-hallo layout; its data from its own wav2vec2 features): the student
    is a tiny-hallo model with the student's preset."""
    from comfy_harness import tiny_wav2vec2_folder
    from conftest import perturb_zero_inits
    from test_train import _options
    from test_weights import _save_hallo_net

    from emo_model.network.model import EMOModel
    from emo_model.train.preprocess import preprocess
    from emo_model.weights.checkpoints import load_emo_model

    data = tmp_path / "data"
    preprocess(videos, data, _options(config="tiny-hallo", audio_encoder=str(tiny_wav2vec2_folder(tmp_path / "w2v"))), log=lambda *_: None)
    torch.manual_seed(0)
    (tmp_path / "hallo").mkdir()
    teacher = _save_hallo_net(perturb_zero_inits(EMOModel("tiny-hallo")), tmp_path / "hallo" / "net.pth")
    vae = tmp_path / "vae"
    tiny_vae().save_pretrained(vae)
    lines: list[str] = []
    _trainer(_config(2), tmp_path / "run", data, vae, log=lines.append, init=teacher).train()
    assert any("guidance branches {'uncond': -2.5, 'full': 3.5}" in line for line in lines)  # Hallo's cfg 3.5, folded in
    student = load_emo_model(tmp_path / "run" / "emo-stage-distill-final.safetensors", dtype=torch.float32)
    p = student.config.preset
    assert student.config.name == "tiny-hallo" and (p.steps, p.sampler, p.cfg, p.audio_cfg) == (4, "lcm", 1.0, 1.0)


def test_the_shipped_distill_configs_are_valid():
    for name in ("tiny.yaml", "emo.yaml"):
        cfg = load_train_config(CONFIG.parent / name, cls=DistillConfig).validate()
        assert (cfg.distill.grid, cfg.distill.solver_steps, cfg.distill.steps, cfg.ema.enabled) == ("student", 1, 4, True), name
    assert DistillConfig().distill.grid == "student"  # a config of the user's own without the key gets the grid that worked
