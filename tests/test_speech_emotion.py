"""The emotion choice 'auto': the family's audio-emotion classifier found in the model folder, run on the driving audio.

Tiny files in the layout users have (emotion2vec_plus_large/ with config.yaml + model.pt, misc/audio_emotion_classifier/
with config.json + diffusion_pytorch_model.safetensors, inside the MEMO folder), with the weights of the parity fixture
(tests/parity/emotion2vec, checked against MEMO's own labelling in test_parity_speech_emotion.py).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from comfy_harness import (
    diffusers_part_folders,
    load_pack,
    run_api,
    tiny_graph,
    tiny_wav2vec2_folder,
    write_portrait,
    write_speech,
)
from conftest import HANG_GUARD_S, ROOT, perturb_zero_inits, tiny_vae
from safetensors.torch import load_file, save_file

FIX = ROOT / "tests" / "parity" / "emotion2vec"
META = json.loads((FIX / "meta.json").read_text())


def _hashed(entry: dict) -> dict[str, torch.Tensor]:
    from conftest import parity_common

    return parity_common().hashed_state_dict([(k, s) for k, s in entry["spec"]], entry["seed"])


def add_speech_emotion_files(memo: os.PathLike, state: dict, classifier: dict) -> None:
    import yaml

    enc = memo / "emotion2vec_plus_large"
    enc.mkdir()
    (enc / "config.yaml").write_text(yaml.safe_dump({"model": "Emotion2vec", "model_conf": META["a"]["model_conf"]}))
    torch.save(state, enc / "model.pt")
    cls = memo / "misc" / "audio_emotion_classifier"
    cls.mkdir(parents=True)
    (cls / "config.json").write_text(json.dumps(META["a"]["classifier"]["config"]))
    save_file(classifier, str(cls / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from emo_model.network.model import EMOModel

    base = tmp_path_factory.mktemp("speech_emotion")
    models = base / "models"
    torch.manual_seed(4)
    tiny = perturb_zero_inits(EMOModel("tiny-memo").eval())
    plain = diffusers_part_folders(tiny, models / "emo" / "memo_plain", "memo")
    full = diffusers_part_folders(tiny, models / "emo" / "memo", "memo")
    classifier = _hashed(META["a"]["classifier"])
    classifier["layers.fc5.bias"] = load_file(FIX / "emotion.safetensors")["a.classifier.fc5.bias"]
    add_speech_emotion_files(full, _hashed(META["a"]["encoder"]), classifier)
    tiny_vae().save_pretrained(models / "vae" / "sd-vae-ft-mse")
    tiny_wav2vec2_folder(models / "audio_encoders" / "wav2vec2-base-960h")
    (base / "input").mkdir()
    (base / "output").mkdir()
    return {
        "base": base, "models": models, "plain": plain, "full": full,
        "vae": models / "vae" / "sd-vae-ft-mse", "w2v": models / "audio_encoders" / "wav2vec2-base-960h",
        "audio": _fixture_speech(base / "input" / "speech.wav"), "image": write_portrait(base / "input" / "portrait.png"),
        # generation tests run on 0.6 s (one window: one class; the classes' spread is checked without generating)
        "short": write_speech(base / "input" / "short.wav", seconds=0.6),
    }


def _fixture_speech(path):
    """The parity fixture's 4.3 s of audio (its windows get several classes from these weights), 16 kHz float wav."""
    import soundfile as sf

    sf.write(str(path), load_file(FIX / "emotion.safetensors")["a.waveform"].numpy(), 16000, subtype="FLOAT")
    return path


def _session(files, folder):
    from emo_model.app.session import Session

    return Session.load(folder, vae=files["vae"], audio_encoder=files["w2v"])


def test_conv_stack_spec_is_parsed_not_evaluated():
    from emo_model.audio.speech_emotion import SpeechEmotionError, parse_conv_stack

    assert parse_conv_stack("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]") == (
        (512, 10, 5), (512, 3, 2), (512, 3, 2), (512, 3, 2), (512, 3, 2), (512, 2, 2), (512, 2, 2))
    assert parse_conv_stack("2 * [(8, 3, 1)]") == ((8, 3, 1), (8, 3, 1))
    for bad in ("__import__('os').system('true')", "[(512, 10)]", "[(512, 10, 5.0)]", "[]", "[(1,2,3)] * -1"):
        with pytest.raises(SpeechEmotionError, match="feature_encoder_spec"):
            parse_conv_stack(bad)


def test_missing_or_unsafe_files_are_one_line(tmp_path):
    from emo_model.audio.speech_emotion import SpeechEmotionError, load_classifier, load_encoder

    (tmp_path / "e2v").mkdir()
    (tmp_path / "e2v" / "model.pt").write_bytes(b"")
    with pytest.raises(SpeechEmotionError, match=r"config\.yaml missing"):
        load_encoder(tmp_path / "e2v")
    (tmp_path / "e2v" / "config.yaml").write_text("model: Emotion2vec\nmodel_conf:\n  embed_dim: 32\n")

    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    with open(tmp_path / "e2v" / "model.pt", "wb") as fh:
        pickle.dump({"x": Evil()}, fh, protocol=2)
    with pytest.raises(SpeechEmotionError) as err:
        load_encoder(tmp_path / "e2v")
    assert "\n" not in str(err.value) and ("refused" in str(err.value) or "not a readable" in str(err.value))
    (tmp_path / "cls").mkdir()
    with pytest.raises(SpeechEmotionError, match="diffusion_pytorch_model.safetensors missing"):
        load_classifier(tmp_path / "cls")


def test_session_emotion_choices(files):
    from emo_model.audio.speech_emotion import SpeechEmotionClassifier
    from emo_model.validation import InputError

    plain = _session(files, files["plain"])
    audio = plain.encode_audio(str(files["audio"]))
    rows = audio.features.shape[0]
    assert rows % 4 == 0 and rows >= audio.num_frames  # tiny-memo pads to whole clips of 4 frames
    # without the classifier: the preset's neutral, and the summary says why; 'auto' is refused in one line
    value, note = plain.resolve_emotion(None, audio)
    assert value == 4 and note.startswith("emotion neutral (preset; no audio-emotion classifier: ")
    assert note.endswith(": emotion2vec_plus_large/, misc/audio_emotion_classifier/ not in the model folder)"), note  # short: a node shows it
    with pytest.raises(InputError, match=r"emotion 'auto' needs the audio-emotion classifier: .*emotion2vec_plus_large/ .*"
                                         r"misc/audio_emotion_classifier/ .*missing; put them there, or choose an emotion"):
        plain.resolve_emotion("auto", audio)
    assert plain.resolve_emotion("happy", audio) == (3, "emotion happy (chosen)")
    # with it: the preset classifies the audio (MEMO's own default), as 'auto' does; a name still wins
    full = _session(files, files["full"])
    audio = full.encode_audio(str(files["audio"]))
    expected = SpeechEmotionClassifier.from_folders(files["full"] / "emotion2vec_plus_large",
                                                    files["full"] / "misc" / "audio_emotion_classifier")
    labels = expected.classify(audio.audio.waveform[: audio.audio.real_samples], rows).labels.tolist()
    for choice in (None, "preset", "auto", " Auto "):
        value, note = full.resolve_emotion(choice, audio)
        assert value == labels and note.startswith("emotion from the audio ("), (choice, note)
    assert len(set(labels)) >= 2  # several classes over 4.3 s: per-frame labels, not one class
    assert full.resolve_emotion("sad", audio) == (6, "emotion sad (chosen)")
    settings = full.settings(emotion=value)  # per-frame labels pass the settings check
    assert settings.emotion == labels


def test_classification_reports_progress_and_stops_when_asked(files):
    from emo_model.sampling.settings import GenerationCancelled

    session = _session(files, files["full"])
    audio = session.encode_audio(str(files["audio"]))
    seen = []
    with pytest.raises(GenerationCancelled):  # asked to stop after the first batch of windows
        session.resolve_emotion("auto", audio, on_progress=lambda done, total: seen.append((done, total)), should_cancel=lambda: True)
    assert len(seen) == 1 and 0 < seen[0][0] <= seen[0][1]
    seen.clear()
    value, note = session.resolve_emotion("auto", audio, on_progress=lambda done, total: seen.append((done, total)))
    windows = seen[-1][1]
    assert windows >= 4 and seen[-1] == (windows, windows) and [d for d, _ in seen] == sorted(d for d, _ in seen)  # the stop kept nothing
    assert isinstance(value, list) and note.startswith("emotion from the audio (")


def test_auto_on_a_model_without_emotion_classes_is_refused(files, tmp_path):
    from emo_model.app.session import Session
    from emo_model.network.model import EMOModel
    from emo_model.validation import InputError
    from emo_model import weights

    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    weights.save_native(perturb_zero_inits(EMOModel("tiny").eval()), path, vae=tiny_vae())
    session = Session.load(path)
    with pytest.raises(InputError, match="has no audio-emotion classifier; leave the emotion choice on the preset"):
        session.check_emotion("auto")
    assert session.speech_emotion_folders() is None


def _emo(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "emo_model", "generate", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env=env, check=False)


def test_cli_emotion_auto(files):
    common = ["--image", str(files["image"]), "--audio", str(files["short"]), "--vae", str(files["vae"]), "--audio-encoder",
              str(files["w2v"]), "--steps", "1", "--device", "cpu", "--dtype", "fp32"]
    out = files["base"] / "never.mp4"
    res = _emo("--model", str(files["plain"]), "--emotion", "auto", "--out", str(out), *common)
    assert res.returncode != 0 and "Traceback" not in res.stderr and not out.exists()
    assert "'auto' needs the audio-emotion classifier" in res.stderr and "misc/audio_emotion_classifier/" in res.stderr
    out = files["base"] / "auto.mp4"
    res = _emo("--model", str(files["full"]), "--emotion", "auto", "--out", str(out), *common)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "note: emotion from the audio (" in res.stderr and out.exists()


def test_sampler_node_auto_and_preset(files, monkeypatch):
    pack = load_pack()
    EMOPipeline = sys.modules[pack.__name__ + ".emo_model.sampling.pipeline"].EMOPipeline  # the pack's own copy, as ComfyUI imports it
    seen = []
    original = EMOPipeline.generate

    def generate(self, *a, settings, **kw):
        seen.append(settings.emotion)
        return original(self, *a, settings=settings, **kw)

    monkeypatch.setattr(EMOPipeline, "generate", generate)
    monkeypatch.setenv("EMO_MODELS_DIR", str(files["models"]))
    monkeypatch.setenv("EMO_OUTPUT_DIR", str(files["base"] / "output"))
    from tests.test_nodes import CORE_STANDINS

    for cls in CORE_STANDINS.values():
        monkeypatch.setattr(cls, "input_dir", files["base"] / "input", raising=False)
        monkeypatch.setattr(cls, "output_dir", files["base"] / "output", raising=False)
    graph = tiny_graph(json.loads((ROOT / "workflows" / "api" / "emo_memo_speech.api.json").read_text()))
    sampler = next(nid for nid, n in graph.items() if n["class_type"] == "EMOSampler")
    graph["2"]["inputs"]["audio"] = "short.wav"
    graph[sampler]["inputs"]["steps"] = 1
    classes = {**CORE_STANDINS, **pack.NODE_CLASS_MAPPINGS}
    for model, choice, expect in (("memo/", "auto", "emotion from the audio ("), ("memo/", "preset", "emotion from the audio ("),
                                  ("memo_plain/", "preset", "emotion neutral (preset; no audio-emotion classifier")):
        graph["3"]["inputs"]["model"] = model
        graph[sampler]["inputs"]["emotion"] = choice
        _, uis = run_api(graph, classes)
        assert expect in uis[sampler]["emo_summary"][0], uis[sampler]["emo_summary"][0]
    assert isinstance(seen[0], list) and seen[0] == seen[1] and len(seen[0]) % 4 == 0 and seen[2] == 4
    graph[sampler]["inputs"]["emotion"] = "auto"  # memo_plain + auto: one clear line
    with pytest.raises(ValueError, match="'auto' needs the audio-emotion classifier"):
        run_api(graph, classes)
    # ComfyUI's Cancel while the audio is classified (new audio: nothing cached) stops the node before any sampling
    write_speech(files["base"] / "input" / "other.wav", seconds=0.9)
    graph["2"]["inputs"]["audio"] = "other.wav"
    graph["3"]["inputs"]["model"] = "memo/"
    monkeypatch.setattr(pack.nodes._comfy, "interrupted", lambda: True)
    before = len(seen)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_api(graph, classes)
    assert len(seen) == before  # the sampler never started


def test_unknown_emotion_is_one_line_in_the_callers_spelling(files):
    from emo_model.validation import InputError

    session = _session(files, files["plain"])
    with pytest.raises(InputError, match=r"^--emotion 'joy' is not one of tiny-memo's classes: angry, .* \(or an index 0\.\.8\)$"):
        session.check_emotion("joy", label="--emotion")
    with pytest.raises(InputError, match=r"^emotion 9 is not one of"):
        session.check_emotion(9)


def _stereo_emotion_file(path):
    """tools/parity/memo_from_files.py's stereo_emotion_wav: the file MEMO classified in the fixture's part E."""
    import hashlib
    import importlib.util

    sys.path.insert(0, str(ROOT / "tools" / "parity"))
    spec = importlib.util.spec_from_file_location("memo_from_files", ROOT / "tools" / "parity" / "memo_from_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.stereo_emotion_wav(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == META["e"]["file"]["sha256"], "not the file MEMO classified"
    return path


def test_memo_classifies_the_first_channel_of_its_16k_wav_as_memo_does(files, tmp_path):
    """InferenceQuirks.emotion_channel = "first" (MEMO inference.py:118-139, audio_utils.py:197-199): the emotion of a
    stereo file whose channels differ is MEMO's own (fixture part E: MEMO's resample_audio with the ffmpeg program, its
    extract_audio_emotion_labels), through encode_audio -> resolve_emotion from a file and from a ComfyUI AUDIO dict;
    the mix, which the audio encoder and the video get, would give other labels."""
    import soundfile as sf

    from emo_model.audio.speech_emotion import SpeechEmotionClassifier, segment_windows
    from tests.conftest import rel_err
    from tests.parity_floor import tolerance

    golden = load_file(FIX / "emotion.safetensors")
    path = _stereo_emotion_file(tmp_path / META["e"]["file"]["name"])
    session = _session(files, files["full"])
    assert session.config.preset.quirks.emotion_channel == "first"
    audio = session.encode_audio(str(path))
    heard = audio.emotion_audio
    assert heard is not None and heard.shape == (META["e"]["samples_16k"],)
    _, rel = rel_err(heard * 32768, golden["e.first_16k"].float())  # the ffmpeg program's first channel
    assert rel <= tolerance(FIX, "e.first_16k", file="emotion.safetensors"), rel
    rows = audio.features.shape[0]
    assert rows == META["e"]["audio_length"]  # 96 frames: whole clips of 4, as MEMO's 96 are of 16
    model = SpeechEmotionClassifier.from_folders(files["full"] / "emotion2vec_plus_large",
                                                 files["full"] / "misc" / "audio_emotion_classifier")
    feats = torch.stack([model.utterance_features(heard[a:b]) for _, _, a, b in segment_windows(heard.shape[0])])
    p = next(model.classifier.parameters())
    with torch.no_grad():
        probs = torch.softmax(model.classifier(feats.to(p.dtype)), dim=-1)
    _, rel = rel_err(probs, golden["e.window_probs"])
    assert rel <= tolerance(FIX, "e.window_probs", file="emotion.safetensors"), rel
    value, note = session.resolve_emotion("auto", audio)
    assert value == golden["e.frame_labels"].tolist() and note.startswith("emotion from the audio ("), note
    mix = model.classify(audio.audio.waveform[: audio.audio.real_samples], rows)
    assert mix.labels.tolist() != value and mix.window_labels != META["e"]["window_labels"], "the mix should be told apart"
    # ComfyUI's AUDIO (Load Audio: float32 [1, channels, n]) carries both channels: the same first channel, MEMO's labels
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    comfy = session.encode_audio({"waveform": torch.from_numpy(data.T.copy())[None], "sample_rate": rate})
    assert torch.equal(comfy.emotion_audio, heard)
    session._emotion_labels.clear()  # classified again, not read from the cache
    assert session.resolve_emotion("auto", comfy)[0] == value
