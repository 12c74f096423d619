"""Checkpoint loading: full-size layouts on the meta device, every on-disk format with real bytes on the
tiny configs, unsafe and bad files, training initialisation (SD1.5, AnimateDiff, VAE), the CLI."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_harness import echomimic_parts
from conftest import perturb_zero_inits
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors import safe_open
from safetensors.torch import save_file

from emo_model.app.cli import main
from emo_model.configs import EMOConfig
from emo_model.families import CONFIGS, get_config
from emo_model.network import identity
from emo_model.network.model import Conditioning, EMOModel
from emo_model.weights.checkpoints import inspect_checkpoint, load_emo_model
from emo_model.weights.training_init import MODEL_CONFIGS
from emo_model.weights.vae_files import load_bundled_vae, load_vae
from emo_model.weights.training_init import load_animatediff_motion_module, load_sd15_unet_weights
from emo_model.weights.shapes import model_shapes
from emo_model.weights.native import save_native
from emo_model.weights.files import TensorFile, WeightsError, read_state_dict

ECHOMIMIC_LAYOUTS = {
    "denoising_unet": "echomimic_denoising_unet.json",
    "motion_module": "echomimic_motion_module.json",
    "reference_unet": "echomimic_reference_unet.json",
    "face_locator": "echomimic_face_locator.json",
}


def _meta_file(layouts_dir: Path, layout: str, name: str) -> TensorFile:
    """A full-size checkpoint with exactly the layout's keys and shapes, as meta tensors (no memory)."""
    tensors = json.loads((layouts_dir / layout).read_text())["tensors"]
    return TensorFile(Path(name), {k: torch.empty(v["shape"], device="meta") for k, v in tensors.items()})


def _tiny(name: str, seed: int = 0) -> EMOModel:
    torch.manual_seed(seed)
    return perturb_zero_inits(EMOModel(name).eval(), seed=seed)


@torch.no_grad()
def _forward(model: EMOModel, frames: int = 4, seed: int = 1) -> torch.Tensor:
    """One denoiser call with every condition of the model's family (inputs in fp32; the model casts)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    size, res, c = cfg.preset.resolution // cfg.vae_scale_factor, cfg.preset.resolution, cfg.latent_channels
    sample = torch.randn(1, c, frames, size, size, generator=g)
    ref = torch.randn(1, c, size, size, generator=g)
    motion = torch.randn(1, 2, c, size, size, generator=g)
    a = cfg.audio
    if cfg.audio_proj is not None:
        feats = torch.randn(frames, a.window, a.layers, a.dim, generator=g)
    else:
        feats = torch.randn(frames, (a.whisper_window[1] - a.whisper_window[0]) * a.layers, a.dim, generator=g)
    mask = torch.zeros(1, res, res)
    mask[:, res // 4 : 3 * res // 4, res // 4 : 3 * res // 4] = 1
    embedding = torch.randn(1, cfg.image_proj.embed_dim, generator=g) if cfg.image_proj is not None else None
    ident = model.identity_tokens(embedding)
    bank = model.encode_reference(ref, ident)
    bank.motion = model.encode_motion(motion, ident)
    cond = Conditioning(
        reference=bank,
        audio_tokens=model.audio_tokens(feats),
        identity_tokens=ident,
        face_features=model.face_features(mask),
        region_masks=torch.stack([1 - mask, mask * 0.7, mask * 0.3], 1) if cfg.backbone.region_audio_modules else None,
        speed_tokens=model.speed_tokens(torch.full((1, 2 + frames), 0.7)),
    )
    return model(sample, 500, cond).float()


def _save_hallo_net(model: EMOModel, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Hallo's net.pth: torch.save of the prefixed state dict, all tensors in one dtype."""
    torch.save({k: v.to(dtype) for k, v in model.state_dict().items()}, path)
    return path


ECHOMIMIC_NAMES = {r: f"{r}.pth" for r in ("denoising_unet", "motion_module", "reference_unet", "face_locator")}


# --------------------------------------------------------------------------------------------------
# Full-size layouts (meta tensors through the same detection and assignment code as real files)


def test_hallo_net_pth_layout_is_consumed_completely(layouts_dir):
    net = _meta_file(layouts_dir, "hallo_net.json", "net.pth")
    ckpt = inspect_checkpoint(net)
    assert (ckpt.format, ckpt.family, ckpt.config.name, ckpt.variant) == ("state-dict", "hallo", "hallo", "standard")
    assert ckpt.complete and ckpt.problem() is None
    assert set(ckpt.sources) == set(net.tensors)  # every tensor of the file is used
    model = ckpt.load(device="meta")
    assert model.config == get_config("hallo")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in net.tensors.items()}


def test_full_size_net_pth_in_a_hallo2_folder_or_chosen_is_hallo2(layouts_dir):
    """Hallo2's published net.pth has Hallo's layout: its folder (or an explicit choice) names the family."""
    in_folder = inspect_checkpoint(_meta_file(layouts_dir, "hallo_net.json", "hallo2/net.pth"))
    chosen = inspect_checkpoint(_meta_file(layouts_dir, "hallo_net.json", "net.pth"), family="hallo2")
    for ckpt in (in_folder, chosen):
        assert (ckpt.format, ckpt.family, ckpt.config.name) == ("state-dict", "hallo2", "hallo2") and ckpt.complete
        assert ckpt.config == get_config("hallo2") and ckpt.config.preset.quirks.audio_segment_seconds == 60.0
        assert ckpt.load(device="meta").config == get_config("hallo2")


def test_echomimic_files_are_consumed_completely_roles_from_keys(layouts_dir):
    # neutral names: each file's part must come from its keys
    files = [_meta_file(layouts_dir, layout, f"part{i}.pth") for i, layout in enumerate(ECHOMIMIC_LAYOUTS.values())]
    ckpt = inspect_checkpoint(files[::-1])
    assert (ckpt.format, ckpt.config.name, ckpt.variant) == ("echomimic-v1", "echomimic-v1", "standard")
    assert {role: f.name for role, f in ckpt.files.items()} == {r: f"part{i}.pth" for i, r in enumerate(ECHOMIMIC_LAYOUTS)}
    assert ckpt.complete
    used = {(id(f), k) for f, k in ckpt.sources.values()}
    assert used == {(id(f), k) for f in files for k in f.tensors}  # every tensor of every file
    model = ckpt.load(device="meta")
    assert len(model.state_dict()) == sum(len(f.tensors) for f in files) == 1860


def test_echomimic_acc_files_get_the_acc_preset(layouts_dir):
    files = [_meta_file(layouts_dir, layout, f"{role}.pth") for role, layout in ECHOMIMIC_LAYOUTS.items()]
    acc = [_meta_file(layouts_dir, ECHOMIMIC_LAYOUTS[r], f"{r}_acc.pth") for r in ("denoising_unet", "motion_module")]
    standard = inspect_checkpoint(files + acc)
    assert standard.config == get_config("echomimic-v1")
    assert {f.name for f in standard.files.values()} == {f.name for f in files}
    chosen = inspect_checkpoint(files + acc, variant="acc")
    assert chosen.config == get_config("echomimic-v1-acc")  # 6 steps, cfg 1.0
    assert chosen.files["denoising_unet"].name == "denoising_unet_acc.pth" and chosen.complete
    only_acc = inspect_checkpoint(files[2:] + acc)  # default variant, but only _acc files: use them
    assert only_acc.variant == "acc" and only_acc.config.preset.steps == 6


def test_animatediff_v2_layout_fills_every_motion_module_of_emo(layouts_dir):
    with torch.device("meta"):
        model = EMOModel("emo")
    mm = _meta_file(layouts_dir, "animatediff_mm_sd_v15_v2.json", "mm_sd_v15_v2.ckpt")
    report = load_animatediff_motion_module(model, mm)
    assert len(report.loaded) == len(mm.tensors) == 588
    speed = {k for k in model.state_dict() if ".speed_" in k}
    assert len(speed) > 0 and set(report.uninitialised) == speed  # only EMO's own speed layers


@pytest.mark.parametrize(
    "config, dropped_reference, dropped_denoising",
    [
        ("hallo", 4, 0),  # ReferenceNet without output head
        ("emo", 16 * 7 + 4, 0),  # ReferenceNet without cross-attention (attn2 5 + norm2 2 per block) or head
        ("echomimic-v1", 16 * 7 + 4, 16 * 2),  # + attn2.to_k/to_v of a 384-wide backbone
    ],
)
@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
def test_sd15_unet_initialises_full_size_models(config, dropped_reference, dropped_denoising, layout):
    sd15 = json.loads((MODEL_CONFIGS / "sd15-unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd15)
        model = EMOModel(config)
    tensors = unet.state_dict()
    if layout == "ldm":  # v1-5-pruned-emaonly.safetensors: converted with the shipped config
        tensors = _unet_to_ldm(tensors, 2, (True, True, True, False))
    source = TensorFile(Path("v1-5.safetensors"), tensors)
    assert len(source.tensors) == 686
    report = load_sd15_unet_weights(model, source)
    dropped = [k.split(".", 1)[0] for k in report.dropped]
    assert (dropped.count("reference_unet"), dropped.count("denoising_unet")) == (dropped_reference, dropped_denoising)
    assert len(report.loaded) + len(report.dropped) == 2 * 686
    for key in report.uninitialised:  # new layers, other modules, and the attn2 inputs of another width
        assert (
            not key.startswith(("reference_unet.", "denoising_unet."))
            or ".motion_modules." in key
            or ".audio_modules." in key
            or key in report.dropped
        ), key


def test_shipped_configs_describe_sd15_and_its_vae(layouts_dir):
    sd15 = json.loads((MODEL_CONFIGS / "sd15-unet" / "config.json").read_text())
    vae_config = json.loads((MODEL_CONFIGS / "sd-vae-ft-mse" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd15)
        vae = AutoencoderKL.from_config(vae_config)
    hallo_reference = json.loads((layouts_dir / "hallo_reference_unet.json").read_text())["tensors"]
    shapes = {k: list(v.shape) for k, v in unet.state_dict().items() if not k.startswith(("conv_norm_out", "conv_out"))}
    assert shapes == {k: v["shape"] for k, v in hallo_reference.items()}  # Hallo's ReferenceNet = SD1.5 minus the head
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863  # sd-vae-ft-mse
    assert vae.config.scaling_factor == 0.18215 and vae.config.latent_channels == 4


def test_named_configs_have_distinct_layouts_except_presets():
    """Detection picks a config by its key/shape set; two configs with the same set must differ only in preset:
    a variant of the same family, or a family that runs another family's network and is chosen by its folder."""
    from emo_model.families import get_family

    seen: dict[tuple, str] = {}
    for name in CONFIGS:
        config = get_config(name)
        layout = tuple(sorted(model_shapes(config).items()))
        if layout in seen:
            first = get_config(seen[layout])
            network = lambda c: dataclasses.replace(c, name="", family="", preset=None)  # noqa: E731
            assert network(first) == network(config), (seen[layout], name)
            assert (config.family == first.family and name == seen[layout] + "-acc") or (  # a variant: EchoMimic v1 / v2 acc
                config.family != first.family and get_family(config.family).folder_names
            ), (seen[layout], name)
        else:
            seen[layout] = name


def test_full_size_sdxl_unet_is_not_a_supported_family():
    with torch.device("meta"):
        sdxl = UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
    with pytest.raises(WeightsError, match="not a checkpoint of a supported family.*SDXL"):
        inspect_checkpoint(TensorFile(Path("sd_xl_unet.safetensors"), sdxl.state_dict()))


# --------------------------------------------------------------------------------------------------
# Every on-disk format, real bytes, tiny configs


@pytest.fixture(scope="module")
def tiny_hallo():
    model = _tiny("tiny-hallo")
    return model, _forward(model)


def test_hallo_net_pth_fp32_loads_to_identical_outputs(tmp_path, tiny_hallo):
    source, expected = tiny_hallo
    model = load_emo_model(_save_hallo_net(source, tmp_path / "net.pth"))
    assert model.config == get_config("tiny-hallo") and model.dtype == torch.float32 and not model.training
    assert torch.equal(_forward(model), expected)


def test_hallo_net_pth_fp16_stays_fp16_and_matches_the_fp16_model(tmp_path, tiny_hallo):
    source, _ = tiny_hallo
    model = load_emo_model(_save_hallo_net(source, tmp_path / "net.pth", torch.float16))
    assert {p.dtype for p in model.state_dict().values()} == {torch.float16}
    half = _tiny("tiny-hallo").half()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), half.state_dict().values()))
    assert torch.equal(_forward(model), _forward(half))
    as_fp32 = load_emo_model(tmp_path / "net.pth", dtype=torch.float32)
    assert torch.equal(_forward(as_fp32), _forward(half.float()))


def test_echomimic_folder_loads_to_identical_outputs(tmp_path):
    source = _tiny("tiny-echomimic")
    names = dict(zip(ECHOMIMIC_NAMES, ("w1.pth", "w2.pth", "w3.pth", "w4.pth")))  # roles come from keys
    echomimic_parts(source, tmp_path / "weights", names)
    (tmp_path / "weights" / "notes.txt").write_text("not a checkpoint")
    model = load_emo_model(tmp_path / "weights")
    assert model.config == get_config("tiny-echomimic")
    assert torch.equal(_forward(model), _forward(source))


def test_echomimic_acc_variant_is_picked_by_argument(tmp_path):
    standard, acc = _tiny("tiny-echomimic", seed=0), _tiny("tiny-echomimic", seed=1)
    folder = tmp_path / "pretrained_weights"
    echomimic_parts(standard, folder, ECHOMIMIC_NAMES)
    echomimic_parts(acc, folder, {"denoising_unet": "denoising_unet_acc.pth", "motion_module": "motion_module_acc.pth"})
    echomimic_parts(acc, folder, {"denoising_unet": "denoising_unet_pose.pth"})  # pose-driven: ignored

    default = load_emo_model(folder)
    assert default.config.name == "tiny-echomimic" and default.config.preset.steps == 4
    assert torch.equal(_forward(default), _forward(standard))

    fast = load_emo_model(folder, variant="acc")
    assert fast.config.name == "tiny-echomimic-acc"
    assert (fast.config.preset.steps, fast.config.preset.cfg, fast.config.preset.audio_cfg) == (6, 1.0, 1.0)
    hybrid = _tiny("tiny-echomimic", seed=0)  # acc denoising + motion, standard reference net + face locator
    hybrid.denoising_unet.load_state_dict(acc.denoising_unet.state_dict())
    assert torch.equal(_forward(fast), _forward(hybrid))
    assert not torch.equal(_forward(fast), _forward(standard))


def test_native_round_trip(tmp_path):
    source = _tiny("tiny")
    path = save_native(source, tmp_path / "tiny.safetensors", metadata={"emo_source": "test"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["emo_format_version"] == "1" and meta["emo_preset"] == "tiny" and meta["emo_source"] == "test"
    assert EMOConfig.from_json(meta["emo_config"]) == get_config("tiny")
    ckpt = inspect_checkpoint(path)
    assert ckpt.format == "native" and ckpt.complete
    model = load_emo_model(path)
    assert model.config == source.config
    assert torch.equal(_forward(model), _forward(source))
    with pytest.raises(ValueError, match="reserved"):
        save_native(source, tmp_path / "x.safetensors", metadata={"emo_config": "{}"})


def test_native_file_can_carry_its_vae(tmp_path, tiny_vae, tiny_hallo, capsys):
    vae, latents, decoded = tiny_vae
    source = _tiny("tiny")
    path = save_native(source, tmp_path / "demo.safetensors", vae=vae)
    model = load_emo_model(path)  # the VAE tensors are not model tensors, and not unexpected ones either
    assert torch.equal(_forward(model), _forward(source))
    with torch.no_grad():
        assert torch.equal(load_bundled_vae(path).decode(latents).sample, decoded)
    assert main(["inspect", str(path)]) == 0 and "bundled" in capsys.readouterr().out
    assert main(["convert", str(path), "--out", str(tmp_path / "bf16.safetensors"), "--dtype", "bf16"]) == 0
    assert load_bundled_vae(tmp_path / "bf16.safetensors").dtype == torch.bfloat16  # carried over, converted
    assert load_bundled_vae(_save_hallo_net(tiny_hallo[0], tmp_path / "net.pth")) is None
    assert load_bundled_vae(save_native(source, tmp_path / "plain.safetensors")) is None


def test_native_file_of_a_newer_format_version_is_refused(tmp_path):
    source = _tiny("tiny")
    tensors = {k: v.contiguous() for k, v in source.state_dict().items()}
    meta = {"emo_format_version": "2", "emo_config": source.config.to_json(), "emo_preset": "tiny"}
    save_file(tensors, tmp_path / "future.safetensors", metadata=meta)
    with pytest.raises(WeightsError, match="newer"):
        load_emo_model(tmp_path / "future.safetensors")


def test_convert_cli_hallo_to_native(tmp_path, tiny_hallo, capsys):
    source, expected = tiny_hallo
    net = _save_hallo_net(source, tmp_path / "net.pth")
    out = tmp_path / "hallo.safetensors"
    assert main(["convert", str(net), "--out", str(out)]) == 0
    assert "tiny-hallo" in capsys.readouterr().out
    assert torch.equal(_forward(load_emo_model(out)), expected)

    assert main(["convert", str(net), "--out", str(out)]) == 1  # no silent overwrite
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(net), "--out", str(out), "--dtype", "fp16", "--force"]) == 0
    assert {str(t.dtype) for t in read_state_dict(out).values()} == {"torch.float16"}
    close = _forward(load_emo_model(out, dtype=torch.float32))
    assert (close - expected).abs().max() / expected.abs().max() < 1e-2
    assert not torch.equal(close, expected)  # really went through fp16


def test_inspect_cli(tmp_path, tiny_hallo, capsys):
    net = _save_hallo_net(tiny_hallo[0], tmp_path / "net.pth")
    assert main(["inspect", str(net)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"family\s+hallo", out) and re.search(r"config\s+tiny-hallo", out) and "complete" in out
    assert "float32" in out and f"{len(tiny_hallo[0].state_dict())}" in out

    partial = {k: v for k, v in tiny_hallo[0].state_dict().items() if not k.startswith("audioproj.")}
    torch.save(partial, tmp_path / "partial.pth")
    assert main(["inspect", str(tmp_path / "partial.pth")]) == 1
    assert re.search(r"missing audioproj", capsys.readouterr().out)


def test_cli_bad_input_is_one_line_error(tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    for argv in (
        ["inspect", str(tmp_path / "junk.safetensors")],
        ["inspect", str(tmp_path / "absent.pth")],
        ["convert", str(tmp_path / "junk.safetensors"), "--out", str(tmp_path / "o.safetensors")],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# Unsafe and bad files


class _Payload:
    """Pickles to a call of exec(): loading it with a full unpickler runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_pickle_that_carries_code_is_refused_without_running_it(tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    pickle.loads(pickle.dumps(_Payload(live / "ran")))  # the payload is real: a full unpickler runs it
    assert (live / "ran").exists()

    marker = tmp_path / "marker"
    torch.save({"conv_in.weight": torch.zeros(1), "x": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="execute code.*safetensors"):
        load_emo_model(tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="execute code"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_wrappers_are_unwrapped(tmp_path):
    tensors = {"a": torch.ones(2)}
    torch.save({"state_dict": tensors, "global_step": 7}, tmp_path / "a.ckpt")
    torch.save({"module": tensors}, tmp_path / "b.pt")
    assert read_state_dict(tmp_path / "a.ckpt").keys() == read_state_dict(tmp_path / "b.pt").keys() == {"a"}
    torch.save({"a": torch.ones(2), "step": 3}, tmp_path / "c.pth")
    with pytest.raises(WeightsError, match="not a state dict"):
        read_state_dict(tmp_path / "c.pth")


def test_sdxl_like_unet_is_not_a_supported_family(tmp_path):
    sdxl = {
        "conv_in.weight": torch.zeros(320, 4, 3, 3),
        "time_embedding.linear_1.weight": torch.zeros(1280, 320),
        "add_embedding.linear_1.weight": torch.zeros(1280, 2816, dtype=torch.float16),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640, 2048, dtype=torch.float16),
        "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight": torch.zeros(640, 2048, dtype=torch.float16),
        "down_blocks.2.attentions.0.transformer_blocks.9.attn1.to_q.weight": torch.zeros(1280, 1280, dtype=torch.float16),
        "conv_out.weight": torch.zeros(4, 320, 3, 3),
    }
    save_file(sdxl, tmp_path / "sdxl_unet.safetensors")
    with pytest.raises(WeightsError, match=r"sdxl_unet.safetensors: not a checkpoint of a supported family.*SDXL"):
        load_emo_model(tmp_path / "sdxl_unet.safetensors")


def test_truncated_safetensors_names_the_file(tmp_path):
    path = save_native(_tiny("tiny"), tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"model\.safetensors.*truncated"):
        load_emo_model(path)


def test_motion_module_alone_names_the_four_echomimic_files(tmp_path):
    echomimic_parts(_tiny("tiny-echomimic"), tmp_path, {"motion_module": "motion_module.pth"})
    expected = (
        "EchoMimic v1 needs denoising_unet.pth, motion_module.pth, reference_unet.pth and face_locator.pth "
        "in one folder; found only motion_module.pth"
    )
    with pytest.raises(WeightsError, match=re.escape(expected)):
        load_emo_model(tmp_path / "motion_module.pth")
    with pytest.raises(WeightsError, match=re.escape(expected)):
        load_emo_model(tmp_path)


def test_hallo_net_without_audioproj_names_the_missing_module(tmp_path, tiny_hallo):
    partial = {k: v for k, v in tiny_hallo[0].state_dict().items() if not k.startswith("audioproj.")}
    torch.save(partial, tmp_path / "net.pth")
    with pytest.raises(WeightsError, match=r"net\.pth does not match the tiny-hallo layout.*missing audioproj: 8 tensors"):
        load_emo_model(tmp_path / "net.pth")


def test_mis_shaped_tensor_is_reported_with_both_shapes(tmp_path, tiny_hallo):
    sd = dict(tiny_hallo[0].state_dict())
    sd["face_locator.conv_in.weight"] = torch.zeros(8, 1, 3, 3)
    torch.save(sd, tmp_path / "net.pth")
    with pytest.raises(
        WeightsError, match=r"wrong shape face_locator: 1 tensor \(face_locator.conv_in.weight \[8, 1, 3, 3\] in the file"
    ):
        load_emo_model(tmp_path / "net.pth")


# --------------------------------------------------------------------------------------------------
# Training initialisation: SD1.5 UNet, AnimateDiff, VAE

RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _resnet_to_ldm(rest: str) -> str:
    head, tail = rest.split(".", 1)
    return f"{RESNET_TO_LDM[head]}.{tail}"


def _unet_to_ldm(
    sd: dict[str, torch.Tensor], layers_per_block: int, attention_levels: tuple[bool, ...]
) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> the original LDM names (the inverse of diffusers' converter)."""
    top = {v: k for v, k in DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"].items()}
    n, up_attention = layers_per_block + 1, attention_levels[::-1]
    rules = [
        (
            r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
            lambda b, l, r: f"input_blocks.{1 + int(b) * n + int(l)}.0.{_resnet_to_ldm(r)}",
        ),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda b, l, r: f"input_blocks.{1 + int(b) * n + int(l)}.1.{r}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", lambda b, r: f"input_blocks.{(int(b) + 1) * n}.0.op.{r}"),
        (r"mid_block\.resnets\.(\d)\.(.+)", lambda i, r: f"middle_block.{2 * int(i)}.{_resnet_to_ldm(r)}"),
        (r"mid_block\.attentions\.0\.(.+)", lambda r: f"middle_block.1.{r}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda b, l, r: f"output_blocks.{int(b) * n + int(l)}.0.{_resnet_to_ldm(r)}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda b, l, r: f"output_blocks.{int(b) * n + int(l)}.1.{r}"),
        (
            r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)",
            lambda b, r: f"output_blocks.{int(b) * n + n - 1}.{2 if up_attention[int(b)] else 1}.conv.{r}",
        ),
    ]
    out = {}
    for key, tensor in sd.items():
        if key in top:
            out["model.diffusion_model." + top[key]] = tensor
            continue
        for pattern, rename in rules:
            match = re.fullmatch(pattern, key)
            if match:
                out["model.diffusion_model." + rename(*match.groups())] = tensor
                break
        else:
            raise AssertionError(f"no LDM name for {key}")
    return out


@pytest.fixture(scope="module")
def tiny_sd15():
    """An SD1.5-shaped diffusers UNet at the tiny configs' widths, cross-attention 64 wide, random weights."""
    torch.manual_seed(3)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        attention_head_dim=2,
        norm_num_groups=8,
        cross_attention_dim=64,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    return {k: v.clone() for k, v in unet.state_dict().items()}, unet


@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
@pytest.mark.parametrize("config", ["tiny", "tiny-echomimic", "tiny-hallo"])
def test_sd15_unet_initialises_both_unets(tmp_path, tiny_sd15, layout, config):
    weights, unet = tiny_sd15
    if layout == "diffusers":
        unet.save_pretrained(tmp_path / "sd15" / "unet")
        path = tmp_path / "sd15"  # the pipeline folder holding unet/
    else:
        ldm = _unet_to_ldm(weights, 1, (True, True, True, False))
        ldm["first_stage_model.encoder.conv_in.weight"] = torch.zeros(8, 3, 3, 3)  # the rest of a full SD file
        ldm["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.zeros(8)
        save_file(ldm, tmp_path / "sd15-tiny.safetensors")
        path = tmp_path / "sd15-tiny.safetensors"
    model = EMOModel(config)
    report = load_sd15_unet_weights(model, path)
    sd = model.state_dict()
    for key in report.loaded:
        assert torch.equal(sd[key], weights[key.split(".", 1)[1]]), key
    cross = {"tiny": (None, 64), "tiny-echomimic": (None, 384), "tiny-hallo": (32, 32)}[config]
    for prefix, width in zip(("reference_unet", "denoising_unet"), cross):
        dropped = {k.split(".", 1)[1] for k in report.dropped if k.startswith(prefix + ".")}
        expected = set()
        if width is None:
            expected |= {k for k in weights if ".attn2." in k or (".transformer_blocks." in k and ".norm2." in k)}
        elif width != 64:
            expected |= {k for k in weights if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}
        if prefix == "reference_unet":
            expected |= {k for k in weights if k.startswith(("conv_norm_out.", "conv_out."))}
        assert dropped == expected, prefix
        assert all(".resnets." not in k for k in dropped)  # resnet norm2 is not attention norm2
    groups = {k.split(".")[0] for k in report.uninitialised}
    assert "face_locator" in groups and any(".motion_modules." in k for k in report.uninitialised)
    assert {k for k in report.uninitialised if k.startswith("reference_unet.")} <= set(report.dropped)
    assert any(line.startswith("dropped reference_unet") for line in report.lines())


def test_sd15_unet_of_the_wrong_size_is_refused(tiny_sd15):
    with torch.device("meta"):
        full_size = EMOModel("hallo")
    expected = r"not an SD1.5 UNet that fits reference_unet of hallo: .*wrong shape reference_unet: \d+ tensors \(reference_unet.conv_in.weight \[32, 4, 3, 3\] in the file, \[320, 4, 3, 3\] in the model"
    with pytest.raises(WeightsError, match=expected):
        load_sd15_unet_weights(full_size, TensorFile(Path("tiny.safetensors"), tiny_sd15[0]))


def test_animatediff_motion_module_initialises_the_temporal_layers(tmp_path):
    source = _tiny("tiny-hallo")  # same temporal modules as tiny, without speed layers
    mm = {k.removeprefix("denoising_unet."): v for k, v in source.state_dict().items() if ".motion_modules." in k}
    torch.save({"state_dict": mm}, tmp_path / "mm_sd_v15_v2.ckpt")
    model = EMOModel("tiny")
    report = load_animatediff_motion_module(model, tmp_path / "mm_sd_v15_v2.ckpt")
    own = model.denoising_unet.state_dict()
    assert all(torch.equal(own[k], v) for k, v in mm.items())
    assert set(report.uninitialised) == {f"denoising_unet.{k}" for k in own if ".speed_" in k}

    no_pe = {k: v for k, v in mm.items() if not k.endswith("pos_encoder.pe")}  # diffusers-converted files omit it
    save_file(no_pe, tmp_path / "mm_no_pe.safetensors")
    report = load_animatediff_motion_module(EMOModel("tiny"), tmp_path / "mm_no_pe.safetensors")
    assert any(k.endswith("pos_encoder.pe") for k in report.uninitialised)

    v1 = {k: v for k, v in mm.items() if not k.startswith("mid_block.")}  # AnimateDiff v1 has no mid-block module
    torch.save(v1, tmp_path / "mm_sd_v15.ckpt")
    with pytest.raises(
        WeightsError, match=r"not an AnimateDiff v2 motion module.*missing denoising_unet\.mid_block\.motion_modules"
    ):
        load_animatediff_motion_module(EMOModel("tiny"), tmp_path / "mm_sd_v15.ckpt")


VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_to_ldm(sd: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> the original LDM names (the inverse of diffusers' converter)."""
    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out = {}
    for key, tensor in sd.items():
        if key in top:
            out[top[key]] = tensor
            continue
        side, rest = key.split(".", 1)
        if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", rest):
            kind, b, l, layer, leaf = m.groups()
            level = int(b) if kind == "down" else levels - 1 - int(b)
            name = f"{kind}.{level}.block.{l}.{VAE_RESNET.get(layer, layer)}.{leaf}"
        elif m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv\.(\w+)", rest):
            kind, b, _, leaf = m.groups()
            level = int(b) if kind == "down" else levels - 1 - int(b)
            name = f"{kind}.{level}.{kind}sample.conv.{leaf}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest):
            name = f"mid.block_{int(m.group(1)) + 1}.{m.group(2)}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
            name = f"mid.attn_1.{VAE_ATTENTION[m.group(1)]}.{m.group(2)}"
            if tensor.dim() == 2:  # LDM's attention projections are 1x1 convolutions
                tensor = tensor[:, :, None, None]
        else:
            raise AssertionError(f"no LDM name for {key}")
        out[f"{side}.{name}"] = tensor
    return out


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(5)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    ).eval()
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return vae, latents, vae.decode(latents).sample


@pytest.mark.parametrize("layout", ["diffusers", "diffusers-old-attention-names", "ldm", "ldm-in-sd-checkpoint"])
def test_vae_loads_to_identical_decode(tmp_path, tiny_vae, layout):
    vae, latents, expected = tiny_vae
    sd = vae.state_dict()
    if layout.startswith("diffusers"):
        vae.save_pretrained(tmp_path / "pipe" / "vae")
        path = tmp_path / "pipe"
        if layout.endswith("old-attention-names"):
            old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
            renamed = {}
            for k, v in sd.items():
                for new, name in old.items():
                    k = k.replace(f"attentions.0.{new}.", f"attentions.0.{name}.")
                renamed[k] = v
            save_file(renamed, tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.safetensors")
    else:
        ldm = _vae_to_ldm(sd, levels=2)
        if layout == "ldm":
            torch.save({"state_dict": {**ldm, "loss.logvar": torch.zeros(())}}, tmp_path / "vae-ft-mse.ckpt")
            path = tmp_path / "vae-ft-mse.ckpt"
        else:
            full = {f"first_stage_model.{k}": v for k, v in ldm.items()}
            full["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 4, 3, 3)
            save_file(full, tmp_path / "sd.safetensors")
            path = tmp_path / "sd.safetensors"
    loaded = load_vae(path)
    assert tuple(loaded.config.block_out_channels) == (32, 64)
    with torch.no_grad():
        assert torch.equal(loaded.decode(latents).sample, expected)


def test_full_size_ldm_vae_gets_the_shipped_config():
    shipped = json.loads((MODEL_CONFIGS / "sd-vae-ft-mse" / "config.json").read_text())
    with torch.device("meta"):
        reference = AutoencoderKL.from_config(shipped)
    ldm = _vae_to_ldm(reference.state_dict(), levels=4)
    assert len(ldm) == 248  # vae-ft-mse-840000-ema-pruned
    vae = load_vae(TensorFile(Path("vae-ft-mse-840000-ema-pruned.safetensors"), ldm), device="meta")
    assert {k: v for k, v in vae.config.items() if k in shipped} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in reference.config.items() if k in shipped
    }


def test_vae_errors_are_clear(tmp_path, tiny_hallo):
    _save_hallo_net(tiny_hallo[0], tmp_path / "net.pth")
    with pytest.raises(WeightsError, match="not a VAE"):
        load_vae(tmp_path / "net.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no config.json"):
        load_vae(tmp_path / "empty")


# --------------------------------------------------------------------------------------------------
# Hallo's identity embedding (insightface glue, with a stand-in for insightface)


def test_face_identity_embedding_without_insightface_or_its_files_is_none(tmp_path, monkeypatch):
    image = np.zeros((64, 64, 3), np.uint8)
    assert identity.face_identity_embedding(image, None) is None
    assert identity.face_identity_embedding(image, tmp_path) is None  # no model pack
    pack = tmp_path / "insightface" / "models" / "antelopev2"
    pack.mkdir(parents=True)
    (pack / "glintr100.onnx").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "insightface", None)  # not installed
    identity._face_analysis.cache_clear()
    assert identity.face_identity_embedding(image, tmp_path) is None
    identity._face_analysis.cache_clear()


def test_face_identity_embedding_takes_the_largest_face_of_the_bgr_image(tmp_path, monkeypatch):
    seen = {}

    class FaceAnalysis:
        def __init__(self, name, root, allowed_modules, providers):
            seen["dir"] = Path(root) / "models" / name
            self.models = {"detection": object(), "recognition": object()}

        def prepare(self, ctx_id, det_size):
            seen["ctx"] = ctx_id

        def get(self, bgr):
            seen["pixel"] = tuple(bgr[0, 0])
            return [
                {"bbox": np.array([0, 0, 10, 10]), "embedding": np.full(512, 1.0)},
                {"bbox": np.array([0, 0, 30, 20]), "embedding": np.full(512, 2.0)},
            ]

    app = types.ModuleType("insightface.app")
    app.FaceAnalysis = FaceAnalysis
    monkeypatch.setitem(sys.modules, "insightface", types.ModuleType("insightface"))
    monkeypatch.setitem(sys.modules, "insightface.app", app)
    pack = tmp_path / "face_analysis" / "models"  # Hallo's layout
    pack.mkdir(parents=True)
    (pack / "scrfd_10g_bnkps.onnx").write_bytes(b"")
    identity._face_analysis.cache_clear()
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    emb = identity.face_identity_embedding(image, tmp_path)
    identity._face_analysis.cache_clear()
    assert emb.dtype == torch.float32 and emb.shape == (512,) and bool((emb == 2.0).all())
    assert seen["dir"] == pack and seen["ctx"] == -1 and seen["pixel"] == (0, 0, 200)
