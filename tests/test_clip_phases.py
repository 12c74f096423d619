"""The clip loop's per-step pieces on a bare ``_Run`` with stand-in parts, each against values worked out by hand:
guidance phases, temporal memory, deep-feature cache ages, emitting decoded clips, emotion, pose windows, cancelling."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from conftest import bare_run

from emo_model.sampling.clip_loop import _Run
from emo_model.sampling.colour_match import colour_stats, match_colours
from emo_model.sampling.settings import GenerationCancelled
from emo_model.validation import GenerationError


@dataclasses.dataclass
class Cond:
    """The fields of ``Conditioning`` that the per-step pieces replace, and one they must keep."""

    tag: str
    memory: dict | None = None
    update_memory: bool = False
    feature_cache: object = None


# ---- cancelling ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("should_cancel,stops", [(None, False), (lambda: False, False), (lambda: True, True)])
def test_cancel_point_stops_only_when_the_caller_asks(should_cancel, stops):
    run = bare_run(should_cancel=should_cancel)
    if not stops:
        run._cancel_point()
        return
    with pytest.raises(GenerationCancelled) as e:
        run._cancel_point()
    assert str(e.value) == "generation cancelled"  # the text the nodes and the CLI show


# ---- guidance phases: guided for guided_steps steps, then the full branch alone --------------------------------

class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return f"groups{len(self.calls)}"


def phases_run(guided_steps, steps):
    run = bare_run(guided_steps=guided_steps, s=SimpleNamespace(steps=steps), weights={"uncond": -2.0, "full": 3.0})
    run._branch_conditioning = Recorder()
    return run


def test_phases_all_guided_build_the_guided_groups_once():
    run = phases_run(4, 4)  # guided_steps == steps: no late phase is built
    phase = run._phases("audio", "speed", "motion", emotion=5)
    assert run._branch_conditioning.calls == [(("audio", "speed", "motion"), {"emotion": 5})]
    for i in range(4):
        assert phase(i) == ("groups1", {"uncond": -2.0, "full": 3.0}, "guided")


def test_phases_switch_to_the_full_branch_at_guided_steps():
    run = phases_run(2, 4)
    phase = run._phases("audio", "speed", "motion", emotion=5)
    assert run._branch_conditioning.calls == [(("audio", "speed", "motion"), {"emotion": 5}),
                                              (("audio", "speed", "motion", ["full"], 5), {})]
    guided = ("groups1", {"uncond": -2.0, "full": 3.0}, "guided")
    late = ("groups2", {"full": 1.0}, "late")  # the cache keys of the two phases differ by name
    assert [phase(i) for i in range(4)] == [guided, guided, late, late]


# ---- temporal memory: one per batch of branches, folded at a clip's first step ----------------------------------

def memory_run(decay):
    model = SimpleNamespace(config=SimpleNamespace(backbone=SimpleNamespace(temporal=SimpleNamespace(memory_decay=decay))))
    return bare_run(model=model, memories={}, folded=set())


def test_without_a_memory_the_groups_pass_unchanged():
    groups = [(["uncond", "full"], Cond("a"))]
    assert memory_run(None)._with_memory(groups, 0) is groups


def test_memory_per_batch_of_branches_kept_across_steps_and_folded_when_fresh():
    run = memory_run(0.5)
    both, full = ["uncond", "full"], ["full"]
    step0 = run._with_memory([(both, Cond("a"))], 0)
    assert [(names, c.tag, c.update_memory) for names, c in step0] == [(both, "a", True)]
    assert set(run.memories) == {("uncond", "full")} and run.folded == {("uncond", "full")}
    memory = run.memories[("uncond", "full")]
    assert step0[0][1].memory is memory and memory == {}
    memory["past"] = 1  # the network writes into it; later steps must see the same dict
    # step 1: the known batch is not folded again; a batch first seen now (the full branch alone) is
    step1 = run._with_memory([(both, Cond("b")), (full, Cond("c"))], 1)
    assert [(names, c.tag, c.update_memory) for names, c in step1] == [(both, "b", False), (full, "c", True)]
    assert step1[0][1].memory is memory and step1[1][1].memory is run.memories[("full",)]
    assert run.folded == {("uncond", "full"), ("full",)}
    # a new clip starts at step 0: every batch folds its past frames again
    step0 = run._with_memory([(both, Cond("d"))], 0)
    assert step0[0][1].update_memory is True and step0[0][1].memory is memory


# ---- deep-feature cache: refreshed every deep_cache_interval steps, per phase and group ------------------------

def cache_run(interval):
    return bare_run(s=SimpleNamespace(deep_cache_interval=interval))


@pytest.mark.parametrize("interval", [0, 1])
def test_no_cache_at_interval_one_or_below(interval):
    groups = [(["full"], Cond("a"))]
    assert cache_run(interval)._with_cache(groups, {}, "guided") is groups


def test_cache_refreshes_every_interval_steps_and_is_one_per_phase_and_group():
    run, caches = cache_run(3), {}
    refreshes = []
    for _ in range(7):
        out = run._with_cache([(["uncond"], Cond("u")), (["full"], Cond("f"))], caches, "guided")
        assert [c.tag for _, c in out] == ["u", "f"]
        first, second = out[0][1].feature_cache, out[1][1].feature_cache
        assert first is caches[("guided", 0)] and second is caches[("guided", 1)] and first is not second
        refreshes.append(first.refresh)
        first.features = second.features = torch.zeros(1)  # the network fills them on a refresh
    assert refreshes == [True, False, False, True, False, False, True]
    late = run._with_cache([(["full"], Cond("f"))], caches, "late")[0][1].feature_cache
    assert late is caches[("late", 0)] and late.refresh  # a new phase starts with its own, empty cache


# ---- emitting a decoded clip --------------------------------------------------------------------------------------

class Codec:
    def __init__(self, frames):
        self.frames, self.inputs = frames, []

    def decode(self, latents):
        self.inputs.append(latents)
        return self.frames.clone()


def emit_run(frames, colour_match="none"):
    seen = []

    def sink(clip):
        seen.append(clip.clone())
        clip.mul_(0)  # a sink may change what it is handed

    ref_colour = colour_stats(torch.full((4, 4, 3), 0.25))
    run = bare_run(pipe=SimpleNamespace(codec=Codec(frames)), sink=sink, ref=SimpleNamespace(colour=ref_colour),
               s=SimpleNamespace(colour_match=colour_match))
    return run, seen


def frames_by_index(n=4):
    return (torch.arange(n, dtype=torch.float32)[:, None, None, None] + 1).expand(n, 2, 2, 3) / 10


def test_emit_decodes_frame_major_hands_the_clip_to_the_sink_and_keeps_the_last_frames():
    frames = frames_by_index(5)  # 5 frames: the last 2 are not frames[2:]
    run, seen = emit_run(frames)
    latents = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4, 1).expand(1, 2, 3, 4, 2)  # [1, C, F, h, w]
    kept = run._emit(latents, keep_last=2)
    assert torch.equal(run.pipe.codec.inputs[0], latents[0].transpose(0, 1))  # [F, C, h, w]
    assert len(seen) == 1 and torch.equal(seen[0], frames)
    assert torch.equal(kept, frames[3:])  # kept before the sink changed them
    assert run._emit(latents) is None and run.emitted == 2  # keep_last defaults to none


def test_emit_colour_matches_towards_the_portrait():
    frames = frames_by_index()
    run, seen = emit_run(frames, "mean")
    run._emit(torch.zeros(1, 4, 4, 1, 1))
    assert torch.allclose(seen[0], match_colours(frames, run.ref.colour, "mean"))
    assert not torch.allclose(seen[0], frames, atol=1e-3)  # the portrait's mean (0.25) differs from the clip's


def test_emit_names_the_clip_whose_decoded_frames_are_not_finite():
    frames = frames_by_index()
    run, seen = emit_run(frames)
    run._emit(torch.zeros(1, 4, 4, 1, 1))
    run.pipe.codec.frames = frames.clone().index_fill_(0, torch.tensor([1]), float("nan"))
    with pytest.raises(GenerationError) as e:
        run._emit(torch.zeros(1, 4, 4, 1, 1))
    assert str(e.value).startswith("the decoded frames (VAE output) became NaN or infinite at clip 2 (float32);")
    assert len(seen) == 1  # the broken clip never reaches the sink


# ---- emotion of a clip, pose windows, motion per branch ----------------------------------------------------------

def emotion_run(emotion, classes=7):
    model = SimpleNamespace(denoising_unet=SimpleNamespace(emotion_classes=classes))
    return bare_run(model=model, s=SimpleNamespace(emotion=emotion))


@pytest.mark.parametrize("emotion,index,expected", [
    (None, [0, 1], None),  # the "no emotion" class
    (3, [0, 1], 3),
    ([0, 0, 2], [2, 3, 4], 2),  # frames after the list read its last label
    ([0, 0, 2], [0, 2], 0),  # a tie: the smallest class
    ([1, 4, 4, 1, 1], [1, 2, 3], 4),
])
def test_clip_emotion_is_the_most_frequent_label_of_its_frames(emotion, index, expected):
    assert emotion_run(emotion)._clip_emotion(torch.tensor(index)) == expected


def test_clip_emotion_without_emotion_modules_is_none():
    assert emotion_run([1, 2], classes=None)._clip_emotion(torch.tensor([0])) is None


def test_emotion_rows_give_the_unconditional_branch_the_no_emotion_class():
    run = emotion_run(None, classes=7)
    assert torch.equal(run._emotion_rows(["uncond", "ref", "full"], 3), torch.tensor([7, 3, 3]))
    assert torch.equal(run._emotion_rows(["uncond", "full"], None), torch.tensor([7, 7]))
    assert emotion_run(None, classes=None)._emotion_rows(["full"], 3) is None


def test_pose_window_encodes_the_windows_pose_frames_in_the_models_dtype():
    pose = torch.arange(5, dtype=torch.float32)[:, None, None, None].expand(5, 3, 2, 2).clone()  # [F, 3, H, W]
    seen = []

    def face_features(poses):
        seen.append(poses)
        return poses[:, :2]  # [F, C, H, W] -> the run keeps [1, C, F, H, W]

    run = bare_run(pose=pose, device="cpu", dtype=torch.float64, model=SimpleNamespace(face_features=face_features), face="before")
    run._pose_window(torch.tensor([3, 4, 5, 6]))  # past the last of 5 poses: mirrored back, 0 1 2 3 4 3 2 ..
    rows = torch.tensor([3, 4, 3, 2])
    assert seen[0].dtype == torch.float64 and torch.equal(seen[0], pose[rows].double())
    assert tuple(run.face.shape) == (1, 2, 4, 2, 2) and torch.equal(run.face[0, 0, :, 0, 0], pose[rows, 0, 0, 0].double())
    unchanged = bare_run(pose=None, face="before")
    unchanged._pose_window(torch.tensor([0]))
    assert unchanged.face == "before"


@pytest.mark.parametrize("per_branch", [False, True])
def test_branch_motion_is_shared_unless_each_branch_has_its_rows(per_branch):
    motion = {"a": torch.arange(3)[:, None] * 10}  # rows of branches uncond, ref, full
    run = bare_run(per_branch_motion=per_branch, branches=["uncond", "ref", "full"])
    got = run._branch_motion(motion, ["uncond", "full"])
    if per_branch:
        assert torch.equal(got["a"], torch.tensor([[0], [20]]))
    else:
        assert got is motion
    assert run._branch_motion(None, ["full"]) is None



# ---- a run's set-up (_Run.__init__) on the tiny model in float64: frame counts, guided steps, the face mask ---------

H, W = 64, 128  # height != width


@pytest.fixture(scope="module")
def tiny64():
    from conftest import tiny_vae

    from emo_model.network.model import EMOModel
    from emo_model.network.vae import DiffusersVAE
    from emo_model.sampling.pipeline import EMOPipeline
    from emo_model.sampling.reference_state import ReferenceState

    torch.manual_seed(0)
    model = EMOModel("tiny").eval().double()  # not float32: the mask must be handed over in the model's dtype
    pipe = EMOPipeline(model, DiffusersVAE(tiny_vae()))
    latent = torch.zeros(1, 4, H // 8, W // 8, dtype=torch.float64)
    with torch.no_grad():
        bank = model.encode_reference(latent, None)
    return pipe, ReferenceState(torch.zeros(H, W, 3), latent, bank, None, None, colour_stats(torch.zeros(H, W, 3)))


def new_run(monkeypatch, tiny64, rows=13, num_frames=None, face_mask=None, region_masks=None, **settings):
    from emo_model.sampling.settings import SamplingSettings

    pipe, ref = tiny64
    masks = []

    def face_features(mask):
        masks.append(mask)
        return "face"

    monkeypatch.setattr(pipe.model, "face_features", face_features)
    s = dataclasses.replace(SamplingSettings.from_preset(pipe.config.preset, steps=4, sampler="ddim"), **settings)
    proj = pipe.model.audioproj.cfg
    assert proj.seq_len != rows  # a count read from another axis would show
    features = torch.zeros(rows, proj.seq_len, proj.blocks, proj.channels)
    run = _Run(pipe, ref, features, s, None, face_mask, region_masks, None, None, num_frames=num_frames)
    monkeypatch.undo()
    assert len(masks) == 1 and masks[0].dtype == torch.float64 and tuple(masks[0].shape) == (1, H, W)
    return run, masks[0][0]


@pytest.mark.parametrize("num_frames,emitted", [(None, 13), (10, 10)])
def test_a_run_emits_the_frames_asked_for_and_keeps_every_feature_row(monkeypatch, tiny64, num_frames, emitted):
    run, _ = new_run(monkeypatch, tiny64, num_frames=num_frames)
    assert (run.num_frames, run.feature_rows) == (emitted, 13)


@pytest.mark.parametrize("fraction,guided", [(1.0, 4), (1.5, 4), (0.5, 2), (0.3, 2), (0.0, 0), (-0.5, 0)])
def test_guided_steps_are_the_fraction_of_the_steps_rounded_up(monkeypatch, tiny64, fraction, guided):
    assert new_run(monkeypatch, tiny64, guidance_fraction=fraction)[0].guided_steps == guided  # of 4 steps


def test_no_face_mask_is_the_whole_picture(monkeypatch, tiny64):
    run, mask = new_run(monkeypatch, tiny64)
    assert torch.equal(mask, torch.ones(H, W, dtype=torch.float64)) and bool(run.face_pixels.all())


def test_a_face_mask_with_channels_reads_the_first(monkeypatch, tiny64):
    given = torch.zeros(2, H, W)
    given[0, 10:20, 30:40] = 1.0
    given[1] = 1.0
    run, mask = new_run(monkeypatch, tiny64, face_mask=given)
    assert torch.equal(mask, given[0].double()) and torch.equal(run.face_pixels, given[0] > 0)


def test_a_face_mask_of_another_size_is_resized_bilinearly_half_pixel_centred(monkeypatch, tiny64):
    given = torch.zeros(H // 2, W // 2)
    given[:, W // 4:] = 1.0  # the right half
    run, mask = new_run(monkeypatch, tiny64, face_mask=given[None])
    # by hand, 2x up: output column x samples input column (x + 0.5) / 2 - 0.5, so columns 62..65 read 30.75,
    # 31.25, 31.75, 32.25 between the 0 at column 31 and the 1 at 32
    assert tuple(mask.shape) == (H, W)
    torch.testing.assert_close(mask[:, 60:68], torch.tensor([0, 0, 0, 0.25, 0.75, 1, 1, 1], dtype=torch.float64).expand(H, 8),
                               rtol=0, atol=1e-7)
    assert torch.equal(run.face_pixels, mask > 0)


def test_region_masks_get_a_batch_axis_in_the_models_dtype(monkeypatch, tiny64):
    masks = torch.rand(3, 8, 16)
    run, _ = new_run(monkeypatch, tiny64, region_masks=masks)
    assert run.region.dtype == torch.float64 and torch.equal(run.region, masks[None].double())
    per_size = {(8, 16): masks, (4, 8): masks[:, ::2, ::2]}
    run, _ = new_run(monkeypatch, tiny64, region_masks=per_size)
    assert list(run.region) == [(8, 16), (4, 8)]
    for k, v in per_size.items():
        assert run.region[k].dtype == torch.float64 and torch.equal(run.region[k], v[None].double())
    assert new_run(monkeypatch, tiny64)[0].region is None


def test_reference_keys_and_values_are_projected_once_unless_every_step(monkeypatch, tiny64):
    once, _ = new_run(monkeypatch, tiny64)
    assert isinstance(once.reference_kv, dict) and len(once.reference_kv) > 0
    assert new_run(monkeypatch, tiny64, reference_every_step=True)[0].reference_kv is None


@pytest.mark.parametrize("sampler,step_kwargs,generator", [("ddim", {"eta": 0.0}, True), ("euler", {}, True),
                                                           ("dpmpp_2m", {}, True), ("unipc", {}, False)])
def test_ddim_steps_deterministically_and_samplers_that_draw_get_the_generator(monkeypatch, tiny64, sampler, step_kwargs,
                                                                               generator):
    run, _ = new_run(monkeypatch, tiny64, sampler=sampler)
    assert run.step_kwargs == step_kwargs and run.uses_generator is generator


def quirk_run(monkeypatch, tiny64, identity=False, cfg=2.0, every_step=False, layers=3, **quirks):
    """A run of the tiny model under other inference quirks (a stand-in pipeline holding them); records the seed
    stream's arguments, the row bank's construction and every projection of reference keys / values."""
    from emo_model.sampling import clip_loop
    from emo_model.sampling.settings import SamplingSettings

    pipe, ref = tiny64
    log = {"stream": [], "rows": [], "projected": []}
    monkeypatch.setattr(clip_loop, "SeedStream", lambda *a, **k: log["stream"].append((a, k)) or "stream")
    monkeypatch.setattr(_Run, "_row_bank", lambda self, bank: log["rows"].append(bank) or "row bank")
    monkeypatch.setattr(pipe.model.denoising_unet, "project_reference",
                        lambda bank: log["projected"].append(bank) or {"kv": bank})
    preset = SimpleNamespace(quirks=dataclasses.replace(pipe.config.preset.quirks, **quirks),
                             scheduler=pipe.config.preset.scheduler)
    stand_in = SimpleNamespace(model=pipe.model, device=pipe.device, codec=pipe.codec,
                               config=SimpleNamespace(preset=preset, audio=SimpleNamespace(layers=layers)))
    ref = dataclasses.replace(ref, identity_tokens=torch.zeros(1, 2, 3) if identity else None)
    s = dataclasses.replace(SamplingSettings.from_preset(pipe.config.preset, steps=4, sampler="ddim"), cfg=cfg, audio_cfg=cfg,
                            seed=7, reference_every_step=every_step)
    proj = pipe.model.audioproj.cfg
    run = _Run(stand_in, ref, torch.zeros(5, proj.seq_len, proj.blocks, proj.channels), s, None, None, None, None, None)
    monkeypatch.undo()
    return run, log


@pytest.mark.parametrize("alternates,cfg,identity,per_branch", [
    (True, 2.0, True, True), (False, 2.0, True, False),
    (True, 1.0, True, False),  # no unconditional branch
    (True, 2.0, False, False),  # no identity tokens
])
def test_motion_rows_per_branch_only_when_identities_alternate_under_guidance(monkeypatch, tiny64, alternates, cfg, identity,
                                                                             per_branch):
    run, _ = quirk_run(monkeypatch, tiny64, identity=identity, cfg=cfg, reference_identity_alternates=alternates)
    assert run.per_branch_motion is per_branch
    assert run.folded == set() and run.memories == {}  # memories start empty for the video


@pytest.mark.parametrize("tiled,every_step,row_bank,projected", [
    (True, False, "row bank", ["bank", "row bank"]),  # the row bank's keys / values replace the portrait's
    (True, True, "row bank", []),  # the naive baseline projects on every step, nothing here
    (False, False, None, ["bank"]),
])
def test_reference_rows_tiled_build_the_row_bank_and_project_it(monkeypatch, tiny64, tiled, every_step, row_bank, projected):
    _, ref = tiny64
    run, log = quirk_run(monkeypatch, tiny64, identity=True, every_step=every_step, reference_identity_alternates=True,
                         reference_rows_tiled=tiled)
    assert run.row_bank == row_bank and log["rows"] == ([ref.bank] if row_bank else [])
    assert log["projected"] == [ref.bank if p == "bank" else p for p in projected]
    assert run.reference_kv == (None if every_step else {"kv": ref.bank if row_bank is None else "row bank"})


def test_rows_are_not_tiled_without_motion_rows_per_branch(monkeypatch, tiny64):
    run, log = quirk_run(monkeypatch, tiny64, identity=False, reference_identity_alternates=True, reference_rows_tiled=True)
    assert run.row_bank is None and log["rows"] == []


@pytest.mark.parametrize("from_pixels,drop,want", [(True, 0.25, 0.25), (False, 0.25, 0.0), (True, 0.0, 0.0)])
def test_the_pixel_drop_applies_to_motion_frames_from_pixels_only(monkeypatch, tiny64, from_pixels, drop, want):
    run, _ = quirk_run(monkeypatch, tiny64, motion_frames_from_pixels=from_pixels, motion_frame_pixel_drop=drop)
    assert run.pixel_drop == want and isinstance(run.pixel_drop, float)


@pytest.mark.parametrize("per_layer,skip", [(2, 6), (0, 0)])
def test_the_seed_stream_gets_the_seed_layout_dtype_and_the_draws_to_skip(monkeypatch, tiny64, per_layer, skip):
    _, log = quirk_run(monkeypatch, tiny64, layers=3, seed_stream="single", seed_draws_per_audio_layer=per_layer)
    assert log["stream"] == [((7, "single", torch.float64), {"skip": skip})]  # draws per layer x 3 audio layers
