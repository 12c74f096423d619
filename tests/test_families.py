"""emo_model/families: one module per family; generic code names none of them."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from emo_model import families
from emo_model.configs import EMOConfig
from emo_model.families import CONFIGS, FAMILIES, Family, get_config, get_family, quoted_presets, upgrade_config_dict
from emo_model.families.hallo import tiny_hallo_config
from emo_model.network.model import EMOModel
from emo_model.weights.checkpoints import inspect_checkpoint
from emo_model.weights.files import WeightsError

ROOT = Path(__file__).resolve().parents[1]


def _family_words() -> set[str]:
    """The names a reader would grep for: every family but the paper's own (EMO is the project's name too),
    plus the families announced next, so that their code cannot leak into generic modules either."""
    words = {fam.name.split("-")[0].lower() for fam in FAMILIES if fam.name != "emo"}
    return words | {"hallo", "echomimic", "memo", "vexpress", "v-express"}


def _pattern() -> re.Pattern:
    """A family word not followed by a letter (so ``hallo2`` and ``echomimic_v1`` match, ``memory`` does not)."""
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(_family_words())) + r")(?![a-z])", re.IGNORECASE)


def _generic_files() -> list[Path]:
    files = [p for p in (ROOT / "emo_model").rglob("*.py") if "families" not in p.relative_to(ROOT / "emo_model").parts]
    return sorted(files + list((ROOT / "nodes").rglob("*.py")) + list((ROOT / "web").rglob("*.js")))


def test_no_family_is_named_in_generic_code():
    pattern = _pattern()
    found = []
    for path in _generic_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not found, "family names outside emo_model/families/:\n" + "\n".join(found)


def test_the_grep_finds_a_family_name_where_one_is():
    pattern = _pattern()
    assert pattern.search("load Hallo's net.pth") and pattern.search("echomimic_v1") and pattern.search("hallo2/")
    assert pattern.search("MEMO's audio") and not pattern.search("memory") and not pattern.search("memo_ry".replace("_", ""))


def test_every_family_module_is_registered_and_names_its_configs():
    modules = {p.stem for p in (ROOT / "emo_model" / "families").glob("*.py")} - {"__init__", "base"}
    assert modules == set(families.MODULES)
    names = [name for fam in FAMILIES for name in fam.configs]
    assert len(names) == len(set(names)) == len(CONFIGS)
    for fam in FAMILIES:
        assert isinstance(fam, Family) and fam.label and fam.files
        for name in fam.configs:
            config = get_config(name)
            assert config.name.startswith(name.removesuffix("-acc")) and config.family == fam.name, name
        assert get_family(fam.name) is fam
        if fam.original is not None:
            assert re.fullmatch(r"[0-9a-f]{40}", fam.original.commit), fam.name
    with pytest.raises(KeyError, match="unknown config 'sdxl'; choose one of"):
        get_config("sdxl")


def test_native_files_written_before_the_rename_still_load():
    current = get_config("tiny-hallo").to_dict()
    old = json.loads(json.dumps(current))
    old["backbone"]["hallo_audio_modules"] = old["backbone"].pop("region_audio_modules")
    with pytest.raises(ValueError, match="unknown keys"):
        EMOConfig.from_dict(json.loads(json.dumps(old)))
    assert EMOConfig.from_dict(upgrade_config_dict(old)) == get_config("tiny-hallo")


def test_preset_tooltips_quote_every_family():
    fps = quoted_presets(lambda c: c.preset.fps)
    for fam in FAMILIES:
        for name, label in fam.quoted_configs.items():
            value = get_config(name).preset.fps
            assert f"{label} {value:g}" in fps or label not in fps.split(", ")[0]
    assert "Hallo 25" in fps and "EchoMimic 24" in fps and "EMO 30" in fps
    windowed = quoted_presets(lambda c: "x" if c.preset.strategy == "context_windows" else None, values=False).split(", ")
    assert {"EchoMimic v1", "EchoMimic v2"} <= set(windowed) and not {"Hallo", "EMO", "MEMO"} & set(windowed)


# ---- a family that runs another family's network (found by folder name or named explicitly) -------------------


@pytest.fixture
def twin(monkeypatch):
    """A registered family 'twin' whose tiny config is tiny-hallo's network with another preset."""
    preset = dataclasses.replace(get_config("tiny-hallo").preset, steps=7)
    fam = Family(
        name="twin",
        label="Twin",
        configs={"tiny-twin": lambda: tiny_hallo_config(name="tiny-twin", family="twin", preset=preset)},
        files="a twin net.pth",
        folder_names=("twin",),
    )
    original = families._families()
    monkeypatch.setattr(families, "_families", lambda: (*original, fam))
    families._Configs._all.cache_clear()
    yield fam
    families._Configs._all.cache_clear()


def _net(path: Path) -> Path:
    torch.manual_seed(0)
    model = EMOModel(get_config("tiny-hallo"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def test_a_folder_name_claims_a_shared_network(tmp_path, twin):
    plain = inspect_checkpoint(_net(tmp_path / "models" / "net.pth"))
    assert plain.family == "hallo" and plain.config == get_config("tiny-hallo")
    claimed = inspect_checkpoint(_net(tmp_path / "twin" / "net.pth"))
    assert claimed.family == "twin" and claimed.config.preset.steps == 7 and claimed.complete
    explicit = inspect_checkpoint(tmp_path / "models" / "net.pth", family="twin")
    assert explicit.config == claimed.config
    assert inspect_checkpoint(tmp_path / "twin" / "net.pth", family="hallo").family == "hallo"


def test_an_explicit_family_that_does_not_run_the_network_is_one_line(tmp_path, twin):
    net = _net(tmp_path / "net.pth")
    with pytest.raises(WeightsError, match=r"net.pth holds a Hallo network, which EchoMimic v1 does not run") as err:
        inspect_checkpoint(net, family="echomimic-v1")
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsError, match="unknown family 'nope'"):
        inspect_checkpoint(net, family="nope")


def test_generate_and_the_session_take_the_family(tmp_path, twin, capsys):
    from comfy_harness import write_portrait, write_speech
    from conftest import tiny_vae

    from emo_model.app.cli import main
    from emo_model.app.session import Session

    net = _net(tmp_path / "models" / "net.pth")
    vae = tmp_path / "vae"
    tiny_vae().save_pretrained(vae)
    assert Session.load(net, vae=vae, family="twin").config.family == "twin"
    assert Session.load(net, vae=vae).config.family == "hallo"
    # a native file names its own family: asking for another is one line, nothing written
    native = tmp_path / "tiny.safetensors"
    from emo_model.weights.native import save_native

    save_native(EMOModel(get_config("tiny")), native)
    out = tmp_path / "never.mp4"
    rc = main(["generate", "--model", str(native), "--family", "echomimic-v1", "--image", str(write_portrait(tmp_path / "f.png", size=96)),
               "--audio", str(write_speech(tmp_path / "s.wav", seconds=0.2)), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "tiny.safetensors: EMO weights, not EchoMimic v1's; leave the family choice on auto" in err, err
    assert "Traceback" not in err and not out.exists()
