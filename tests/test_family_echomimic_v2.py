"""EchoMimic v2 as a family: its files recognised, its preset and quirks, the pose guider's per-frame input."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb_zero_inits, tiny_vae

from emo_model.families import get_config, get_family
from emo_model.network.model import EMOModel
from emo_model.network.vae import DiffusersVAE
from emo_model.sampling.pipeline import EMOPipeline
from emo_model.sampling.pose_sequence import pose_rows
from emo_model.sampling.settings import SamplingSettings
from emo_model.weights import WeightsError, inspect_checkpoint


def write_parts(folder, config: str, locator_name: str | None, acc: bool = False, seed: int = 0):
    """The tiny model's parts as the original's .pth files (motion modules inside denoising_unet.pth)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = EMOModel(config).state_dict()
    tag = "_acc" if acc else ""
    names = {"denoising_unet": f"denoising_unet{tag}.pth", "reference_unet": "reference_unet.pth", "face_locator": locator_name}
    for role, name in names.items():
        if name is not None:
            torch.save({k[len(role) + 1:]: v for k, v in state.items() if k.startswith(role + ".")}, folder / name)
    return folder


def test_the_pose_encoder_names_the_family(tmp_path):
    ckpt = inspect_checkpoint(write_parts(tmp_path / "anything", "tiny-echomimic-v2", "pose_encoder.pth"))
    assert (ckpt.family, ckpt.config.name, ckpt.missing_parts) == ("echomimic-v2", "tiny-echomimic-v2", [])
    assert ckpt.config.face_locator.reads == "pose_frames" and ckpt.config.face_locator.in_channels == 3
    model = ckpt.load()
    assert model.config.preset.quirks.context_shift_per_step == 3


def test_v1_files_stay_v1(tmp_path):
    ckpt = inspect_checkpoint(write_parts(tmp_path / "echo", "tiny-echomimic", "face_locator.pth"))
    assert ckpt.family == "echomimic-v1"


def test_a_v2_folder_without_the_pose_encoder_is_v2_and_names_the_missing_file(tmp_path):
    ckpt = inspect_checkpoint(write_parts(tmp_path / "EchoMimicV2", "tiny-echomimic-v2", None))
    assert ckpt.family == "echomimic-v2" and ckpt.missing_parts == ["face_locator"]
    assert "pose_encoder.pth" in ckpt.problem()


def test_the_acc_files_select_the_accelerated_preset(tmp_path):
    folder = write_parts(tmp_path / "m", "tiny-echomimic-v2", "pose_encoder.pth", acc=True)
    ckpt = inspect_checkpoint(folder, variant="acc")
    assert ckpt.variant == "acc" and (ckpt.config.preset.steps, ckpt.config.preset.cfg) == (6, 1.0)
    write_parts(folder, "tiny-echomimic-v2", None)  # the standard denoising_unet.pth beside it
    assert inspect_checkpoint(folder).variant == "standard"
    with pytest.raises(WeightsError, match="acc"):
        inspect_checkpoint(write_parts(tmp_path / "s", "tiny-echomimic-v2", "pose_encoder.pth"), variant="acc")


def test_preset_and_quirks_are_the_originals():
    family = get_family("echomimic-v2")
    assert family.original.commit.startswith("a312dec0")
    p = get_config("echomimic-v2").preset
    assert (p.resolution, p.fps, p.frames_per_clip, p.context_overlap, p.steps, p.cfg) == (768, 24.0, 12, 3, 30, 2.5)
    q = p.quirks
    assert (q.audio_attention_scale, q.context_schedule, q.context_shift_per_step, q.initial_noise_clamp) == (3.0, "uniform", 3, 1.5)
    assert (q.seed_stream, q.audio_loader, p.scheduler.set_alpha_to_one) == ("single", "ffmpeg-s16-mono", True)
    names = {f.path for f in family.downloads if f.repo == "BadToBest/EchoMimicV2"}
    assert names == {"denoising_unet.pth", "reference_unet.pth", "motion_module.pth", "pose_encoder.pth",
                     "denoising_unet_acc.pth", "motion_module_acc.pth"}


def test_a_short_pose_sequence_is_mirrored_back_and_forth():
    assert pose_rows(torch.arange(10), 4).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert pose_rows(torch.arange(3), 1).tolist() == [0, 0, 0]
    assert pose_rows(torch.arange(3), 5).tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel("tiny-echomimic-v2").eval())  # a "trained" pose guider: non-zero features
    return EMOPipeline(model, DiffusersVAE(tiny_vae()))


def _run(pipe, poses, frames=10, **kw):
    g = torch.Generator().manual_seed(1)
    ref = pipe.encode_reference(torch.rand(64, 64, 3, generator=g))
    feats = torch.randn(frames, 30, 384, generator=g)
    settings = SamplingSettings.from_preset(pipe.config.preset, steps=2, seed=5)
    return pipe.generate_frames(ref, feats, settings=settings, pose_frames=poses, **kw)


def _poses(n, seed=2):
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_every_frame_reads_its_own_pose(pipe):
    poses = _poses(10)
    base = _run(pipe, poses)
    changed = poses.clone()
    changed[7] = 0
    other = _run(pipe, changed)
    assert not torch.equal(base, other)
    # a short sequence is the mirrored long one, frame for frame
    short = _poses(4, seed=3)
    assert torch.allclose(_run(pipe, short), _run(pipe, short[pose_rows(torch.arange(10), 4)]), atol=1e-6)


def test_the_pose_guider_needs_poses_and_others_refuse_them(pipe):
    with pytest.raises(ValueError, match="pose_frames"):
        _run(pipe, None)
    v1 = EMOPipeline(EMOModel("tiny-echomimic").eval(), pipe.codec)
    with pytest.raises(ValueError, match="no pose guider"):
        _run(v1, _poses(10))
