"""Reading the preprocessed dataset: segments from tar shards, training samples per stage, resumable order.

Storage (written by :mod:`emo_model.train.preprocess`): ``index.jsonl`` lists every segment with the
byte offset and size of its three members inside its tar shard, so :class:`SegmentStore` reads a
segment with one seek per member (no unpacking, no scan of the tar) and holds one segment at a time.
Shard files are opened lazily per process (DataLoader workers each open their own).

Samples (:class:`EMODataset`), as the paper trains (§3.3):

* stage 1: one target frame and the reference: another random frame of the same segment;
* stages 2 and 3: ``n + f`` contiguous frames (the first ``n`` are the motion frames), a reference frame
  drawn at random from the whole segment, the audio features of the ``f`` frames (each with its ±m
  neighbours from the real segment, clamped only at the segment's ends) and the speed labels of all
  ``n + f`` frames.

Every sample also carries the segment's face-region mask. Frames stay uint8 until the trainer moves
them to the device (4x less to pass between processes).

Determinism and resume. The sampler yields ``(epoch, index)`` pairs and the dataset derives all of a
sample's randomness from ``(seed, epoch, index)``, so a sample never depends on which worker made it or
what came before; :class:`ResumableSampler` shuffles per epoch from ``(seed, epoch)``, gives each rank
its own slice, and can start an epoch part-way. A resumed run therefore sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from torch.utils.data import Dataset, Sampler

from ..audio.signal import window_frames
from ..configs import AudioFeatureConfig
from ..validation import InputError


class DatasetError(InputError):
    """The dataset folder is missing, empty or does not fit the model / stage (a ValueError; one line from the CLI)."""


class SegmentStore:
    """Random access to the segments of a preprocessed dataset folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        index = self.root / "index.jsonl"
        if not index.is_file():
            raise DatasetError(f"{self.root}: no index.jsonl (make the dataset with `python -m emo_model preprocess`)")
        self.entries = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
        if not self.entries:
            raise DatasetError(f"{self.root}: the index lists no segments (see report.txt for why)")
        self._handles: dict[str, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self):  # file handles do not cross process boundaries
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def read(self, entry: dict, ext: str) -> bytes:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        shard = entry["shard"]
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = open(self.root / shard, "rb")
        offset, size = entry["members"][ext]
        handle.seek(offset)
        data = handle.read(size)
        if len(data) != size:
            raise DatasetError(f"{shard}: member {entry['key']}.{ext} is truncated")
        return data

    def meta(self, entry: dict) -> dict:
        return json.loads(self.read(entry, "json"))

    def tensors(self, entry: dict) -> dict[str, torch.Tensor]:
        return load_tensors(self.read(entry, "safetensors"))

    def frames(self, entry: dict, indices) -> np.ndarray:
        """Decoded RGB uint8 frames ``[len(indices), H, W, 3]`` (decoding stops after the last one needed)."""
        import av

        wanted = sorted(set(int(i) for i in indices))
        last = wanted[-1]
        found: dict[int, np.ndarray] = {}
        with av.open(io.BytesIO(self.read(entry, "mp4")), mode="r") as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    found[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
        missing = [i for i in wanted if i not in found]
        if missing:
            raise DatasetError(f"{entry['key']}: frames {missing[:3]} are not in its video ({entry['frames']} expected)")
        return np.stack([found[int(i)] for i in indices])


def split_holdout(entries: list[dict], count: int) -> tuple[list[int], list[int]]:
    """(train, held-out) entry positions; held out = the ``count`` keys with the smallest hash.

    Hash order keeps the choice stable when the dataset grows, and spreads it over sources.
    """
    if count <= 0:
        return list(range(len(entries))), []
    order = sorted(range(len(entries)), key=lambda i: hashlib.sha1(entries[i]["key"].encode()).hexdigest())
    held = sorted(order[:count])
    held_set = set(held)
    return [i for i in range(len(entries)) if i not in held_set], held


class EMODataset(Dataset):
    """Training samples of one stage; items are addressed by ``(epoch, index)`` (see the module docstring)."""

    def __init__(
        self,
        store: SegmentStore,
        positions: list[int],
        *,
        stage: int,
        frames: int,
        motion_frames: int,
        audio: AudioFeatureConfig,
        seed: int = 0,
    ):
        self.store, self.stage, self.seed = store, stage, seed
        self.frames = 1 if stage == 1 else frames
        self.motion_frames = 0 if stage == 1 else motion_frames
        self.audio = audio
        need = self.frames + self.motion_frames if stage > 1 else 2
        self.positions = [p for p in positions if store.entries[p]["frames"] >= need]
        if not self.positions:
            raise DatasetError(f"no segment has the {need} frames a stage-{stage} sample needs")
        kinds = {store.entries[p].get("audio_kind") for p in self.positions}
        if stage > 1 and kinds != {audio.kind}:
            raise DatasetError(f"the dataset's audio features are {sorted(map(str, kinds))}; this model reads {audio.kind}")

    def __len__(self) -> int:
        return len(self.positions)

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        entry = self.store.entries[self.positions[index]]
        rng = self.rng(epoch, index)
        total = entry["frames"]
        tensors = self.store.tensors(entry)
        sample = {"mask": tensors["mask"].float()}
        if self.stage == 1:
            target = int(rng.integers(total))
            reference = int((target + rng.integers(1, total)) % total)  # any other frame
            pixels = self.store.frames(entry, [target, reference])
            sample["frames"] = torch.from_numpy(pixels[:1])
            sample["reference"] = torch.from_numpy(pixels[1])
            return sample
        n, f = self.motion_frames, self.frames
        start = int(rng.integers(total - (n + f) + 1))
        reference = int(rng.integers(total))
        clip = list(range(start, start + n + f))
        pixels = self.store.frames(entry, clip + [reference])
        sample["frames"] = torch.from_numpy(pixels[:-1])
        sample["reference"] = torch.from_numpy(pixels[-1])
        sample["audio_features"] = segment_audio_features(tensors["audio_features"], self.audio, start + n, f)
        sample["speed"] = tensors["speed"][start : start + n + f].float()
        return sample


def segment_audio_features(per_frame: torch.Tensor, audio: AudioFeatureConfig, start: int, count: int) -> torch.Tensor:
    """The model's audio input for frames ``start .. start+count-1`` of a segment, float32.

    wav2vec2 / logmel segments store one feature block per frame; the ±margin window is built here from
    the segment's real neighbours. Whisper tokens are stored already windowed.
    """
    if audio.kind in ("wav2vec2", "logmel"):
        lo, hi = max(0, start - audio.margin), min(per_frame.shape[0], start + count + audio.margin)
        windows = window_frames(per_frame[lo:hi].float(), audio.margin)  # clamped at the slice ends only
        return windows[start - lo : start - lo + count].contiguous()
    return per_frame[start : start + count].float()


class ResumableSampler(Sampler):
    """Per-epoch shuffled ``(epoch, index)`` pairs for one rank, startable mid-epoch.

    The permutation comes from ``(seed, epoch)``; it is padded by wrapping to a multiple of
    ``world_size * batch_size`` so every rank gets the same number of full batches, and rank ``r`` takes
    every ``world_size``-th batch-sized block starting at block ``r``. ``start`` skips that many of this
    rank's samples (the data position of a resumed run).
    """

    def __init__(self, size: int, *, seed: int, batch_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.size, self.seed, self.batch_size = size, seed, batch_size
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        block = self.batch_size * self.world_size
        total = -(-len(order) // block) * block
        order = (order * (total // max(1, len(order)) + 1))[:total]
        mine = []
        for b in range(self.rank, total // self.batch_size, self.world_size):
            mine += order[b * self.batch_size : (b + 1) * self.batch_size]
        return mine

    def batches_per_epoch(self) -> int:
        return len(self._order()) // self.batch_size

    def __len__(self) -> int:
        return len(self._order()) - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._order()[self.start :]:
            yield (self.epoch, index)
