"""Guidance against a hand-derived oracle: every branch and every combination, in both sampling paths.

The denoiser is replaced by a tiny network with known outputs: its prediction for a batch row is a constant made
of one term per condition the row carries,

    out = C0 + C_REF * (reference-attention on) + C_FACE * (Face Locator features non-zero)
             + C_ID * (the portrait's identity tokens, not the neutral ones) + C_AUDIO * (audio non-zero)

so the three branches the pipeline documents (module docstring of ``emo_model.sampling.pipeline``: uncond = no reference,
no audio, no face, neutral identity; reference = portrait on, audio off; full = everything on) predict, by hand,

    U = C0,   R = C0 + C_REF + C_FACE + C_ID,   A = R + C_AUDIO,

(C_FACE / C_ID count only for a config with a Face Locator / identity tokens) and the guided prediction
``U + cfg (R - U) + audio_cfg (A - R)`` (EMO's separate reference / audio guidance) is

    C0 + cfg * (C_REF + C_FACE + C_ID) + audio_cfg * C_AUDIO.

That value, computed here from the formula and never from ``guidance_weights``, must be what the scheduler
receives on every step, with ``audio_cfg != cfg`` included, in the motion-frames (clip) path and the
context-window path, batched or one forward per branch. The forwards themselves are checked too: which
conditions each row carried, and that a branch with weight zero is not run at all.
"""

from __future__ import annotations

import pytest
import torch
from conftest import perturb_zero_inits, tiny_vae

from emo_model.network.model import EMOModel
from emo_model.network.vae import DiffusersVAE
from emo_model.sampling import pipeline as pipeline_module
from emo_model.sampling.pipeline import EMOPipeline
from emo_model.sampling.settings import SamplingSettings

C0, C_REF, C_FACE, C_ID, C_AUDIO = 0.125, 0.5, 0.0625, 0.25, 2.0  # binary fractions: the sums are exact in float32

# what each branch is fed, written out from the pipeline's documented contract (not read from the code)
BRANCH_INPUTS = {
    "uncond": {"reference": False, "face": False, "identity": False, "audio": False},
    "reference": {"reference": True, "face": True, "identity": True, "audio": False},
    "full": {"reference": True, "face": True, "identity": True, "audio": True},
}


def branch_inputs(branch: str, pipe) -> dict[str, bool]:
    """BRANCH_INPUTS as this config can carry them (no Face Locator / no identity tokens: always off)."""
    row = dict(BRANCH_INPUTS[branch])
    row["face"] &= pipe.model.face_locator is not None
    row["identity"] &= pipe.model.imageproj is not None
    return row


def expected_prediction(cfg: float, audio_cfg: float, pipe=None) -> float:
    face = C_FACE if pipe is None or pipe.model.face_locator is not None else 0.0
    ident = C_ID if pipe is None or pipe.model.imageproj is not None else 0.0
    u = C0
    r = C0 + C_REF + face + ident
    a = r + C_AUDIO
    return u + cfg * (r - u) + audio_cfg * (a - r)


class KnownNet:
    """Stands in for ``EMOModel.forward``: records the conditions of every row, returns the constants above."""

    def __init__(self, neutral_identity: torch.Tensor | None):
        self.neutral = neutral_identity
        self.rows: list[dict[str, bool]] = []

    def __call__(self, sample, timestep, cond):
        b = sample.shape[0]
        enabled = cond.reference_enabled if cond.reference_enabled is not None else torch.ones(b, dtype=torch.bool)
        out = torch.empty(b)

        def row(t, i):
            return t[i if t.shape[0] > 1 else 0]

        for i in range(b):
            face, ident = cond.face_features, cond.identity_tokens
            has_face = bool(face is not None and row(face, i).abs().sum() > 0)
            has_id = bool(ident is not None and not torch.allclose(row(ident, i), self.neutral[0]))
            has_audio = bool(row(cond.audio_tokens, i).abs().sum() > 0)
            has_ref = bool(enabled[i])
            self.rows.append({"reference": has_ref, "face": has_face, "identity": has_id, "audio": has_audio})
            out[i] = C0 + C_REF * has_ref + C_FACE * has_face + C_ID * has_id + C_AUDIO * has_audio
        return out.view(b, 1, 1, 1, 1).expand_as(sample).to(sample.dtype)


# every tiny config: plain EMO, region-masked audio + identity tokens with alternating identities, memory + emotion
# + a rectified-flow schedule
CONFIGS = ["tiny", "tiny-hallo2", "tiny-memo"]


@pytest.fixture(scope="module", params=CONFIGS)
def setup(request):
    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel(request.param).eval())  # "trained" Face Locator: its features are non-zero
    pipe = EMOPipeline(model, DiffusersVAE(tiny_vae()))
    g = torch.Generator().manual_seed(3)
    embedding = torch.randn(model.imageproj.cfg.embed_dim, generator=g) if model.imageproj is not None else None
    ref = pipe.encode_reference(torch.rand(64, 64, 3, generator=g), identity_embedding=embedding)
    return pipe, ref


def run_recorded(pipe, ref, monkeypatch, frames: int = 9, **kw):
    """Generate with the known net; returns (predictions handed to the scheduler, rows the net saw)."""
    net = KnownNet(pipe.model.identity_tokens(None))
    monkeypatch.setattr(pipe.model, "forward", net)
    seen: list[torch.Tensor] = []
    original_step = pipeline_module._Run._step

    def recording_step(self, pred, t, latents, generator):
        seen.append(pred.clone())
        return original_step(self, pred, t, latents, generator)

    monkeypatch.setattr(pipeline_module._Run, "_step", recording_step)
    # a face mask with a face region: the Face Locator's features are non-zero for the conditional branches
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    proj = pipe.model.audioproj.cfg  # every config here projects windows of audio-encoder features
    feats = torch.randn(frames, proj.seq_len, proj.blocks, proj.channels, generator=torch.Generator().manual_seed(1))
    settings = SamplingSettings.from_preset(pipe.config.preset, **{"steps": 2, **kw})
    regions = torch.stack([torch.ones(64, 64), mask, mask]) if pipe.config.backbone.region_audio_modules else None
    pipe.generate_frames(ref, feats, settings=settings, face_mask=mask, region_masks=regions)
    monkeypatch.undo()
    return seen, net.rows


# (cfg, audio_cfg) -> the branches that must be run (a branch whose weight is zero is not); batched into one forward,
# or one forward per branch (batch_guidance=False)
CASES = [
    pytest.param(1.0, 1.0, {"full"}, True, id="full-only"),
    pytest.param(3.5, 3.5, {"uncond", "full"}, True, id="classic-cfg"),
    pytest.param(1.0, 4.0, {"reference", "full"}, True, id="reference-and-full"),
    pytest.param(2.5, 4.0, {"uncond", "reference", "full"}, True, id="all-three-audio-above"),
    pytest.param(4.0, 1.5, {"uncond", "reference", "full"}, True, id="all-three-audio-below"),
    pytest.param(2.0, 1.0, {"uncond", "reference", "full"}, True, id="all-three-audio-at-one"),
    pytest.param(2.0, 0.0, {"uncond", "reference"}, True, id="uncond-and-reference"),
    pytest.param(2.5, 4.0, {"uncond", "reference", "full"}, False, id="all-three-per-branch"),
]


@pytest.mark.parametrize("strategy", ["motion_frames", "context_windows"])
@pytest.mark.parametrize("cfg,audio_cfg,branches,batch", CASES)
def test_guided_prediction_is_the_hand_derived_combination(setup, monkeypatch, strategy, cfg, audio_cfg, branches, batch):
    pipe, ref = setup
    kw = {"context_overlap": 3, "frames_per_clip": 6} if strategy == "context_windows" else {"frames_per_clip": 6}
    seen, rows = run_recorded(pipe, ref, monkeypatch, frames=9, cfg=cfg, audio_cfg=audio_cfg, strategy=strategy,
                              batch_guidance=batch, **kw)
    # 9 frames in clips of 6: two clips x 2 steps; context windows: one loop of 2 steps over all the frames
    assert len(seen) == (4 if strategy == "motion_frames" else 2)
    want = expected_prediction(cfg, audio_cfg, pipe)
    for pred in seen:
        assert torch.allclose(pred, torch.full_like(pred, want), rtol=0, atol=1e-5), (
            f"cfg={cfg} audio_cfg={audio_cfg}: the scheduler got {pred.unique().tolist()[:4]}, the formula gives {want}"
        )
    # every forward row carried exactly the conditions of one of the branches that have a weight, and each of
    # those branches was run
    allowed = [branch_inputs(b, pipe) for b in branches]
    assert all(row in allowed for row in rows), [r for r in rows if r not in allowed][:3]
    assert all(branch_inputs(b, pipe) in rows for b in branches)


def test_oracle_itself_matches_the_documented_special_cases():
    """Fixture sanity of the oracle: the formula reduces as the pipeline's docstring says (classic CFG, no guidance)."""
    a = C0 + C_REF + C_FACE + C_ID + C_AUDIO
    u = C0
    assert expected_prediction(1.0, 1.0) == a  # no guidance: the full branch
    assert expected_prediction(3.0, 3.0) == u + 3.0 * (a - u)  # audio_cfg == cfg: classic CFG, reference drops out
    assert expected_prediction(2.5, 4.0) != expected_prediction(4.0, 2.5)  # the two scales are not interchangeable


@pytest.mark.parametrize("strategy", ["motion_frames", "context_windows"])
def test_late_steps_without_guidance_are_the_full_branch_alone(setup, monkeypatch, strategy):
    """``guidance_fraction``: the guided combination on the first steps, then the full branch's prediction alone."""
    pipe, ref = setup
    seen, rows = run_recorded(pipe, ref, monkeypatch, frames=6, cfg=2.5, audio_cfg=4.0, strategy=strategy,
                              frames_per_clip=6, steps=4, guidance_fraction=0.5)
    got = [float(p.flatten()[0]) for p in seen]
    full = expected_prediction(1.0, 1.0, pipe)
    assert got == pytest.approx([expected_prediction(2.5, 4.0, pipe)] * 2 + [full] * 2, abs=1e-5)
    assert rows[-1] == branch_inputs("full", pipe)


@pytest.mark.parametrize("batch", [True, False])
def test_late_steps_run_the_full_branch_only(setup, monkeypatch, batch):
    """After ``guidance_fraction`` only the full branch is run: no forward row is spent on a weightless branch.

    By hand: 4 steps at fraction 0.5 = 2 guided steps x 3 branches (cfg 2.5, audio_cfg 4.0) + 2 late steps x 1 row,
    one clip of 6 frames; the last 2 rows are the full branch's.
    """
    pipe, ref = setup
    _, rows = run_recorded(pipe, ref, monkeypatch, frames=6, cfg=2.5, audio_cfg=4.0, strategy="motion_frames",
                           frames_per_clip=6, steps=4, guidance_fraction=0.5, batch_guidance=batch)
    assert len(rows) == 2 * 3 + 2 * 1
    assert rows[-2:] == [branch_inputs("full", pipe)] * 2
