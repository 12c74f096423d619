"""MEMO's two new building blocks against the ORIGINAL code: the memory-guided linear-attention temporal module
(:mod:`emo_model.network.memory_temporal`) and the emotion-conditioned joint audio module
(:mod:`emo_model.network.emotion_audio_layers`).

The fixture (tests/parity/memo) was written by tools/parity/memo_original.py in MEMO's own venv (memoavatar/memo
at the commit in meta.json): MEMO's classes at a tiny size, weights from the counter-hash recipe of
tools/parity/common.py (regenerated here and checked against the recorded digests, then loaded into our modules
with strict key matching), the temporal module run over 3 clips x 2 denoising calls with MEMO's pipeline flags so
the memory is built, read and carried over, the audio modules with two emotion cases (fp32). Each output is judged
by the standard (tests/parity_floor.py): rel err <= max(1e-4, 3 x the original's own thread-count floor at that output,
from the fixture's floor.json; an output it does not cover fails).
The last tests show the comparison can fail: without the memory, or without the emotion, the outputs differ.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, parity_common, rel_err
from tests.parity_floor import load_floor, tolerance

FIX = ROOT / "tests" / "parity" / "memo"
META = json.loads((FIX / "meta.json").read_text())
FILE = "modules.safetensors"
VISIBLE = 100  # a deliberate mistake must move an output this many times past its tolerance


def _tol(name: str) -> float:
    return tolerance(FIX, name, FILE)


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(FIX / FILE)


def test_floor_covers_every_recorded_output(golden):
    """floor.json (tools/parity/floor.py: the original run with 2 threads and with 1) has a floor for every record."""
    missing = sorted(set(golden) - set(load_floor(FIX)["files"].get(FILE, {})))
    assert not missing, f"floor.json has no floor for {FILE}:{missing[:5]}: regenerate the fixture with tools/parity/floor.py"


def _weights(name: str) -> dict[str, torch.Tensor]:
    common = parity_common()
    w = META["weights"][name]
    state = common.hashed_state_dict([(k, s) for k, s in w["spec"]], w["seed"])
    assert common.digest(state) == w["digest"], f"{name}: regenerated weights differ from the ones MEMO ran with"
    return state


def _frames_first(x: torch.Tensor) -> torch.Tensor:
    """MEMO's [b, c, f, h, w] -> our [b*f, c, h, w]."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def _channels_first(x: torch.Tensor, b: int) -> torch.Tensor:
    bf, c, h, w = x.shape
    return x.reshape(b, bf // b, c, h, w).permute(0, 2, 1, 3, 4)


# ---- memory-guided temporal module ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def temporal():
    from emo_model.configs import TemporalConfig
    from emo_model.network.memory_temporal import MemoryTemporalModule

    t = META["temporal"]
    cfg = TemporalConfig(heads=t["heads"], num_blocks=t["blocks"], attention_blocks=2, max_len=t["max_len"])
    module = MemoryTemporalModule(t["channels"], cfg, decay=t["decay"])
    module.load_state_dict(_weights("temporal"), strict=True)
    return module.eval()


def _run_temporal(module, golden, memory_on: bool = True) -> dict[str, torch.Tensor]:
    t = META["temporal"]
    out, memory = {}, {}
    with torch.no_grad():
        for clip in range(t["clips"]):
            past = _frames_first(golden[f"temporal.clip{clip}.past"])
            for step in range(t["steps"]):
                x = _frames_first(golden[f"temporal.clip{clip}.step{step}.x"])
                # MEMO's flags: a new memory for the first clip, past frames folded in at each clip's first call
                y = module(x, t["frames"], past, memory if memory_on else {}, update_memory=step == 0 and memory_on)
                out[f"temporal.clip{clip}.step{step}.out"] = _channels_first(y, t["videos"])
    return out


def test_memory_temporal_matches_original(temporal, golden):
    ours = _run_temporal(temporal, golden)
    assert len(ours) == META["temporal"]["clips"] * META["temporal"]["steps"]
    for name, y in ours.items():
        mx, rel = rel_err(y, golden[name])
        assert rel <= _tol(name), f"{name}: rel err {rel:.2e} (max abs {mx:.2e}), allowed {_tol(name):.2e}"


def test_memory_state_is_per_attention_layer(temporal, golden):
    """The caller's dict holds one (KV, Z) per attention layer: 2 blocks x 2 attentions, batch = videos x tokens."""
    t = META["temporal"]
    memory = {}
    x = _frames_first(golden["temporal.clip0.step0.x"])
    past = _frames_first(golden["temporal.clip0.past"])
    with torch.no_grad():
        temporal(x, t["frames"], past, memory, update_memory=True)
    assert len(memory) == t["blocks"] * 2
    d = t["channels"] // t["heads"]
    for kv, z in memory.values():
        assert kv.shape == (t["videos"] * t["height"] * t["width"], t["heads"], d, d)
        assert z.shape == (t["videos"] * t["height"] * t["width"], t["heads"], 1, d)


def test_memory_temporal_fails_without_memory(temporal, golden):
    """Dropping the memory (no past frames folded in) must be caught by the comparison."""
    ours = _run_temporal(temporal, golden, memory_on=False)
    for name, y in ours.items():
        rel = rel_err(y, golden[name])[1]
        assert rel > VISIBLE * _tol(name), f"the comparison does not see the memory at {name} (rel err {rel:.2e})"


def test_memory_temporal_fails_without_carry_over(temporal, golden):
    """A memory reset at every clip (no carry-over of the older clips) is caught from the second clip on."""
    t = META["temporal"]
    with torch.no_grad():
        for clip in range(1, t["clips"]):
            memory = {}
            past = _frames_first(golden[f"temporal.clip{clip}.past"])
            x = _frames_first(golden[f"temporal.clip{clip}.step0.x"])
            y = _channels_first(temporal(x, t["frames"], past, memory, update_memory=True), t["videos"])
            rel = rel_err(y, golden[f"temporal.clip{clip}.step0.out"])[1]
            assert rel > 10 * _tol(f"temporal.clip{clip}.step0.out"), (
                f"clip {clip}: carry-over of the memory not visible (rel err {rel:.2e})")


# ---- emotion-conditioned joint audio modules --------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_modules():
    from emo_model.network.emotion_audio_layers import EmotionAudioModule

    a = META["audio"]
    width = a["heads"] * a["head_dim"]
    out = {}
    for name, last in (("audio_a", False), ("audio_b", True)):
        module = EmotionAudioModule(a["channels"], width, a["heads"], a["audio_dim"], 32, a["emotion_classes"], last=last)
        module.load_state_dict(_weights(name), strict=True)
        out[name] = module.eval()
    return out


def _run_audio(modules, golden, case: int, emotion: torch.Tensor | None = None):
    a = META["audio"]
    b = a["videos"]
    emotion = golden[f"audio.case{case}.emotion"].long() if emotion is None else emotion
    with torch.no_grad():
        ya, audio = modules["audio_a"](_frames_first(golden[f"audio.case{case}.a.x"]), golden["audio.tokens"], emotion)
        yb, none = modules["audio_b"](_frames_first(golden[f"audio.case{case}.b.x"]), audio, emotion)
    assert none is None
    return {
        f"audio.case{case}.a.out": _channels_first(ya, b),
        f"audio.case{case}.a.audio_out": audio,
        f"audio.case{case}.b.out": _channels_first(yb, b),
    }


@pytest.mark.parametrize("case", [0, 1])
def test_emotion_audio_matches_original(audio_modules, golden, case):
    for name, y in _run_audio(audio_modules, golden, case).items():
        mx, rel = rel_err(y, golden[name])
        assert rel <= _tol(name), f"{name}: rel err {rel:.2e} (max abs {mx:.2e}), allowed {_tol(name):.2e}"


def test_emotion_audio_fails_with_another_emotion(audio_modules, golden):
    """Case 0's inputs with case 1's emotion (and the null class for both branches): the comparison must fail."""
    for emotion in (golden["audio.case1.emotion"].long(), torch.tensor([9, 9])):
        ours = _run_audio(audio_modules, golden, 0, emotion=emotion)
        rel = rel_err(ours["audio.case0.a.out"], golden["audio.case0.a.out"])[1]
        assert rel > 10 * _tol("audio.case0.a.out"), (
            f"emotion {emotion.tolist()}: the modulation is not visible (rel err {rel:.2e})")


def test_emotion_audio_rejects_mismatched_rows(audio_modules, golden):
    x = _frames_first(golden["audio.case0.a.x"])
    with pytest.raises(ValueError, match="do not match"):
        audio_modules["audio_a"](x, golden["audio.tokens"][:, :2], torch.tensor([9, 4]))
