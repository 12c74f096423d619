"""The node pack as ComfyUI sees it: loading, node contract, types, workflows, end-to-end runs."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch
from comfy_harness import (
    CORE_STANDINS,
    FILE_COMBOS,
    OTHER_PACK_TYPES,
    OUR_TYPES,
    core_object_info,
    core_types,
    load_pack,
    make_test_models,
    run_api,
    tiny_graph,
    write_portrait,
    write_scene,
    write_speech,
)
from conftest import ROOT

EXPECTED_NODES = {
    "LoadEMOModel": "Load EMO Model",
    "EMOAudioEncode": "EMO Audio Encode",
    "EMOFaceMask": "EMO Face Mask",
    "EMOReferenceEncode": "EMO Reference Encode",
    "EMOSampler": "EMO Sampler",
    "EMOVideoCombine": "EMO Video Combine",
    "EMODemoSample": "EMO Demo Sample",
    "EMOPasteBack": "EMO Paste Back",
    "EMOFaceKeypoints": "EMO Face Keypoints",
}
WORKFLOWS = sorted((ROOT / "workflows" / "api").glob("*.api.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote"}
UI_WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def info():
    return core_object_info()


def test_pack_registers_exactly_its_nodes_with_a_web_directory(pack, info):
    assert pack.NODE_CLASS_MAPPINGS.keys() == EXPECTED_NODES.keys()
    assert pack.NODE_DISPLAY_NAME_MAPPINGS == EXPECTED_NODES
    assert not set(EXPECTED_NODES) & set(info)  # no id clashes with core (core would win)
    web = ROOT / pack.WEB_DIRECTORY
    assert any(web.rglob("*.js"))


def _inputs(cls):
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


@pytest.mark.parametrize("node_id", sorted(EXPECTED_NODES))
def test_node_contract(pack, info, node_id):
    cls = pack.NODE_CLASS_MAPPINGS[node_id]
    known = core_types(info) | OUR_TYPES
    assert cls.CATEGORY == "EMO" and len(cls.DESCRIPTION) > 40
    assert all(t in known | OTHER_PACK_TYPES for t in cls.RETURN_TYPES), cls.RETURN_TYPES  # EMO Face Keypoints: POSE_KEYPOINT
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    spec = cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, (kind, *rest) in spec.get(group, {}).items():
            options = rest[0] if rest else {}
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
            assert name in params, f"{node_id}.{cls.FUNCTION} does not take {name}"
            if group == "optional":
                assert params[name].default is None or params[name].default == options.get("default"), name
            if isinstance(kind, list):
                assert kind and options.get("default", kind[0]) in kind
            elif kind in OTHER_PACK_TYPES:
                assert group == "optional", f"{node_id}.{name}: another pack's type {kind} can only be optional"
            else:
                assert kind in known, f"{node_id}.{name}: unknown type {kind}"
                if kind in ("INT", "FLOAT") and "default" in options:
                    assert options["min"] <= options["default"] <= options["max"]
    for name in spec.get("hidden", {}):
        assert name in params


def test_importing_the_pack_builds_nothing_and_registers_the_emo_folder(monkeypatch, tmp_path):
    # no ComfyUI here: registering is a no-op, and importing constructed no model (only classes)
    pack = load_pack()
    assert not any(isinstance(v, torch.nn.Module) for v in vars(pack).values())


# ---- workflows --------------------------------------------------------------------------------------


def _output_types(node_type: str, pack, info) -> list[str]:
    if node_type in pack.NODE_CLASS_MAPPINGS:
        return list(pack.NODE_CLASS_MAPPINGS[node_type].RETURN_TYPES)
    return list(info[node_type]["output"])


def _input_specs(node_type: str, pack, info) -> dict:
    if node_type in pack.NODE_CLASS_MAPPINGS:
        return _inputs(pack.NODE_CLASS_MAPPINGS[node_type])
    spec = info[node_type]["input"]
    return {**spec.get("required", {}), **spec.get("optional", {})}


def _widgets(specs: dict) -> list[str]:
    """The inputs the frontend draws as widgets, in order (links are sockets)."""
    return [name for name, spec in specs.items() if isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]


def _check_value(node_type: str, name: str, spec, value):
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    if (node_type, name) in FILE_COMBOS:
        return
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options["options"]
        assert value in choices, f"{node_type}.{name} = {value!r} is not one of {choices}"
    elif kind in ("INT", "FLOAT"):
        assert options.get("min", -float("inf")) <= value <= options.get("max", float("inf")), f"{node_type}.{name} = {value}"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool)
    elif kind == "STRING":
        assert isinstance(value, str)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_api_workflow_is_valid(path, pack, info):
    graph = json.loads(path.read_text())
    for nid, node in graph.items():
        node_type = node["class_type"]
        assert node_type in pack.NODE_CLASS_MAPPINGS or node_type in info, f"unknown node type {node_type}"
        specs = _input_specs(node_type, pack, info)
        assert set(node["inputs"]) <= set(specs), f"{nid}: unknown inputs {set(node['inputs']) - set(specs)}"
        required = set(
            (pack.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES() if node_type in pack.NODE_CLASS_MAPPINGS else info[node_type]["input"]).get("required", {})
        )
        assert required <= set(node["inputs"]), f"{nid} {node_type}: missing {required - set(node['inputs'])}"
        if node_type in pack.NODE_CLASS_MAPPINGS:  # the frontend sends every widget's value, optional ones too
            missing = [name for name in _widgets(specs) if name not in node["inputs"]]
            assert not missing, f"{nid} {node_type}: no value for {missing} (what the frontend's conversion of the UI twin sends)"
        for name, value in node["inputs"].items():
            if isinstance(value, list):  # a link [source id, output index]
                src = graph[value[0]]
                produced = _output_types(src["class_type"], pack, info)[value[1]]
                assert produced == specs[name][0], f"{nid}.{name} expects {specs[name][0]}, gets {produced}"
            else:
                _check_value(node_type, name, specs[name], value)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_is_valid(path, pack, info):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        produced = _output_types(nodes[src]["type"], pack, info)[src_slot]
        expected = nodes[dst]["inputs"][dst_slot]["type"]
        assert produced == kind == expected, f"link {link_id}: {produced} -> {expected} ({kind})"
    for node in wf["nodes"]:
        node_type = node["type"]
        if node_type in FRONTEND_ONLY:  # notes: drawn by the frontend, never sent to the server
            continue
        assert node_type in pack.NODE_CLASS_MAPPINGS or node_type in info, f"unknown node type {node_type}"
        specs = _input_specs(node_type, pack, info)
        widgets = _widgets(specs)
        values = list(node.get("widgets_values", []))
        if node_type in pack.NODE_CLASS_MAPPINGS:  # what the frontend saves: one value per widget (+ a seed's control)
            controls = sum(1 for name in widgets if specs[name][1:] and specs[name][1].get("control_after_generate"))
            assert len(values) == len(widgets) + controls, f"#{node['id']} {node_type}: {len(values)} widget values for {widgets}"
        for name in widgets:  # positional, with control_after_generate adding an entry after seeds
            if not values:
                break
            linked = any(i.get("widget", {}).get("name") == name and i.get("link") is not None for i in node.get("inputs", []))
            value = values.pop(0)
            if not linked:
                _check_value(node_type, name, specs[name], value)
            if specs[name][1:] and specs[name][1].get("control_after_generate"):
                values.pop(0)


def test_every_api_workflow_has_a_ui_twin():
    ui_names = {p.stem for p in UI_WORKFLOWS}
    assert WORKFLOWS and {p.name.removesuffix(".api.json") for p in WORKFLOWS} <= ui_names


# ---- running ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory, pack):
    base = tmp_path_factory.mktemp("comfy")
    models, inputs, outputs = base / "models", base / "input", base / "output"
    inputs.mkdir()
    outputs.mkdir()
    entries = make_test_models(models)
    write_portrait(inputs / "portrait.png")
    write_scene(inputs / "scene.png")  # the paste-back workflow's wide picture
    write_speech(inputs / "speech.wav", seconds=1.3)
    write_speech(inputs / "song.wav", seconds=2.1)
    mp = pytest.MonkeyPatch()
    mp.setenv("EMO_MODELS_DIR", str(models))
    mp.setenv("EMO_OUTPUT_DIR", str(outputs))
    for cls in CORE_STANDINS.values():
        mp.setattr(cls, "input_dir", inputs, raising=False)
        mp.setattr(cls, "output_dir", outputs, raising=False)
    yield {"models": models, "input": inputs, "output": outputs, "entries": entries}
    mp.undo()


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if "demo" not in p.name], ids=lambda p: p.name)
def test_api_workflow_runs_end_to_end_on_tiny_checkpoints(path, pack, env):
    from emo_model.audio.signal import num_video_frames
    from emo_model.video_io import probe_video

    graph = tiny_graph(json.loads(path.read_text()))
    classes = {**CORE_STANDINS, **pack.NODE_CLASS_MAPPINGS}
    outputs, uis = run_api(graph, classes)
    audio_node = next(nid for nid, n in graph.items() if n["class_type"] == "EMOAudioEncode")
    frames = outputs[audio_node][2]
    audio_file = graph[next(nid for nid, n in graph.items() if n["class_type"] == "LoadAudio")]["inputs"]["audio"]
    import soundfile as sf

    info = sf.info(str(env["input"] / audio_file))
    fps = outputs[audio_node][3]
    assert frames == num_video_frames(info.frames, info.samplerate, fps)
    written = sorted(env["output"].rglob("*.mp4"), key=lambda p: p.stat().st_mtime)[-1]
    video = probe_video(written)
    assert video.num_frames == frames and abs(video.fps - fps) < 1e-3
    if "paste_back" in path.name:  # the wide scene (write_scene) at its own size, not the square crop
        assert (video.width, video.height) == (320, 180)
    assert abs(video.audio_duration - frames / fps) <= 1 / fps
    sampler = next(nid for nid, n in graph.items() if n["class_type"] == "EMOSampler")
    summary = uis[sampler]["emo_summary"][0]
    assert summary.startswith(f"{frames} frames")
    loader = next(nid for nid, n in graph.items() if n["class_type"] == "LoadEMOModel")
    family = outputs[loader][0].config.family  # the family the loader chose, by tensors or folder name
    assert family == {"hallo2/net.pth": "hallo2", "hallo/net.pth": "hallo", "echomimic/": "echomimic-v1", "echomimic_v2/": "echomimic-v2", "memo/": "memo",
                      "v-express/": "vexpress"}.get(
        graph[loader]["inputs"]["model"], "emo"), family
    # how the run was cut, in the family's own terms (EchoMimic v1: windows that move 2 frames per step; v2: 3)
    if "echomimic" in path.name:
        shift = 3 if "echomimic_v2" in path.name else 2
        assert re.search(rf"\d+ context windows? of \d+ frames \(overlap \d+, moving {shift} frames per step\)", summary), summary
        if shift == 3:  # no pose wired: the built-in idle sway, said in the summary
            assert "pose: the built-in idle sway" in summary, summary
    elif "v_express" in path.name:  # context windows, the frame count cut to whole windows, the portrait's keypoints
        assert re.search(r"\d+ context windows? of \d+ frames \(overlap \d+\)", summary), summary
        assert "keypoints: fix_face" in summary, summary
        assert frames % 6 == 2, frames  # whole windows of 8 moving 6 (overlap 2): 38 frames from 1.3 s, not 39 at 30 fps
        face = next(nid for nid, n in graph.items() if n["class_type"] == "EMOFaceMask")  # crop face: our crop, said so
        assert "V-Express's face preprocessing has no crop: ours used" in uis[face]["emo_summary"][0], uis[face]["emo_summary"]
    else:
        assert re.search(r"\d+ clips? of \d+ frames \+ \d+ motion frames", summary), summary


@pytest.mark.skipif(not (ROOT / "emo_model" / "demo_assets" / "emo-tiny-demo.safetensors").is_file(), reason="the demo model is not built")
def test_demo_workflow_runs_as_shipped(pack, env):
    """The CPU demo workflow, unchanged (preset steps, built-in model and sample files): an mp4 with sound."""
    import soundfile as sf

    from emo_model import demo
    from emo_model.audio.signal import num_video_frames
    from emo_model.video_io import probe_video

    graph = json.loads((ROOT / "workflows" / "api" / "emo_demo_cpu.api.json").read_text())
    outputs, uis = run_api(graph, {**CORE_STANDINS, **pack.NODE_CLASS_MAPPINGS})
    info = sf.info(str(demo.audio_path()))
    frames, fps = outputs["4"][2], outputs["4"][3]
    assert frames == num_video_frames(info.frames, info.samplerate, fps)
    images = outputs["6"][0]
    assert tuple(images.shape) == (frames, 64, 64, 3) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert float(images.std()) > 0.05  # a picture, not a flat or blank tensor
    # the shipped graph leaves steps/cfg/clip widgets at 0 / -1: the demo's preset, stated after the run
    summary = uis["6"]["emo_summary"][0]
    assert "clips of 8 frames + 2 motion frames · 20 ddim steps · cfg 2 · audio_cfg 2 · 64x64" in summary, summary
    assert uis["5"]["emo_summary"][0].startswith("portrait encoded at 64x64 (the model's preset size)")
    # every EMO node sends the model's preset: the frontend's "(preset: 20)" labels resolve even on a run where
    # Load EMO Model is cached (ComfyUI sends nothing for a cached upstream node)
    assert uis["2"]["emo_preset"][0]["steps"] == 20
    for node in ("4", "5", "6"):
        assert uis[node]["emo_preset"] == uis["2"]["emo_preset"], node
    video = probe_video(outputs["7"][1])
    assert video.num_frames == frames and video.audio_codec == "aac"


def test_video_combine_refuses_a_prefix_that_escapes_the_output_folder(pack, env):
    combine = pack.NODE_CLASS_MAPPINGS["EMOVideoCombine"]()
    frames = torch.rand(4, 64, 64, 3)
    with pytest.raises(ValueError, match="outside the output folder"):
        combine.combine(frames, 25.0, "../escaped/evil", "mp4", 19)
    assert not list(env["output"].parent.rglob("evil*"))


def test_video_combine_embeds_the_workflow(pack, env):
    from emo_model.video_io import probe_video

    combine = pack.NODE_CLASS_MAPPINGS["EMOVideoCombine"]()
    result = combine.combine(torch.rand(5, 64, 64, 3), 25.0, "meta/test", "mp4", 19, prompt={"1": {"class_type": "X"}}, extra_pnginfo={"workflow": {"nodes": [1, 2]}})
    path = result["result"][1]
    assert Path(path).parent == env["output"] / "meta"
    meta = probe_video(path).metadata
    assert json.loads(meta["workflow"]) == {"nodes": [1, 2]} and json.loads(meta["prompt"]) == {"1": {"class_type": "X"}}


def test_video_combine_sends_its_own_player_and_a_summary(pack, env):
    """web/js/emo.js plays "emo_video" inside the node; a core "images" entry would add core's floating preview too."""
    combine = pack.NODE_CLASS_MAPPINGS["EMOVideoCombine"]()
    ui = combine.combine(torch.rand(5, 48, 64, 3), 20.0, "EMO/clip", "webm", 30)["ui"]
    assert "images" not in ui and "animated" not in ui
    assert ui["emo_video"] == [{"filename": "clip_00001_.webm", "subfolder": "EMO", "type": "output", "format": "video/webm"}]
    assert ui["emo_summary"] == ["EMO/clip_00001_.webm · 5 frames · 0.25 s at 20 fps · 64x48"]
    js = (ROOT / "web" / "js" / "emo.js").read_text()
    assert "message?.emo_video?.[0]" in js and '"EMOVideoCombine"' in js  # the extension reads that key for this node
    json.dumps(ui)  # what the server sends to the frontend


def test_sampler_interrupt_raises_and_returns_nothing(pack, env, monkeypatch):
    graph = tiny_graph(json.loads((ROOT / "workflows" / "api" / "emo_portrait_speech.api.json").read_text()))
    classes = {**CORE_STANDINS, **pack.NODE_CLASS_MAPPINGS}
    calls = {"n": 0}

    def interrupted():
        calls["n"] += 1
        return calls["n"] > 2

    monkeypatch.setattr(pack.nodes._comfy, "interrupted", interrupted)
    before = set(env["output"].rglob("*"))
    with pytest.raises(RuntimeError, match="interrupted"):
        run_api(graph, classes)
    assert set(env["output"].rglob("*")) == before


def test_a_new_sampler_node_uses_the_model_s_own_sampler(pack):
    """A DDIM default would be refused by flow models (MEMO): new nodes start on 'preset'; saved workflows keep theirs."""
    kind, options = _inputs(pack.NODE_CLASS_MAPPINGS["EMOSampler"])["sampler"]
    assert kind[0] == "preset" and options["default"] == "preset" and {"ddim", "flow_euler"} <= set(kind)
    assert "preset: the model's own" in options["tooltip"]


def test_sampler_validates_the_speed_curve_at_queue_time(pack):
    sampler = pack.NODE_CLASS_MAPPINGS["EMOSampler"]
    assert sampler.VALIDATE_INPUTS(speed_curve="0.2, 1.0;1.3") is True
    assert sampler.VALIDATE_INPUTS(speed_curve=None) is True  # linked: not known yet
    assert "numbers" in sampler.VALIDATE_INPUTS(speed_curve="fast, slow")
    assert ">= 0" in sampler.VALIDATE_INPUTS(speed_curve="0.5, -1")


def test_loader_names_the_missing_demo_model(pack, env, monkeypatch, tmp_path):
    import sys

    cls = pack.NODE_CLASS_MAPPINGS["LoadEMOModel"]
    module = sys.modules[cls.__module__]
    assert module.DEMO_ENTRY in cls.INPUT_TYPES()["required"]["model"][0]
    monkeypatch.setattr(module.demo, "model_path", lambda: tmp_path / "gone.safetensors")
    encoders = cls.INPUT_TYPES()["required"]["audio_encoder"][0]
    with pytest.raises(FileNotFoundError, match="demo model is missing.*make-demo"):
        cls().load(module.DEMO_ENTRY, "(bundled with the model / not needed)", encoders[0], "fp32", "standard")


def test_model_lists_show_multi_file_checkpoints_once(pack, env):
    loader = pack.NODE_CLASS_MAPPINGS["LoadEMOModel"].INPUT_TYPES()["required"]
    assert "hallo/net.pth" in loader["model"][0] and "emo/emo.safetensors" in loader["model"][0]
    assert "sd-vae-ft-mse/" in loader["vae"][0]
    assert not any(v.startswith("sd-vae-ft-mse/") and v != "sd-vae-ft-mse/" for v in loader["vae"][0])
    assert "wav2vec2-base-960h/" in loader["audio_encoder"][0]
    assert not any(v.startswith("wav2vec2-base-960h/") and len(v) > len("wav2vec2-base-960h/") for v in loader["audio_encoder"][0])


def test_loader_names_the_files_a_family_needs(pack, env):
    folder = env["models"] / "emo" / "broken_echomimic"
    folder.mkdir()
    from emo_model.network.model import EMOModel

    with torch.device("meta"):
        model = EMOModel("tiny-echomimic")
    motion = {k.removeprefix("denoising_unet."): torch.zeros(v.shape) for k, v in model.state_dict().items() if ".motion_modules." in k}
    torch.save(motion, folder / "motion_module.pth")
    loader = pack.NODE_CLASS_MAPPINGS["LoadEMOModel"]()
    with pytest.raises(Exception, match="denoising_unet.pth"):
        loader.load("broken_echomimic/", "(bundled with the model / not needed)", "(none: log-mel demo, or use a core AUDIO_ENCODER_OUTPUT)", "fp32", "standard")
    with pytest.raises(FileNotFoundError, match="models"):
        loader.load("missing.safetensors", "(bundled with the model / not needed)", "(none: log-mel demo, or use a core AUDIO_ENCODER_OUTPUT)", "fp32", "standard")


def test_a_missing_model_is_refused_when_queued_saying_where_it_goes(pack, env):
    """The workflows name files an artist may not have yet: the queue-time error says the exact place."""
    loader = pack.NODE_CLASS_MAPPINGS["LoadEMOModel"]
    for listed in ("emo-tiny-demo (built in, CPU)", "hallo/net.pth", "emo/emo.safetensors", None):  # None: a linked input
        assert loader.VALIDATE_INPUTS(model=listed) is True, listed
    message = loader.VALIDATE_INPUTS(model="weights/hallo/net.pth")
    assert f"put it at {(env['models'] / 'emo' / 'weights' / 'hallo' / 'net.pth').as_posix()} " in message
    assert "fudan-generative-ai/hallo, file hallo/net.pth" in message and "press R" in message and "\n" not in message
    message = loader.VALIDATE_INPUTS(model="old/hallo2/net.pth")  # the same file name: the folder says which family
    assert f"put it at {(env['models'] / 'emo' / 'old' / 'hallo2' / 'net.pth').as_posix()} " in message
    assert "fudan-generative-ai/hallo2, file hallo2/net.pth" in message
    message = loader.VALIDATE_INPUTS(model="echomimic_v1/")
    assert f"put it at {(env['models'] / 'emo' / 'echomimic_v1').as_posix()}/ " in message
    assert "denoising_unet.pth" in message and "BadToBest/EchoMimic" in message and "memoavatar" not in message
    message = loader.VALIDATE_INPUTS(model="memo_weights/")  # a folder named after its family says which
    assert "diffusion_net/" in message and "memoavatar/memo" in message and "BadToBest" not in message
    message = loader.VALIDATE_INPUTS(model="echomimic_v2_weights/")  # two families start with "echomimic": the full name decides
    assert "pose_encoder.pth" in message and "EchoMimicV2" in message and "EchoMimic v1" not in message
    message = loader.VALIDATE_INPUTS(model="v_express_weights/")
    assert "v_kps_guider.bin" in message and "memoavatar" not in message


# ---- widgets whose 0 / -1 means "the model's preset" ----------------------------------------------------

# every widget whose sentinel stands for something else (literal: the list)
PRESET_BACKED = {
    ("EMOSampler", "steps"): 0,
    ("EMOSampler", "cfg"): 0.0,
    ("EMOSampler", "audio_cfg"): 0.0,
    ("EMOSampler", "frames_per_clip"): 0,
    ("EMOSampler", "motion_frames"): -1,
    ("EMOAudioEncode", "fps"): 0.0,
    ("EMOReferenceEncode", "size"): 0,
}


def _presets_module(pack):
    import sys

    return sys.modules[f"{pack.__name__}.nodes.presets"]


def test_preset_backed_widgets_are_registered_and_their_tooltips_say_what_the_sentinel_means(pack):
    table = _presets_module(pack).PRESET_WIDGETS
    registered = {(node, name): entry[0] for node, widgets in table.items() for name, entry in widgets.items()}
    assert registered == PRESET_BACKED
    for (node, name), sentinel in PRESET_BACKED.items():
        kind, options = _inputs(pack.NODE_CLASS_MAPPINGS[node])[name]
        assert kind in ("INT", "FLOAT") and options["default"] == sentinel and options["min"] == sentinel
        assert f"{sentinel:g} = " in options["tooltip"], (node, name)
    # no other number widget of ours hides a "preset" meaning behind a number
    for node, cls in pack.NODE_CLASS_MAPPINGS.items():
        for name, (kind, *rest) in _inputs(cls).items():
            if kind in ("INT", "FLOAT") and "preset" in (rest[0] if rest else {}).get("tooltip", "") and (node, name) not in PRESET_BACKED:
                pytest.fail(f"{node}.{name} mentions a preset but is not a registered preset-backed widget")


def test_the_web_extension_labels_the_same_widgets(pack):
    js = (ROOT / "web" / "js" / "emo.js").read_text()
    literal = js.split("/* PRESET_WIDGETS */", 1)[1].split("/* END PRESET_WIDGETS */", 1)[0]
    assert json.loads(literal) == _presets_module(pack).PRESET_WIDGETS
    summary_nodes = js.split("SUMMARY_NODES", 1)[1].split(";", 1)[0]
    video_nodes = js.split("VIDEO_NODES", 1)[1].split(";", 1)[0]
    for node in ("LoadEMOModel", "EMOAudioEncode", "EMOReferenceEncode", "EMOSampler"):  # show a summary, send the preset
        assert f'"{node}"' in summary_nodes, node
    # every node that sends a summary line is one the extension shows it for (EMO Face Mask's once was not)
    import inspect

    for node, cls in pack.NODE_CLASS_MAPPINGS.items():
        if '"emo_summary"' in inspect.getsource(cls) or '"emo_summary"' in inspect.getsource(getattr(cls, cls.FUNCTION)):
            assert f'"{node}"' in summary_nodes or f'"{node}"' in video_nodes, f"{node} sends emo_summary that the page never shows"


@pytest.mark.skipif(not (ROOT / "emo_model" / "demo_assets" / "emo-tiny-demo.safetensors").is_file(), reason="the demo model is not built")
def test_load_emo_model_shows_the_values_preset_widgets_stand_for(pack):
    loader = pack.NODE_CLASS_MAPPINGS["LoadEMOModel"]
    out = loader().load(
        "emo-tiny-demo (built in, CPU)", "(bundled with the model / not needed)", "(none: log-mel demo, or use a core AUDIO_ENCODER_OUTPUT)", "fp32", "standard"
    )
    assert out["result"][0].name == "emo-tiny-demo"
    preset = out["ui"]["emo_preset"][0]
    # the demo's preset (docs/demo.md, README "Families and presets")
    assert preset == {"steps": 20, "cfg": 2.0, "audio_cfg": 2.0, "frames_per_clip": 8, "motion_frames": 2, "fps": 25.0, "size": 64, "sampler": "ddim"}
    summary = out["ui"]["emo_summary"][0]
    for words in ("20 ddim steps", "cfg 2", "8 frames per clip + 2 motion frames", "25 fps", "64x64"):
        assert words in summary, summary
    json.dumps(out["ui"])  # what the server sends to the frontend
    assert "distilled" not in summary
    session = out["result"][0]
    session.info["distilled_from"] = "teacher.safetensors"  # what Session.load reads from a student's metadata
    summary = _presets_module(pack).preset_summary(session)
    assert summary.endswith(" · a distilled student of teacher.safetensors (its guidance folded in)"), summary


def test_live_preview_is_sent_at_the_frame_size_so_the_caption_tells_the_truth(pack):
    """ComfyUI fits a preview into max_size x max_size (ImageOps.contain, which enlarges too) and the frontend
    captions it with the result's size: a 64x64 frame sent with max_size 512 read "512 x 512"."""
    import sys

    from PIL import ImageOps

    _comfy = sys.modules[f"{pack.__name__}.nodes._comfy"]
    sent = []

    class Bar:
        def update_absolute(self, value, total, preview):
            sent.append(preview)

    progress = _comfy.Progress(10)
    progress.bar = Bar()
    for side, shown in ((64, 64), (512, 512), (768, 512)):
        progress.preview(torch.rand(side, side, 3))
        kind, image, max_size = sent[-1]
        assert kind == "JPEG" and image.size == (side, side)
        assert ImageOps.contain(image, (max_size, max_size)).size == (shown, shown)  # what the server sends


@pytest.mark.skipif(not (ROOT / "emo_model" / "demo_assets" / "emo-tiny-demo.safetensors").is_file(), reason="the demo model is not built")
def test_sampler_fast_option_runs_the_fast_mode_and_says_so(pack, env):
    graph = json.loads((ROOT / "workflows" / "api" / "emo_demo_cpu.api.json").read_text())
    graph["6"]["inputs"]["fast"] = True
    outputs, uis = run_api(graph, {**CORE_STANDINS, **pack.NODE_CLASS_MAPPINGS})
    summary = uis["6"]["emo_summary"][0]
    # the demo preset is 20 DDIM steps: the fast mode takes 0.4x of them (8) with DPM++ 2M
    assert "· 8 dpmpp_2m steps" in summary and "fast (deep features reused, full denoiser every 2 steps)" in summary, summary
    images = outputs["6"][0]
    assert images.shape[0] == outputs["4"][2] and bool(torch.isfinite(images).all()) and float(images.std()) > 0.05


def test_every_widget_value_the_node_offers_passes_its_validation_rule(pack):
    """A number widget named after a validation rule offers nothing the rule refuses (its ends inside the rule's; a
    preset-backed widget's sentinel aside), so no value an artist can set is refused when queued."""
    from emo_model.validation import RULES

    checked = []
    for node, cls in pack.NODE_CLASS_MAPPINGS.items():
        for name, (kind, *rest) in _inputs(cls).items():
            if kind not in ("INT", "FLOAT") or name not in RULES:
                continue
            options, rule = rest[0], RULES[name]
            lo = options["min"]
            if (node, name) in PRESET_BACKED and lo == PRESET_BACKED[(node, name)]:
                lo = options["min"] + (options.get("step", 1) if kind == "INT" else 0)  # the sentinel means "preset"
                lo = max(lo, rule.lo) if kind == "FLOAT" else lo
            assert rule.lo <= lo and options["max"] <= rule.hi, f"{node}.{name}: widget {options['min']}..{options['max']}, rule {rule.lo:g}..{rule.hi:g}"
            checked.append((node, name))
    assert len(checked) >= 8, checked  # steps, cfg, audio_cfg, fps, speed, frames_per_clip, motion_frames, seed, size, crf, ...


def test_face_keypoints_node_keeps_its_page_summary_short_and_logs_the_install_hint(pack, caplog):
    """EMO Face Keypoints on a frame batch (as VHS Load Video / an ImageBatch gives it in the real server): one POSE_KEYPOINT
    frame per image naming the mode; the summary says where the keypoints came from, the log how to get the original's."""
    import logging

    import cv2
    from skimage import data

    face = cv2.resize(data.astronaut()[30:230, 120:320], (128, 128), interpolation=cv2.INTER_AREA)
    frames = torch.from_numpy(face[None].repeat(3, 0)).float() / 255
    with caplog.at_level(logging.INFO, logger="ComfyUI-EMO"):
        result = pack.NODE_CLASS_MAPPINGS["EMOFaceKeypoints"]().run("naive_retarget", "auto", frames=frames)
    (keypoints,) = result["result"]
    assert len(keypoints) == 3 and {f["emo_retarget"] for f in keypoints} == {"naive_retarget"}
    assert (keypoints[0]["canvas_width"], keypoints[0]["canvas_height"]) == (128, 128)
    summary = result["ui"]["emo_summary"][0]
    assert summary == "3 frames · naive_retarget · keypoints by the face box", summary
    assert any("pip install insightface" in r.getMessage() for r in caplog.records)
