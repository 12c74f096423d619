"""``emo download`` and Load EMO Model's "download missing files" switch, against a loopback stand-in for the Hub.

The stand-in (``FakeHub``) answers what huggingface_hub asks: ``POST /api/models/<repo>/paths-info/<rev>`` (sizes,
git blob ids, LFS sha256) and ``HEAD`` / ``GET /<repo>/resolve/<rev>/<path>`` with ETag, X-Repo-Commit,
X-Linked-Size / X-Linked-Etag and Range. ``HF_ENDPOINT`` points at it, and every other connection is refused
(``no_network``): nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import torch
from comfy_harness import load_pack, tiny_wav2vec2_folder
from conftest import tiny_vae

from emo_model.app.cli import main
from emo_model.families import get_family
from emo_model.weights import hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".onnx")


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


class FakeHub:
    """Files by (repo, path); ``served`` may differ from ``files`` (a corrupted transfer); every request is logged."""

    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.served: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.gated: set[str] = set()
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _record(self):
                hub_.requests.append((self.command, unquote(urlparse(self.path).path), dict(self.headers)))

            def _json(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                self._record()
                path = unquote(urlparse(self.path).path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if not path.startswith("/api/models/") or "/paths-info/" not in path:
                    return self._json(404, {"error": "not found"})
                repo = path.removeprefix("/api/models/").split("/paths-info/")[0]
                if repo in hub_.gated:  # what the Hub answers for a gated repository without an accepted licence
                    self.send_response(401)
                    self.send_header("X-Error-Code", "GatedRepo")
                    self.send_header("X-Error-Message", "Access to model is restricted.")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if not any(r == repo for r, _ in hub_.files):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    paths = json.loads(body)["paths"]
                else:
                    paths = parse_qs(body).get("paths", [])
                out = []
                for p in paths:
                    data = hub_.files.get((repo, p))
                    if data is None:
                        continue
                    entry = {"type": "file", "path": p, "size": len(data), "oid": blob_id(data)}
                    if p.endswith(LFS_SUFFIXES):
                        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                    out.append(entry)
                return self._json(200, out)

            def _resolve(self, send_body: bool):
                self._record()
                path = unquote(urlparse(self.path).path).lstrip("/")
                if "/resolve/" not in path:
                    return self._json(404, {"error": "not found"})
                repo, rest = path.split("/resolve/", 1)
                file = rest.split("/", 1)[1]
                if (repo, file) not in hub_.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                real = hub_.files[(repo, file)]
                data = hub_.served.get((repo, file), real)
                etag = hashlib.sha256(real).hexdigest() if file.endswith(LFS_SUFFIXES) else blob_id(real)
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Repo-Commit", COMMIT)
                if file.endswith(LFS_SUFFIXES):
                    self.send_header("X-Linked-Size", str(len(real)))
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                self.end_headers()
                if send_body:
                    self.wfile.write(data[start:])
                return None

            def do_HEAD(self):  # noqa: N802
                self._resolve(send_body=False)

            def do_GET(self):  # noqa: N802
                self._resolve(send_body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def gets(self) -> list[tuple[str, dict]]:
        return [(path, headers) for method, path, headers in self.requests if method == "GET"]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection to somewhere other than this machine fails the test."""
    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "localhost", "::1") and not str(host).startswith("/"):
            raise AssertionError(f"a test tried to reach {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def fake_hub(monkeypatch, no_network):
    server = FakeHub()
    server.thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # in case the machine runs the suite offline
    yield server
    server.server.shutdown()
    server.server.server_close()


def publish(server: FakeHub, family: str, *, optional: bool = False, size: int = 3000) -> dict:
    """Random content for each file the family downloads; returns {(folder, dest): bytes}."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for i, f in enumerate(get_family(family).downloads):
        data = bytes(torch.randint(0, 256, (size + 7 * i,), generator=gen, dtype=torch.uint8).tolist())
        server.files.setdefault((f.repo, f.path), data)
        if optional or not f.optional:
            out[(f.folder, f.dest)] = server.files[(f.repo, f.path)]
    return out


def test_every_published_family_names_where_its_files_go():
    from emo_model.families import FAMILIES

    published = [fam for fam in FAMILIES if fam.downloads]
    assert {"hallo", "hallo2", "echomimic-v1", "echomimic-v2", "memo"} <= {fam.name for fam in published}
    for fam in published:
        folders = {f.folder for f in fam.downloads if not f.optional}
        assert folders == {"emo", "vae", "audio_encoders"}, fam.name  # the model, its VAE and its audio encoder
        assert all(f.repo.count("/") == 1 and not f.dest.startswith("/") and ".." not in f.dest for f in fam.downloads)
    dests = {fam.name: {f.dest for f in fam.downloads} for fam in published}
    assert "hallo/net.pth" in dests["hallo"] and "hallo2/net.pth" in dests["hallo2"]  # the folder name selects Hallo2
    assert {"echomimic/denoising_unet.pth", "whisper_tiny.pt"} <= dests["echomimic-v1"]
    assert "memo/diffusion_net/diffusion_pytorch_model.safetensors" in dests["memo"]
    assert {"echomimic_v2/pose_encoder.pth", "whisper_tiny.pt"} <= dests["echomimic-v2"]  # its own folder, v1's whisper


def test_download_announces_sizes_and_puts_each_file_in_its_folder(fake_hub, tmp_path, capsys):
    expected = publish(fake_hub, "hallo")
    assert main(["download", "hallo", "--models", str(tmp_path / "models")]) == 0
    out = capsys.readouterr().out
    net = expected[("emo", "hallo/net.pth")]
    assert "emo/hallo/net.pth" in out and hub.size_text(len(net)) in out
    assert f"to download: {hub.size_text(sum(len(v) for v in expected.values()))}" in out
    assert out.index("to download") < out.index("fetching")  # announced before anything is fetched
    for (folder, dest), data in expected.items():
        assert (tmp_path / "models" / folder / dest).read_bytes() == data
    assert (tmp_path / "models" / "vae" / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "models" / "audio_encoders" / "wav2vec2-base-960h" / "model.safetensors").is_file()
    assert not list((tmp_path / "models").rglob("*" + hub.INCOMPLETE))
    # a second run finds every file there and verified: nothing is fetched again
    before = len(fake_hub.gets())
    assert main(["download", "hallo", "--models", str(tmp_path / "models")]) == 0
    assert len(fake_hub.gets()) == before and "there, verified" in capsys.readouterr().out


def test_dry_run_announces_and_fetches_nothing(fake_hub, tmp_path, capsys):
    publish(fake_hub, "memo", optional=True)
    assert main(["download", "memo", "--models", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "optional, --optional" in out and "emotion2vec_plus_large/model.pt" in out
    assert not fake_hub.gets() and not any(tmp_path.iterdir())


def test_an_interrupted_download_resumes_where_it_stopped(fake_hub, tmp_path):
    expected = publish(fake_hub, "hallo", size=20000)
    net = expected[("emo", "hallo/net.pth")]
    target = tmp_path / "emo" / "hallo" / "net.pth"
    target.parent.mkdir(parents=True)
    target.with_name("net.pth" + hub.INCOMPLETE).write_bytes(net[:12345])
    assert main(["download", "hallo", "--models", str(tmp_path)]) == 0
    assert target.read_bytes() == net
    ranges = [h.get("Range") for path, h in fake_hub.gets() if path.endswith("/hallo/net.pth")]
    assert ranges == ["bytes=12345-"]  # only the rest was asked for


def test_a_corrupted_transfer_fails_the_checksum_in_one_line(fake_hub, tmp_path, capsys):
    expected = publish(fake_hub, "hallo")
    real = fake_hub.files[("fudan-generative-ai/hallo", "hallo/net.pth")]
    fake_hub.served[("fudan-generative-ai/hallo", "hallo/net.pth")] = bytes([real[0] ^ 1]) + real[1:]
    assert main(["download", "hallo", "--models", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: emo/hallo/net.pth: the downloaded file does not match the sha256") and "\n" not in err, err
    target = tmp_path / "emo" / "hallo" / "net.pth"
    assert not target.exists() and not target.with_name("net.pth" + hub.INCOMPLETE).exists()
    assert expected


def test_a_users_different_file_is_never_replaced_unasked(fake_hub, tmp_path, capsys):
    expected = publish(fake_hub, "hallo")
    mine = tmp_path / "vae" / "sd-vae-ft-mse" / "config.json"
    mine.parent.mkdir(parents=True)
    mine.write_text('{"mine": true}')
    assert main(["download", "hallo", "--models", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: vae/sd-vae-ft-mse/config.json differs from the published files") and "--overwrite" in err
    assert mine.read_text() == '{"mine": true}'
    assert (tmp_path / "emo" / "hallo" / "net.pth").read_bytes() == expected[("emo", "hallo/net.pth")]  # the rest came
    assert main(["download", "hallo", "--models", str(tmp_path), "--overwrite"]) == 0
    assert mine.read_bytes() == expected[("vae", "sd-vae-ft-mse/config.json")]


@pytest.mark.parametrize("argv, expect", [
    (["download"], "error: name the family to download: hallo, hallo2, "),  # then every other published family
    (["download", "halo"], "error: unknown family 'halo'; choose one of: hallo, hallo2, "),
    (["download", "emo"], "error: EMO has no published weights to download"),
])
def test_a_wrong_family_is_one_line_listing_the_choices(fake_hub, tmp_path, capsys, argv, expect):
    assert main(argv + ["--models", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(expect) and "\n" not in err, err
    assert not fake_hub.requests


def test_a_family_prefix_or_label_is_enough(fake_hub, tmp_path):
    publish(fake_hub, "echomimic-v1")
    assert main(["download", "EchoMimic v1", "--models", str(tmp_path)]) == 0  # "echomimic" alone: v1 or v2
    assert (tmp_path / "emo" / "echomimic" / "face_locator.pth").is_file()
    assert (tmp_path / "audio_encoders" / "whisper_tiny.pt").is_file()
    assert not (tmp_path / "emo" / "echomimic" / "motion_module_acc.pth").exists()  # optional: only with --optional


def test_an_unreachable_hub_is_one_line(monkeypatch, no_network, tmp_path, capsys):
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert main(["download", "hallo", "--models", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: fudan-generative-ai/hallo: could not reach http://127.0.0.1:") and "\n" not in err, err


# ---- the node --------------------------------------------------------------------------------------------------

NO_VAE = "(bundled with the model / not needed)"


@pytest.fixture
def comfy_models(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("EMO_MODELS_DIR", str(models))
    return models


def publish_tiny_hallo(server: FakeHub, source: Path) -> None:
    """The Hallo download as loadable tiny files: a tiny-hallo net.pth, a tiny VAE and a tiny wav2vec2 folder."""
    from conftest import perturb_zero_inits

    from emo_model.network.model import EMOModel

    torch.manual_seed(1)
    hallo = perturb_zero_inits(EMOModel("tiny-hallo").eval())
    torch.save({k: v.clone() for k, v in hallo.state_dict().items()}, source / "net.pth")
    tiny_vae().save_pretrained(source / "vae")
    tiny_wav2vec2_folder(source / "wav2vec2")
    (source / "wav2vec2" / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True, "sampling_rate": 16000}))
    for f in get_family("hallo").downloads:
        if f.optional:  # the node fetches what the model needs; the extras only with `emo download --optional`
            continue
        local = {"emo": source / "net.pth", "vae": source / "vae" / Path(f.dest).name,
                 "audio_encoders": source / "wav2vec2" / Path(f.dest).name}[f.folder]
        server.files[(f.repo, f.path)] = local.read_bytes()


def test_the_node_downloads_only_when_switched_on(fake_hub, comfy_models, tmp_path):
    pack = load_pack()
    loader_cls = pack.NODE_CLASS_MAPPINGS["LoadEMOModel"]
    spec = loader_cls.INPUT_TYPES()["optional"]["download_missing"]
    assert spec[0] == "BOOLEAN" and spec[1]["default"] is False and spec[1]["tooltip"]
    source = tmp_path / "source"
    source.mkdir()
    publish_tiny_hallo(fake_hub, source)
    entries = ("hallo/net.pth", "sd-vae-ft-mse/", "wav2vec2-base-960h/")
    # default: refused when queued (saying where each goes), nothing fetched
    message = loader_cls.VALIDATE_INPUTS(*entries)
    assert "put it at" in message and "download_missing" in message
    with pytest.raises(FileNotFoundError):
        loader_cls().load(*entries, "fp32", "standard")
    assert not fake_hub.requests and not any(comfy_models.rglob("*.*"))
    # switched on: accepted when queued, fetched and loaded
    assert loader_cls.VALIDATE_INPUTS(*entries, download_missing=True) is True
    out = loader_cls().load(*entries, "fp32", "standard", download_missing=True)
    session = out["result"][0]
    assert session.config.family == "hallo"
    assert out["ui"]["emo_summary"][0].startswith("downloaded 6 files (")  # the node says what it fetched
    assert (comfy_models / "emo" / "hallo" / "net.pth").read_bytes() == (source / "net.pth").read_bytes()
    assert (comfy_models / "vae" / "sd-vae-ft-mse" / "config.json").is_file()
    assert (comfy_models / "audio_encoders" / "wav2vec2-base-960h" / "model.safetensors").is_file()
    # everything there: nothing asked of the hub again
    before = len(fake_hub.requests)
    loader_cls().load(*entries, "fp32", "standard", download_missing=True)
    assert len(fake_hub.requests) == before


def test_a_missing_vae_or_audio_encoder_says_where_it_goes_and_where_it_comes_from(comfy_models):
    loader_cls = load_pack().NODE_CLASS_MAPPINGS["LoadEMOModel"]
    demo = "emo-tiny-demo (built in, CPU)"
    message = loader_cls.VALIDATE_INPUTS(demo, "sd-vae-ft-mse/", "(none: log-mel demo, or use a core AUDIO_ENCODER_OUTPUT)")
    place = (comfy_models / "vae" / "sd-vae-ft-mse").as_posix()
    assert message.startswith(f"the VAE 'sd-vae-ft-mse/' is not in models/vae: put it at {place}/ ")
    assert "from Hugging Face: stabilityai/sd-vae-ft-mse" in message and "\n" not in message
    message = loader_cls.VALIDATE_INPUTS(demo, NO_VAE, "whisper_tiny.pt")
    assert message.startswith("the audio encoder 'whisper_tiny.pt' is not in models/audio_encoders: put it at ")
    assert "audio_processor/whisper_tiny.pt, from Hugging Face: BadToBest/EchoMimic" in message
    message = loader_cls.VALIDATE_INPUTS(demo, NO_VAE, "wav2vec2-base-960h/")
    assert "from Hugging Face: facebook/wav2vec2-base-960h" in message
    message = loader_cls.VALIDATE_INPUTS(demo, NO_VAE, "my_encoder.safetensors")  # nobody publishes it: what the family needs
    assert message.startswith("the audio encoder 'my_encoder.safetensors'") and "download_missing" not in message
    assert "wav2vec2-base-960h/ (" in message and "from Hugging Face: facebook/wav2vec2-base-960h" in message  # what is published
    message = loader_cls.VALIDATE_INPUTS(demo, "my_vae.safetensors", None)  # a name nobody publishes: the published VAE, and its source
    assert "sd-vae-ft-mse/ (" in message and "from Hugging Face: stabilityai/sd-vae-ft-mse" in message, message
    assert loader_cls.VALIDATE_INPUTS(demo, NO_VAE, None) is True  # linked / not sent: not checked here


def test_comfyuis_log_names_the_model_emo_and_its_family():
    """ComfyUI logs "Requested to load <class name>" for every ModelPatcher it loads: ours says EMO and the family."""
    from types import SimpleNamespace

    from emo_model.families import get_config

    comfy = __import__(f"{load_pack().__name__}.nodes._comfy", fromlist=["networks_of"])
    for config, name in (("tiny-hallo", "EMO Hallo"), ("tiny-echomimic", "EMO EchoMimic v1"), ("tiny", "EMO tiny"), ("emo", "EMO")):
        session = SimpleNamespace(model=torch.nn.Linear(1, 1), codec=None, audio_encoder=None, config=get_config(config))
        networks = comfy.networks_of(session)
        assert type(networks).__name__ == name and isinstance(networks, torch.nn.Module)
        assert networks.emo is session.model


def test_an_older_huggingface_hub_without_tqdm_class_still_shows_progress(fake_hub, tmp_path, monkeypatch):
    """huggingface_hub 0.2x (what transformers 4.x pins) takes a ready-made bar (_tqdm_bar), not a tqdm class."""
    import huggingface_hub.file_download as fd

    real = fd.http_get
    seen = []

    def http_get(url, temp_file, *, resume_size=0, headers=None, expected_size=None, _tqdm_bar=None):
        seen.append(_tqdm_bar)
        return real(url, temp_file, resume_size=resume_size, headers=headers, expected_size=expected_size, _tqdm_bar=_tqdm_bar)

    monkeypatch.setattr(fd, "http_get", http_get)
    expected = publish(fake_hub, "hallo")
    got = []
    planned = hub.plan([f for f in get_family("hallo").downloads if not f.optional], tmp_path)
    hub.fetch(planned, on_bytes=got.append, quiet=True)
    assert len(seen) == len(expected) and all(bar is not None for bar in seen)
    assert sum(got) == sum(len(v) for v in expected.values())  # every byte reached the progress callback
    assert (tmp_path / "emo" / "hallo" / "net.pth").read_bytes() == expected[("emo", "hallo/net.pth")]


def test_the_optional_face_detector_has_a_source_line_too(comfy_models):
    """models/emo/face's YuNet file: not fetched by the switch (optional), but its missing-file line names the repository."""
    loader = __import__(f"{load_pack().__name__}.nodes.loader", fromlist=["missing_file_message"])
    message = loader.missing_file_message("face detector", "emo", "face/face_detection_yunet_2023mar.onnx", "")
    assert message.startswith("the face detector 'face/face_detection_yunet_2023mar.onnx' is not in models/emo: put it at ")
    assert "from Hugging Face: opencv/face_detection_yunet" in message and "download_missing" not in message
    # and EMO Face Mask asked for detector yunet without the file says just that, before any work
    pack = load_pack()
    face = pack.NODE_CLASS_MAPPINGS["EMOFaceMask"]()
    with pytest.raises(Exception) as excinfo:
        face.run(torch.rand(1, 64, 64, 3), 64, 1.2, "face", 2.0, "yunet", "center", 0, False)
    text = str(excinfo.value)
    assert text.startswith("the face detector 'face/face_detection_yunet_2023mar.onnx' is not in models/emo: put it at "), text
    assert f"{(comfy_models / 'emo' / 'face').as_posix()}/face_detection_yunet_2023mar.onnx" in text and "\n" not in text, text


def test_a_gated_or_changed_repository_is_one_line(fake_hub, tmp_path, capsys):
    publish(fake_hub, "hallo")
    fake_hub.gated.add("fudan-generative-ai/hallo")
    assert main(["download", "hallo", "--models", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: fudan-generative-ai/hallo is gated: accept its terms on ") and "\n" not in err, err
    fake_hub.gated.clear()
    del fake_hub.files[("fudan-generative-ai/hallo", "hallo/net.pth")]  # the repository moved its file
    fake_hub.files[("fudan-generative-ai/hallo", "README.md")] = b"moved"
    assert main(["download", "hallo", "--models", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: fudan-generative-ai/hallo has no file hallo/net.pth at main any more; "
                   "this version of the pack cannot fetch it"), err
    assert not any(tmp_path.rglob("*.*"))  # refused before anything was fetched


@pytest.mark.parametrize("family", ["hallo", "hallo2", "memo"])
def test_face_analysis_files_land_where_the_face_front_end_looks(family, tmp_path):
    """`emo download FAMILY --optional` puts the original's insightface pack and MediaPipe landmarker where
    identity.py and face/front_ends.py find them under ComfyUI's models folder (as the nodes search it)."""
    from emo_model.face.front_ends import find_landmarker
    from emo_model.families import get_family
    from emo_model.network.identity import find_insightface_pack

    files = [f for f in get_family(family).downloads if f.folder == "face_analysis"]
    assert {Path(f.dest).name for f in files} >= {"face_landmarker_v2_with_blendshapes.task", "glintr100.onnx",
                                                  "scrfd_10g_bnkps.onnx"}
    assert all(f.optional for f in files)
    models = tmp_path / "models"
    assert find_landmarker([str(models)]) is None and find_insightface_pack(models) is None
    for f in files:
        (models / f.folder / f.dest).parent.mkdir(parents=True, exist_ok=True)
        (models / f.folder / f.dest).write_bytes(b"x")
    assert find_landmarker([str(models)]) == str(models / "face_analysis" / "models" / "face_landmarker_v2_with_blendshapes.task")
    assert find_insightface_pack(models) == models / "face_analysis" / "models"
