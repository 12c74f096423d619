"""MEMO's network and files: the published key/shape layouts, detection of its four diffusers folders, convert."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from emo_model.families import get_config
from emo_model.network.model import EMOModel
from emo_model.weights.checkpoints import inspect_checkpoint, load_emo_model
from emo_model.weights.files import TensorFile, WeightsError
from tests.conftest import perturb_zero_inits

# published sub-folder -> (layout JSON in tests/data/checkpoint_layouts, EMOModel prefix)
PARTS = {
    "reference_net": ("memo_reference_net.json", "reference_unet."),
    "diffusion_net": ("memo_diffusion_net.json", "denoising_unet."),
    "image_proj": ("memo_image_proj.json", "imageproj."),
    "audio_proj": ("memo_audio_proj.json", "audioproj."),
}


def _layout(layouts_dir: Path, name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v["shape"]) for k, v in json.loads((layouts_dir / name).read_text())["tensors"].items()}


def _meta_files(layouts_dir: Path) -> list[TensorFile]:
    return [
        TensorFile(Path(sub) / "diffusion_pytorch_model.safetensors",
                   {k: torch.empty(s, device="meta") for k, s in _layout(layouts_dir, layout).items()})
        for sub, (layout, _) in PARTS.items()
    ]


def test_memo_network_has_exactly_the_published_keys_and_shapes(layouts_dir):
    with torch.device("meta"):
        model = EMOModel(get_config("memo"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    published = {prefix + k: s for layout, prefix in PARTS.values() for k, s in _layout(layouts_dir, layout).items()}
    assert len(published) == 662 + 2114 + 4 + 8
    assert ours == published


def test_inspect_names_memo_for_the_full_size_published_files(layouts_dir):
    files = _meta_files(layouts_dir)
    ckpt = inspect_checkpoint(files[::-1])  # roles from the keys, not the order or the names
    assert (ckpt.format, ckpt.family, ckpt.config.name) == ("memo", "memo", "memo")
    assert ckpt.complete and ckpt.problem() is None
    assert {role: f.name for role, f in ckpt.files.items()} == {
        "reference_unet": "reference_net/diffusion_pytorch_model.safetensors",
        "denoising_unet": "diffusion_net/diffusion_pytorch_model.safetensors",
        "image_proj": "image_proj/diffusion_pytorch_model.safetensors",
        "audio_proj": "audio_proj/diffusion_pytorch_model.safetensors",
    }
    assert {(id(f), k) for f, k in ckpt.sources.values()} == {(id(f), k) for f in files for k in f.tensors}
    model = ckpt.load(device="meta")
    assert model.config == get_config("memo")
    assert ckpt.num_parameters == 857066560 + 1678033540 + 1577472 + 36465152


def test_three_of_the_four_full_size_parts_name_the_missing_one(layouts_dir):
    files = [f for f in _meta_files(layouts_dir) if not f.name.startswith("image_proj/")]
    ckpt = inspect_checkpoint(files)
    assert ckpt.family == "memo" and ckpt.missing_parts == ["image_proj"]
    assert "no image_proj/ weights" in ckpt.problem()
    assert ckpt.report.complete  # what is there fits


def _save_folder(model: EMOModel, folder: Path, skip: tuple[str, ...] = ()) -> Path:
    state = model.state_dict()
    for sub, (_, prefix) in PARTS.items():
        if sub in skip:
            continue
        (folder / sub).mkdir(parents=True)
        (folder / sub / "config.json").write_text("{}")  # the published image_proj / audio_proj configs are empty
        save_file({k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)},
                  str(folder / sub / "diffusion_pytorch_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def tiny_memo():
    torch.manual_seed(0)
    return perturb_zero_inits(EMOModel("tiny-memo").eval())


def test_memo_folder_loads_strictly_to_the_same_tensors(tmp_path, tiny_memo):
    folder = _save_folder(tiny_memo, tmp_path / "memo")
    ckpt = inspect_checkpoint(folder)
    assert (ckpt.format, ckpt.config.name) == ("memo", "tiny-memo") and ckpt.complete
    loaded = load_emo_model(folder)
    for key, value in tiny_memo.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_partial_memo_folder_is_refused_naming_the_missing_folder(tmp_path, tiny_memo):
    folder = _save_folder(tiny_memo, tmp_path / "memo", skip=("audio_proj",))
    expected = "MEMO needs reference_net/, diffusion_net/, image_proj/ and audio_proj/ in one folder; found only"
    with pytest.raises(WeightsError, match=re.escape(expected) + r".*\(no audio_proj/ weights\)"):
        load_emo_model(folder)
    # two UNets alone (no projection) in MEMO's folders are still MEMO's
    folder = _save_folder(tiny_memo, tmp_path / "memo2", skip=("audio_proj", "image_proj"))
    with pytest.raises(WeightsError, match=r"\(no image_proj/ / audio_proj/ weights\)"):
        load_emo_model(folder)


def test_inspect_and_convert_cli_on_a_memo_folder(tmp_path, tiny_memo, capsys):
    from emo_model.app.cli import main

    folder = _save_folder(tiny_memo, tmp_path / "memo")
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "MEMO" in out and "tiny-memo" in out
    target = tmp_path / "memo.safetensors"
    assert main(["convert", str(folder), "--out", str(target)]) == 0
    native = load_emo_model(target)
    assert native.config == get_config("tiny-memo")
    for key, value in tiny_memo.state_dict().items():
        assert torch.equal(native.state_dict()[key], value), key


def test_fixed_emotion_choice_by_name_or_index():
    from emo_model.families import emotion_class, emotion_names
    from emo_model.families.memo import EMOTIONS

    memo = get_config("memo")
    assert set(EMOTIONS) <= set(emotion_names()) and len(EMOTIONS) == memo.backbone.emotion_classes == 9
    assert memo.preset.emotion == EMOTIONS.index("neutral") == 4
    assert emotion_class(memo, "happy") == 3 and emotion_class(memo, " Sad ") == 6 and emotion_class(memo, "8") == 8
    with pytest.raises(ValueError, match=r"emotion 'joy' is not one of memo's classes: angry, disgusted, .* \(or an index 0\.\.8\)"):
        emotion_class(memo, "joy")
    with pytest.raises(ValueError, match=r"emotion 9 is not one of"):
        emotion_class(memo, 9)  # 9 is the null class of the unconditional branch, not a choice
    with pytest.raises(ValueError, match="hallo has no emotion-conditioned audio modules"):
        emotion_class(get_config("hallo"), "happy")


def test_settings_of_a_flow_model_are_checked_in_one_line():
    from emo_model.sampling.settings import SamplingSettings
    from emo_model.validation import InputError, check_settings

    memo = get_config("memo")
    check_settings(SamplingSettings.from_preset(memo.preset), memo)  # the preset passes
    with pytest.raises(InputError, match="--sampler 'ddim' does not sample memo; choose one of flow_euler"):
        check_settings(SamplingSettings.from_preset(memo.preset, sampler="ddim"), memo, labels={"sampler": "--sampler"})
    with pytest.raises(InputError, match="sampler 'flow_euler' does not sample hallo; choose one of ddim"):
        check_settings(SamplingSettings.from_preset(get_config("hallo").preset, sampler="flow_euler"), get_config("hallo"))
    with pytest.raises(InputError, match=r"emotion must be an emotion class 0\.\.8 of memo, got 9"):
        check_settings(SamplingSettings.from_preset(memo.preset, emotion=9), memo)
    with pytest.raises(InputError, match="emotion must be"):
        check_settings(SamplingSettings.from_preset(memo.preset, emotion=[1, 2, 12]), memo)


def test_flow_sampler_and_fast_mode_keep_the_flow_schedule():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from emo_model.sampling.settings import fast_settings
    from emo_model.sampling.schedulers import init_noise_sigma, make_scheduler, scale_model_input

    preset = get_config("memo").preset
    sched = make_scheduler(preset.sampler, preset.scheduler)
    assert isinstance(sched, FlowMatchEulerDiscreteScheduler) and sched.config.shift == 1.0
    sched.set_timesteps(20)
    assert float(sched.timesteps[0]) == 1000.0 and float(sched.timesteps[-1]) == pytest.approx(1.0)
    x = torch.randn(2, 3)
    assert init_noise_sigma(sched) == 1.0 and scale_model_input(sched, x, sched.timesteps[0]) is x
    with pytest.raises(ValueError, match="this model predicts flow velocities, which only flow_euler sample"):
        make_scheduler("ddim", preset.scheduler)
    assert fast_settings(preset)["sampler"] == "flow_euler" and fast_settings(get_config("hallo").preset)["sampler"] == "dpmpp_2m"


def test_sampler_node_offers_the_emotion_choice():
    from tests.comfy_harness import load_pack

    inputs = load_pack().NODE_CLASS_MAPPINGS["EMOSampler"].INPUT_TYPES()
    choices, options = inputs["optional"]["emotion"]
    assert choices[0] == "preset" and "neutral" in choices and options["default"] == "preset"
    assert "MEMO" in options["tooltip"] and "presumed" in options["tooltip"]
    assert {"flow_euler", "preset", "ddim"} <= set(inputs["required"]["sampler"][0])


def test_model_list_shows_a_folder_of_diffusers_sub_folders_once(tmp_path, monkeypatch):
    from tests.comfy_harness import load_pack

    comfy = load_pack().nodes._comfy
    for sub in PARTS:
        (tmp_path / "memo" / sub).mkdir(parents=True)
        (tmp_path / "memo" / sub / "config.json").write_text("{}")
        (tmp_path / "memo" / sub / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (tmp_path / "hallo").mkdir()
    (tmp_path / "hallo" / "net.pth").write_bytes(b"")
    monkeypatch.setattr(comfy, "folder_paths_for", lambda kind: [tmp_path])
    assert comfy.list_entries("emo", folders=True) == ["hallo/net.pth", "memo/"]
