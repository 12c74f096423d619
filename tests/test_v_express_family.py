"""V-Express's files are recognised from their keys and load strictly; its separate reference attention behaves as its original's."""

from __future__ import annotations

import pytest
import torch

from emo_model.families import get_config
from emo_model.families.v_express import PARTS
from emo_model.network.attention import Attention, separate_reference_attention
from emo_model.network.model import EMOModel
from emo_model.weights import inspect_checkpoint, load_emo_model


def _write_parts(model: EMOModel, folder, names=None, motion_in_unet=True) -> None:
    """The five .bin files as V-Express publishes them (torch.save of plain state dicts, the original's key names)."""
    names = names or {role: name for role, (name, _) in PARTS.items()}
    state = model.state_dict()
    files = {role: {} for role in PARTS}
    for key, value in state.items():
        module, rest = key.split(".", 1)
        if module == "denoising_unet":
            if ".motion_modules." in rest:
                files["motion_module"][rest] = value
                if not motion_in_unet:
                    continue
            files["denoising_unet"][rest] = value
        elif module == "reference_unet":
            files["reference_unet"][rest] = value
        elif module == "face_locator":
            files["face_locator"][rest] = value
        elif module == "audioproj":
            files["audio_proj"][rest] = value
    for role, tensors in files.items():
        torch.save(tensors, folder / names[role])


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = EMOModel(get_config("tiny-v-express"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def test_parts_recognised_and_loaded(tiny_model, tmp_path):
    _write_parts(tiny_model, tmp_path)
    ckpt = inspect_checkpoint(tmp_path)
    assert ckpt.problem() is None, ckpt.problem()
    assert (ckpt.family, ckpt.config.name) == ("vexpress", "tiny-v-express")
    assert {f.name for f in ckpt.files.values()} == {name for name, _ in PARTS.values()}
    loaded = load_emo_model(tmp_path)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_unets_told_apart_by_keys_not_names(tiny_model, tmp_path):
    """The ReferenceNet file is a whole 2D UNet with its head (it reads as a denoising UNet): attn1_5 decides."""
    names = {role: name for role, (name, _) in PARTS.items()}
    names["denoising_unet"], names["reference_unet"] = "a.bin", "b.bin"  # no name says which is which
    _write_parts(tiny_model, tmp_path, names, motion_in_unet=False)
    ckpt = inspect_checkpoint(tmp_path)
    assert ckpt.problem() is None, ckpt.problem()
    assert ckpt.files["denoising_unet"].name == "a.bin" and ckpt.files["reference_unet"].name == "b.bin"


def test_missing_part_named(tiny_model, tmp_path):
    _write_parts(tiny_model, tmp_path)
    (tmp_path / "v_kps_guider.bin").unlink()
    problem = inspect_checkpoint(tmp_path).problem()
    assert problem is not None and "v_kps_guider.bin" in problem


def test_separate_reference_attention_unconditional_rows():
    """Unconditional rows read a bank of zeros in V-Express (attn1_5's output bias), not "no reference" (0)."""
    torch.manual_seed(1)
    attn = Attention(8, None, 2, 4)
    h = torch.randn(4, 6, 8)
    bank = torch.randn(1, 5, 8)
    kv = attn.project_kv(bank)
    enabled = torch.tensor([False, False, True, True])
    zeros = separate_reference_attention(attn, h, kv, enabled, zeros_unconditional=True)
    none = separate_reference_attention(attn, h, kv, enabled, zeros_unconditional=False)
    # the original: attention over a real bank, and over a bank of zeros for the unconditional rows
    full = attn(h, torch.cat([torch.zeros(2, 5, 8), bank.expand(2, -1, -1)]))
    torch.testing.assert_close(zeros, full)
    torch.testing.assert_close(none[2:], full[2:])
    assert torch.count_nonzero(none[:2]) == 0 and torch.count_nonzero(attn.to_out[0].bias) > 0
