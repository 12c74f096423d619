"""Training: preprocessing, the speed-label proxy, the three stages, exact resume, two-process DDP.

Everything runs on the CPU with the ``tiny`` config on clips made here: an astronaut head (scikit-image's
``astronaut()``, which the Haar detector finds) moving on a background, with a synthetic voice-like
tone, plus a file without audio, a corrupt file and a file without a face. Pixels are 64x64 at 10 fps
so the whole file stays well under the time budget on two cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import HANG_GUARD_S, ROOT, perturb_zero_inits, tiny_vae
from safetensors.torch import load_file

from emo_model.families import get_config
from emo_model.network.model import EMOModel
from emo_model.train.dataset import EMODataset, SegmentStore
from emo_model.train.head_pose import BoxMotionEstimator, FlowRotationEstimator, get_estimator
from emo_model.train.preprocess import preprocess
from emo_model.train.preprocess_options import Options
from emo_model.train.trainer import GROUPS, STAGE_TRAINABLE, TrainConfig, Trainer, TrainError, load_train_config, parameter_group
from emo_model.video_io import VideoWriter

FPS_SOURCE = 12
FPS = 10
CONFIGS = ROOT / "emo_model" / "train" / "configs"


# --------------------------------------------------------------------------------------------------
# Synthetic data


def _head(size: int = 96) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut()[20:220, 140:340], (size, size), interpolation=cv2.INTER_AREA)


def _face_clip(seconds: float, seed: int, cut_at: float | None = None, sr: int = 22050):
    """A moving head (a hard cut at ``cut_at`` s: new background, mirrored head, shifted) and a stereo tone."""
    rng = np.random.default_rng(seed)
    head = _head()
    frames = []
    for i in range(int(seconds * FPS_SOURCE)):
        second = cut_at is not None and i >= cut_at * FPS_SOURCE
        frame = np.full((112, 144, 3), (150, 120, 60) if second else (40, 90, 140), np.uint8)
        frame = cv2.add(frame, rng.integers(0, 8, frame.shape, dtype=np.uint8))
        dx = round(6 * math.sin(2 * math.pi * i / (FPS_SOURCE * 1.5))) + (20 if second else 0)
        dy = round(3 * math.cos(2 * math.pi * i / (FPS_SOURCE * 2.0)))
        frame[8 + dy : 104 + dy, 20 + dx : 116 + dx] = head[:, ::-1] if second else head
        frames.append(frame)
    t = np.arange(int(seconds * sr)) / sr
    voice = 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))
    return np.stack(frames), (np.stack([voice, 0.8 * voice]).astype(np.float32), sr)


def _write(path: Path, frames: np.ndarray, audio) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, FPS_SOURCE, audio=audio) as writer:
        writer.write(frames)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    frames, audio = _face_clip(4, seed=1, cut_at=1.5)
    _write(root / "talk_cut.mp4", frames, audio)
    frames, audio = _face_clip(3, seed=2)
    _write(root / "sub" / "talk_plain.mp4", frames, audio)
    frames, _ = _face_clip(3, seed=3)
    _write(root / "silent.mp4", frames, None)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(0).bytes(4000))
    noise = np.random.default_rng(5).integers(0, 255, (30, 112, 144, 3), dtype=np.uint8)
    _write(root / "noface.mp4", noise, _face_clip(3, seed=4)[1])
    return root


def _options(**kw) -> Options:
    base = dict(
        fps=FPS, resolution=64, min_seconds=1.0, max_seconds=2.0, config="tiny", shard_size=2, detect_every=2, detector="haar"
    )
    base.update(kw)
    return Options(**base)


@pytest.fixture(scope="module")
def dataset(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dataset")
    preprocess(videos, out, _options(), log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    vae = tiny_vae()
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def init_checkpoint(tmp_path_factory) -> Path:
    """A tiny model whose zero-initialised layers are perturbed, so every group affects the output."""
    from emo_model.weights.native import save_native

    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel("tiny"))
    return save_native(model, tmp_path_factory.mktemp("init") / "tiny.safetensors")


# --------------------------------------------------------------------------------------------------
# Preprocessing


def test_preprocess_lists_segments_and_skips(dataset):
    report = json.loads((dataset / "report.json").read_text())
    skipped = report["files_skipped"]
    assert set(skipped) == {"broken.mp4", "silent.mp4"}
    assert "cannot open" in skipped["broken.mp4"]
    assert "no audio" in skipped["silent.mp4"]
    assert any("face" in reason for reason in report["dropped"])  # noface.mp4 yields no segment
    text = (dataset / "report.txt").read_text()
    assert "broken.mp4" in text and "silent.mp4" in text
    entries = [json.loads(line) for line in (dataset / "index.jsonl").read_text().splitlines()]
    assert len(entries) == report["segments"] and {e["source"] for e in entries} == {"talk_cut.mp4", "sub/talk_plain.mp4"}
    assert report["hours"] == pytest.approx(sum(e["frames"] for e in entries) / FPS / 3600)
    # The cut at 1.5 s splits talk_cut.mp4: one scene of 15 frames and one of 25 (-> two segments);
    # without scene detection the 4 s would have been cut into two halves at 2.0 s.
    starts = sorted(e["source_start"] for e in entries if e["source"] == "talk_cut.mp4")
    assert starts[:2] == [0.0, 1.5] and len(starts) == 3
    for e in entries:
        assert 1.0 <= e["frames"] / FPS <= 2.0
    assert all((dataset / e["shard"]).is_file() for e in entries)


def test_dataset_streams_back_with_the_right_shapes(dataset):
    store = SegmentStore(dataset)
    cfg = get_config("tiny").audio
    for entry in store.entries:
        n = entry["frames"]
        tensors = store.tensors(entry)
        frames = store.frames(entry, [0, n - 1])
        assert frames.shape == (2, 64, 64, 3) and frames.dtype == np.uint8
        assert tuple(tensors["audio_features"].shape) == (n, cfg.layers, cfg.dim)
        assert tuple(tensors["audio"].shape) == (round(n * 16000 / FPS),)
        assert tuple(tensors["speed"].shape) == (n,) and torch.isfinite(tensors["speed"]).all()
        mask = tensors["mask"]
        assert tuple(mask.shape) == (64, 64) and 0.1 < mask.float().mean() < 1.0
        # the face sits in the middle of the static crop and inside the mask
        boxes = tensors["boxes"].numpy()
        cx, cy = (boxes[:, 0] + boxes[:, 2]).mean() / 2, (boxes[:, 1] + boxes[:, 3]).mean() / 2
        assert abs(cx - 32) < 10 and abs(cy - 32) < 10
        assert mask[int(cy), int(cx)] == 1
        # the head moves by several pixels per frame: the label must see motion
        assert float(tensors["speed"].mean()) > 0.3
        assert store.meta(entry)["speed_estimator"] == "flow"
    sample = EMODataset(store, list(range(len(store))), stage=2, frames=4, motion_frames=2, audio=cfg, seed=0)[(0, 0)]
    assert tuple(sample["frames"].shape) == (6, 64, 64, 3)
    assert tuple(sample["reference"].shape) == (64, 64, 3)
    assert tuple(sample["audio_features"].shape) == (4, cfg.window, cfg.layers, cfg.dim)
    assert tuple(sample["speed"].shape) == (6,)


def test_preprocess_rerun_resumes_without_redoing_work(videos, dataset, tmp_path):
    index_before = (dataset / "index.jsonl").read_text()
    shards_before = {p.name: p.stat().st_mtime_ns for p in dataset.glob("shard-*.tar")}
    (dataset / ".shard-000099.tar.partial").write_bytes(b"left by a crash")
    messages = []
    preprocess(videos, dataset, _options(), log=messages.append)
    assert "0 to do" in messages[0]
    assert (dataset / "index.jsonl").read_text() == index_before
    assert {p.name: p.stat().st_mtime_ns for p in dataset.glob("shard-*.tar")} == shards_before
    assert not (dataset / ".shard-000099.tar.partial").exists()


# --------------------------------------------------------------------------------------------------
# Speed labels


def _moving_head(shift=(0.0, 0.0), angle=0.0, frames=6):
    """Frames of the head translated by ``shift`` px and rotated by ``angle`` degrees per frame."""
    head = _head(96)
    canvas = np.full((200, 200, 3), 70, np.uint8)
    canvas[52:148, 52:148] = head
    out, boxes = [], []
    for i in range(frames):
        m = cv2.getRotationMatrix2D((100, 100), angle * i, 1.0)
        m[:, 2] += np.array(shift) * i
        out.append(cv2.warpAffine(canvas, m, (200, 200), borderMode=cv2.BORDER_REPLICATE))
        boxes.append([62 + shift[0] * i, 60 + shift[1] * i, 138 + shift[0] * i, 140 + shift[1] * i])
    return np.stack(out), np.array(boxes, np.float64)


def test_flow_proxy_measures_degrees_per_frame():
    est = FlowRotationEstimator()
    still, boxes = _moving_head()
    assert est.estimate(still, boxes, 30).max() < 0.1
    # 2 px per frame with a face 80 px tall (pivot = 1 face height): atan(2/80) = 1.43 deg per frame
    moving, boxes = _moving_head(shift=(2.0, 0.0))
    assert np.median(est.estimate(moving, boxes, 30)) == pytest.approx(math.degrees(2 / 80), rel=0.2)
    # a 1 degree in-plane rotation per frame about the face centre reads as 1 degree per frame
    rolling, boxes = _moving_head(angle=1.0)
    assert np.median(est.estimate(rolling, boxes, 30)) == pytest.approx(1.0, rel=0.25)
    assert est.fallback_frames == 0


def test_speed_estimators_are_replaceable():
    assert isinstance(get_estimator("box"), BoxMotionEstimator)
    frames, boxes = _moving_head(shift=(0.0, 3.0))
    assert np.median(get_estimator("box").estimate(frames, boxes, 30)) == pytest.approx(math.degrees(3 / 80), rel=0.05)
    with pytest.raises(KeyError):
        get_estimator("no-such-estimator")


# --------------------------------------------------------------------------------------------------
# Training


def _config(stage: int, **changes) -> TrainConfig:
    cfg = load_train_config(CONFIGS / f"tiny_stage{stage}.yaml")
    cfg.stage = stage
    cfg.log_with = None
    cfg.sample_every = 0
    cfg.checkpoint_every = 0
    for key, value in changes.items():
        target = cfg
        *path, leaf = key.split("__")
        for part in path:
            target = getattr(target, part)
        setattr(target, leaf, value)
    return cfg


def _trainer(cfg, output, dataset, vae_dir, **kw):
    cfg.data.dir = str(dataset)
    return Trainer(cfg, output, vae=vae_dir, log=lambda *_: None, **kw).setup()


def _state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.net).model.state_dict().items()}


def test_shipped_configs_are_valid():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert names == [f"{size}_stage{s}.yaml" for size in ("emo", "tiny") for s in (1, 2, 3)]
    for path in CONFIGS.glob("*.yaml"):
        cfg = load_train_config(path).validate()
        get_config(cfg.model)
        if path.name.startswith("emo"):
            assert cfg.optim.lr == 1e-5  # the paper's learning rate
    with pytest.raises(ValueError, match="audio"):
        _config(3, trainable=["temporal", "audio"]).validate()
    cfg = load_train_config(CONFIGS / "tiny_stage2.yaml", ["optim.lr=3e-4", "data.batch_size=1", "trainable=[temporal]"])
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.trainable) == (3e-4, 1, ["temporal"])


def test_groups_partition_the_model():
    config = get_config("tiny")
    model = EMOModel(config)
    groups = {parameter_group(name, config) for name, _ in model.named_parameters()}
    assert groups <= set(GROUPS) and {"reference_net", "backbone", "temporal", "speed", "audio", "face_locator"} <= groups
    audio = [n for n, _ in model.named_parameters() if parameter_group(n, config) == "audio"]
    assert any(".attn2." in n for n in audio) and any(n.startswith("audioproj.") for n in audio)
    assert not set(STAGE_TRAINABLE[3]) & {"audio", "reference_net", "backbone"}
    # the full-size layout: every audio attention of the backbone is an audio parameter
    emo = get_config("emo")
    with torch.device("meta"):
        names = [n for n, _ in EMOModel(emo).named_parameters()]
    attn2 = [n for n in names if ".attn2." in n]
    assert attn2 and all(n.startswith("denoising_unet.") and parameter_group(n, emo) == "audio" for n in attn2)
    assert {parameter_group(n, emo) for n in names if ".speed_attn." in n} == {"speed"}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_trains_only_its_groups(stage, dataset, vae_dir, init_checkpoint, tmp_path):
    cfg = _config(stage, max_steps=2, optim__lr=1e-3)
    trainer = _trainer(cfg, tmp_path / "run", dataset, vae_dir, init=init_checkpoint)
    before = _state(trainer)
    trainer.train()
    after = _state(trainer)
    config = trainer.config
    changed = {g: False for g in GROUPS}
    for name, _ in trainer.model.named_parameters():
        group = parameter_group(name, config)
        if group in STAGE_TRAINABLE[stage]:
            changed[group] |= not torch.equal(before[name], after[name])
        else:
            assert torch.equal(before[name], after[name]), f"stage {stage} changed frozen {name}"
    for group in STAGE_TRAINABLE[stage]:
        if group != "identity":  # the tiny (emo) layout has no identity layers
            assert changed[group], f"stage {stage} did not train {group}"
    final = load_file(str(tmp_path / "run" / f"emo-stage{stage}-final.safetensors"))
    assert torch.equal(final["face_locator.conv_in.weight"], after["face_locator.conv_in.weight"])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_trainable_parameter_gets_a_gradient(stage, dataset, vae_dir, init_checkpoint, tmp_path):
    """docs/training.md's claim that DDP (find_unused_parameters off) relies on: one real backward reaches every
    trainable parameter, with the conditions kept and with every condition dropped."""
    cfg = _config(stage, uncond_reference=0.0, uncond_audio=0.0, uncond_both=0.0, first_clip_ratio=0.0)
    trainer = _trainer(cfg, tmp_path / "run", dataset, vae_dir, init=init_checkpoint)
    trainer.sampler.set_epoch(0)
    batch = next(iter(trainer.loader))
    trainable = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert {parameter_group(n, trainer.config) for n, _ in trainable} == set(STAGE_TRAINABLE[stage]) - {"identity"}
    for dropped in (0.0, 1.0):  # 1.0: every sample without reference and audio (the unconditional branch)
        trainer.cfg.uncond_both, trainer.cfg.first_clip_ratio = dropped, dropped
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.accelerator.backward(trainer.loss(batch))
        missing = [n for n, p in trainable if p.grad is None]
        assert not missing, f"stage {stage}: {len(missing)} trainable parameters get no gradient, e.g. {missing[:3]}"
    if stage == 1:  # the ReferenceNet's layers after its last bank input never reach the loss: kept frozen
        frozen = [n for n, p in trainer.model.named_parameters() if n.startswith("reference_unet.") and not p.requires_grad]
        assert frozen and all(".up_blocks." in n for n in frozen)


def test_unreachable_parameters_are_the_reference_net_tail():
    """The meta-device dry run (no weights, no arithmetic) on the full-size structure (the tiny one: the test above): of
    the groups a stage can train, only the ReferenceNet's last transformer after its bank input misses the loss."""
    from emo_model.train.parameter_groups import unreachable_parameters

    config = get_config("emo")
    with torch.device("meta"):
        names = [n for n, _ in EMOModel(config).named_parameters()]
    preset = config.preset
    for stage in (1, 2):  # stage 3's forward is stage 2's
        unreachable = unreachable_parameters(config, stage, preset.frames_per_clip, preset.motion_frames)
        reference = sorted(n for n in unreachable if n.startswith("reference_unet."))
        assert reference, stage
        pattern = re.compile(r"reference_unet\.up_blocks\.\d+\.attentions\.\d+\.")
        blocks = {m.group(0) if (m := pattern.match(n)) else n for n in reference}
        assert len(blocks) == 1, blocks  # all in one attention block ...
        (block,) = blocks
        attentions = [n for n in names if pattern.match(n)]
        assert attentions[-1].startswith(block)  # ... the ReferenceNet's last one
        assert f"{block}proj_out.weight" in unreachable and f"{block}transformer_blocks.0.norm1.weight" not in unreachable
        others = {parameter_group(n, config) for n in unreachable if not n.startswith("reference_unet.")}
        if stage == 1:  # no audio, no temporal modules, no speed in stage 1
            assert {"audio", "temporal", "speed"} <= others and not others & {"backbone", "face_locator"}
        else:
            assert not others, (stage, others)


def test_a_group_a_stage_cannot_train_is_one_clear_line(dataset, vae_dir, tmp_path, capsys):
    from emo_model.app.cli import main

    argv = ["train", "--stage", "1", "--config", str(CONFIGS / "tiny_stage1.yaml"), "--data", str(dataset), "--vae", str(vae_dir)]
    argv += ["--output", str(tmp_path / "run"), "--set", "trainable=[speed]", "--set", "log_with=none", "--set", "sample_every=0"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: trainable: 'speed'") and "stage 1" in err, err
    assert "reference_net, backbone" in err and "--set trainable=" in err


def test_group_lr_gives_a_group_its_own_learning_rate(dataset, vae_dir, init_checkpoint, tmp_path):
    cfg = load_train_config(CONFIGS / "tiny_stage3.yaml", ["optim.lr=1e-5", "optim.group_lr.speed=1.0e-3"])
    cfg.stage, cfg.log_with, cfg.sample_every, cfg.checkpoint_every = 3, None, 0, 0
    trainer = _trainer(cfg, tmp_path / "run", dataset, vae_dir, init=init_checkpoint)
    rate_of = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert len(rate_of) == len(named)
    for name, p in named:
        expected = 1e-3 if parameter_group(name, trainer.config) == "speed" else 1e-5
        assert rate_of[id(p)] == pytest.approx(expected), name
    assert {parameter_group(n, trainer.config) for n, _ in named} == {"speed", "temporal"}
    with pytest.raises(TrainError, match="group_lr"):
        load_train_config(CONFIGS / "tiny_stage3.yaml", ["optim.group_lr.wheels=1e-3"]).validate()


@pytest.mark.parametrize("stage", [1, 2])
def test_overfitting_one_batch_lowers_the_loss(stage, dataset, vae_dir, init_checkpoint, tmp_path):
    cfg = _config(stage, optim__lr=2e-3, uncond_reference=0.0, uncond_audio=0.0, uncond_both=0.0, first_clip_ratio=0.0)
    trainer = _trainer(cfg, tmp_path / "run", dataset, vae_dir, init=init_checkpoint if stage == 2 else None)
    trainer.sampler.set_epoch(0)
    batch = next(iter(trainer.loader))
    losses = []
    for _ in range(40):  # global_step stays 0: the same noise and timesteps every time
        loss = trainer.loss(batch)
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses


def test_resume_is_exact(dataset, vae_dir, init_checkpoint, tmp_path):
    def config(steps):
        return _config(
            2, max_steps=steps, optim__lr=1e-3, uncond_both=0.2, first_clip_ratio=0.3, ema__enabled=True, ema__decay=0.9
        )

    straight = _trainer(config(3), tmp_path / "a", dataset, vae_dir, init=init_checkpoint)
    straight.train()
    first = _trainer(config(1), tmp_path / "b", dataset, vae_dir, init=init_checkpoint)
    first.train()
    resumed = _trainer(config(3), tmp_path / "b", dataset, vae_dir, resume="latest")
    assert (resumed.global_step, resumed.epoch, resumed.batches_in_epoch) == (1, 0, 1)  # mid-epoch (2 batches per epoch)
    resumed.train()
    a, b = _state(straight), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert straight.history[1:] == resumed.history
    ema_a = load_file(str(tmp_path / "a" / "emo-stage2-final.safetensors"))
    ema_b = load_file(str(tmp_path / "b" / "emo-stage2-final.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # the exported weights are the EMA ones: different from the raw weights of trained layers
    key = next(k for k in a if ".motion_modules." in k and k.endswith("proj_in.weight"))
    assert not torch.equal(ema_a[key], a[key])


@pytest.mark.parametrize("error", ["disk full", "safetensors"])
def test_a_failed_checkpoint_write_leaves_nothing_resume_would_take(error, dataset, vae_dir, tmp_path, monkeypatch):
    """A full disk mid-checkpoint: one line, no step folder (nor a partial one) for that step, the previous checkpoint
    intact and taken by --resume, which then finishes the run."""
    import errno

    from safetensors import SafetensorError

    from emo_model.train.checkpointing import latest_checkpoint
    from emo_model.weights import native

    real, calls = native.save_native, []

    def full_disk(model, path, **kw):
        calls.append(path)
        if len(calls) < 2:
            return real(model, path, **kw)
        Path(path).write_bytes(b"half a file")
        if error == "safetensors":
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(native, "save_native", full_disk)
    run = tmp_path / "run"
    with pytest.raises(TrainError) as info:
        _trainer(_config(1, max_steps=2, checkpoint_every=1), run, dataset, vae_dir).train()
    text = str(info.value)
    assert "\n" not in text and "step-0000002" in text and ("No space left" if error == "disk full" else "StorageFull") in text
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000001"]
    assert latest_checkpoint(run / "checkpoints") == run / "checkpoints" / "step-0000001"
    assert not (run / "emo-stage1-final.safetensors").exists()
    if error == "disk full":
        monkeypatch.setattr(native, "save_native", real)
        resumed = _trainer(_config(1, max_steps=2, checkpoint_every=1), run, dataset, vae_dir, resume="latest")
        assert resumed.global_step == 1
        assert resumed.train()["steps"] == 2 and (run / "emo-stage1-final.safetensors").is_file()
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]
        # resuming with other trainable groups: the optimizer state does not fit, said in one line
        other = _config(1, max_steps=3, trainable=["backbone", "face_locator"])
        with pytest.raises(TrainError, match="another set of trainable parameters.*--init"):
            _trainer(other, run, dataset, vae_dir, resume="latest")


def test_stage3_checkpoint_loads_and_generates(dataset, vae_dir, init_checkpoint, tmp_path, monkeypatch):
    from emo_model.network.vae import DiffusersVAE
    from emo_model.sampling.pipeline import EMOPipeline
    from emo_model.sampling.settings import SamplingSettings
    from emo_model.train.dataset import segment_audio_features
    from emo_model.weights.checkpoints import load_emo_model
    from emo_model.weights.vae_files import load_vae

    cfg = _config(3, max_steps=1, sample_every=1, sample_steps=2)
    trainer = _trainer(cfg, tmp_path / "run", dataset, vae_dir, init=init_checkpoint)
    trainer.train()
    assert list((tmp_path / "run" / "samples").glob("stage3-step*.mp4"))
    model = load_emo_model(tmp_path / "run" / "emo-stage3-final.safetensors", dtype=torch.float32)
    # the checkpoint carries the run's VAE (float32, as its file holds it): generating from it needs no --vae
    bundled, given = load_vae(tmp_path / "run" / "emo-stage3-final.safetensors").state_dict(), load_vae(vae_dir).state_dict()
    assert bundled.keys() == given.keys() and all(torch.equal(bundled[k], given[k]) for k in given)
    assert all(v.dtype == torch.float32 for v in bundled.values())
    pipe = EMOPipeline(model, DiffusersVAE(load_vae(vae_dir)))
    store = SegmentStore(dataset)
    entry = store.entries[0]
    features = segment_audio_features(store.tensors(entry)["audio_features"], model.config.audio, 0, 6)
    reference = pipe.encode_reference(torch.from_numpy(store.frames(entry, [0])[0]).float() / 255)
    settings = SamplingSettings.from_preset(model.config.preset, steps=2, frames_per_clip=4, motion_frames=2)
    frames = pipe.generate_frames(reference, features, settings=settings)
    assert tuple(frames.shape) == (6, 64, 64, 3) and torch.isfinite(frames).all()

    # ... and through the nodes, as an artist opens it: models/emo + models/vae, Load EMO Model -> Sampler
    import shutil

    from comfy_harness import load_pack
    from comfy_harness import node_result as result

    models = tmp_path / "models"
    (models / "emo").mkdir(parents=True)
    shutil.copy(tmp_path / "run" / "emo-stage3-final.safetensors", models / "emo" / "my-emo.safetensors")
    shutil.copytree(vae_dir, models / "vae" / "tiny-vae")
    monkeypatch.setenv("EMO_MODELS_DIR", str(models))
    nodes = load_pack().NODE_CLASS_MAPPINGS
    loader = nodes["LoadEMOModel"]
    assert "my-emo.safetensors" in loader.INPUT_TYPES()["required"]["model"][0]
    (session,) = result(loader().load("my-emo.safetensors", "tiny-vae/", loader.INPUT_TYPES()["required"]["audio_encoder"][0][0], "fp32", "standard"))
    clip = store.tensors(entry)["audio"].float()
    audio = {"waveform": clip[None, None], "sample_rate": 16000}
    emo_audio = nodes["EMOAudioEncode"]().encode(session, audio, float(FPS), "off")["result"][0]
    image = torch.from_numpy(store.frames(entry, [0])).float() / 255
    (ref,) = result(nodes["EMOReferenceEncode"]().encode(session, image))
    out = nodes["EMOSampler"]().sample(session, ref, emo_audio, 0, 2, 0.0, 0.0, "ddim", 0.5, 4, 2, "none")["result"]
    assert out[0].shape[0] == emo_audio.num_frames and out[0].shape[1:] == (64, 64, 3) and torch.isfinite(out[0]).all()


# --------------------------------------------------------------------------------------------------
# Two processes (DDP over gloo), as `accelerate launch` / torchrun start them


_RANK_SCRIPT = """
import hashlib, json, sys
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState
from emo_model.train.trainer import Trainer, load_train_config

PartialState.destroy_process_group = lambda self, group=None: None  # one process group for the six runs (end_training)

data, vae, init, root, configs = sys.argv[1:6]
report, rank = {}, None
for stage in (1, 2, 3):
    for steps, resume in ((3, None), (5, "latest")):  # 3 steps (DDP checks the reduction from the 2nd on), then resume
        cfg = load_train_config(f"{configs}/tiny_stage{stage}.yaml")
        cfg.stage, cfg.max_steps, cfg.log_with, cfg.sample_every, cfg.checkpoint_every = stage, steps, None, 0, 0
        cfg.log_every, cfg.data.dir, cfg.optim.lr, cfg.data.frames, cfg.data.motion_frames = 1, data, 1e-3, 2, 1
        lines = []
        trainer = Trainer(cfg, f"{root}/stage{stage}", vae=vae, init=None if resume else init, resume=resume, log=lines.append)
        trainer.setup()
        acc, first = trainer.accelerator, trainer.global_step
        model = acc.unwrap_model(trainer.net).model
        before = {k: v.clone() for k, v in model.state_dict().items()}
        order = trainer.sampler._order()
        trainer.train()
        state = model.state_dict()
        rank = acc.process_index
        report[f"{stage}/{steps}"] = {
            "type": acc.distributed_type.name, "world": acc.num_processes, "first": first, "last": trainer.global_step,
            "digest": hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest(),
            "changed": sum(not torch.equal(before[k], state[k]) for k in state), "order": order,
            "history": trainer.history, "logged": trainer.logged, "lines": lines,
        }
        AcceleratorState._reset_state()  # the next run makes its own Accelerator (on the same process group)
        GradientState._reset_state()
json.dump(report, open(f"{root}/rank{rank}.json", "w"))
torch.distributed.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_stage_trains_and_resumes_on_two_processes(dataset, vae_dir, init_checkpoint, tmp_path):
    """Stages 1, 2 and 3 on two processes (DDP over gloo, find_unused_parameters off, as torchrun starts them): 3 steps,
    then --resume for 2 more; the ranks end with identical weights; the log says where it runs, logs the mean loss of
    the two ranks and the time per step and ETA."""
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(_RANK_SCRIPT))
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
        str(dataset),
        str(vae_dir),
        str(init_checkpoint),
        str(out),
        str(CONFIGS),
    ]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    progress = re.compile(r"step (\d+)/(\d+): loss \d+\.\d{4} \| \d+\.\d\d s/step \| ETA \d+(s|m\d\ds|h\d\dm|d\d\dh)")
    for key, run in ranks[0].items():
        other = ranks[1][key]
        stage, steps = map(int, key.split("/"))
        assert run["type"] == "MULTI_CPU" and run["world"] == 2
        assert (run["first"], run["last"]) == ((0, 3) if steps == 3 else (3, 5)), key
        assert run["digest"] == other["digest"] and run["changed"] > 0, key
        assert run["order"] != other["order"]  # each rank trained on its own samples ...
        assert run["history"] != other["history"]  # ... so their losses differ, and the log holds their mean
        assert [e["step"] for e in run["logged"]] == list(range(run["first"] + 1, steps + 1))
        for entry, mine, theirs in zip(run["logged"], run["history"], other["history"], strict=True):
            assert entry["loss"] == pytest.approx((mine + theirs) / 2, rel=1e-6), key
            assert entry["seconds_per_step"] > 0
        lines = run["lines"]
        assert lines[0] == f"stage {stage} on 2 processes (MULTI_CPU, gloo) on cpu x2", lines[0]
        assert not any("warning" in line for line in lines)
        steps_logged = [m.groups()[:2] for m in map(progress.fullmatch, lines) if m]
        assert steps_logged == [(str(e["step"]), str(steps)) for e in run["logged"]], lines
        assert other["lines"] == []  # only the main process writes the console log
        if steps == 5:
            assert any(line.startswith("resumed from") and "step-0000003" in line for line in lines)
