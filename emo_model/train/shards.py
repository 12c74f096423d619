"""The dataset on disk: tar shards of segments, the journal of processed files, the index and the report."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .preprocess_options import FORMAT_VERSION, FileResult, Options, _load_model_config


class ShardWriter:
    """Tar shards of whole files; the journal line for a shard is written after its rename."""

    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size = out, shard_size
        for partial in out.glob(".shard-*.tar.partial"):
            partial.unlink()
        numbers = [int(p.stem.split("-")[1]) for p in out.glob("shard-*.tar")]
        self.next_number = max(numbers, default=-1) + 1
        self.tar: tarfile.TarFile | None = None
        self.name = ""
        self.count = 0
        self.pending: list[dict] = []

    def add(self, result: FileResult) -> None:
        record = {
            "source": result.source,
            "size": result.size,
            "mtime": result.mtime,
            "seconds": result.seconds,
            "skipped": result.skipped,
            "dropped": result.dropped,
            "elapsed": round(result.elapsed, 2),
            "segments": [],
        }
        for seg in result.segments:
            if self.tar is None:
                self.name = f"shard-{self.next_number:06d}.tar"
                self.next_number += 1
                self.tar = tarfile.open(self.out / f".{self.name}.partial", "w", format=tarfile.PAX_FORMAT)
            members = {}
            for ext in ("json", "safetensors", "mp4"):
                data = Path(seg.files[ext]).read_bytes()
                info = tarfile.TarInfo(f"{seg.key}.{ext}")
                info.size, info.mtime = len(data), int(time.time())
                self.tar.addfile(info, io.BytesIO(data))
                # addfile leaves the stream at the end of the data's 512-byte blocks
                members[ext] = [self.tar.offset - tarfile.BLOCKSIZE * -(-len(data) // tarfile.BLOCKSIZE), len(data)]
            entry = {
                k: seg.meta[k]
                for k in (
                    "key",
                    "source",
                    "source_start",
                    "source_end",
                    "frames",
                    "fps",
                    "resolution",
                    "speed_mean",
                    "speed_estimator",
                )
            }
            entry.update(shard=self.name, members=members, audio_kind=seg.meta["audio"]["kind"])
            record["segments"].append(entry)
            self.count += 1
        self.pending.append(record)
        if self.count >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        shard = None
        if self.tar is not None:
            self.tar.close()
            os.replace(self.out / f".{self.name}.partial", self.out / self.name)
            shard = self.name
        if self.pending:
            line = json.dumps({"shard": shard, "files": self.pending}, sort_keys=True)
            with open(self.out / "journal.jsonl", "a") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        self.tar, self.count, self.pending = None, 0, []


def read_journal(out: Path) -> list[dict]:
    path = out / "journal.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line from a crash: that shard's files are redone
            continue
    return [r for r in records if r["shard"] is None or (out / r["shard"]).is_file()]


def write_index_and_report(out: Path, opts: Options, listed: int) -> dict:
    files = [f for record in read_journal(out) for f in record["files"]]
    latest = {f["source"]: f for f in files}  # a re-done file replaces its older record
    segments = [s for f in latest.values() for s in f["segments"]]
    segments.sort(key=lambda s: s["key"])
    tmp = out / ".index.jsonl.partial"
    tmp.write_text("".join(json.dumps(s, sort_keys=True) + "\n" for s in segments))
    os.replace(tmp, out / "index.jsonl")
    frames = sum(s["frames"] for s in segments)
    dropped = Counter()
    for f in latest.values():
        dropped.update(f["dropped"])
    speeds = [s["speed_mean"] for s in segments]
    report = {
        "format_version": FORMAT_VERSION,
        "options": dataclasses.asdict(opts),
        "files_listed": listed,
        "files_done": len(latest),
        "files_used": sum(1 for f in latest.values() if f["segments"]),
        "files_skipped": {f["source"]: f["skipped"] for f in latest.values() if f["skipped"]},
        "segments": len(segments),
        "frames": frames,
        "hours": frames / opts.fps / 3600,
        "source_hours": sum(f["seconds"] for f in latest.values()) / 3600,
        "shards": sorted({s["shard"] for s in segments}),
        "dropped": dict(dropped),
        "segment_speed_mean": {
            "mean": float(np.mean(speeds)) if speeds else None,
            "p5": float(np.percentile(speeds, 5)) if speeds else None,
            "p50": float(np.percentile(speeds, 50)) if speeds else None,
            "p95": float(np.percentile(speeds, 95)) if speeds else None,
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    kind = _load_model_config(opts.config).audio.kind
    lines = [
        f"EMO training dataset: {out}",
        (
            f"  {report['segments']} segments, {frames} frames, {report['hours']:.3f} h at {opts.fps:g} fps, "
            f"{opts.resolution}x{opts.resolution}, audio features: {kind}"
        ),
        (
            f"  from {report['files_used']} of {listed} files ({report['source_hours']:.3f} h of source video), "
            f"{len(report['shards'])} shards"
        ),
    ]
    if speeds:
        sm = report["segment_speed_mean"]
        lines.append(
            f"  head speed per segment ({opts.speed_estimator}, deg/frame): "
            f"p5 {sm['p5']:.3f}, median {sm['p50']:.3f}, p95 {sm['p95']:.3f}"
        )
    if report["files_skipped"]:
        lines.append(f"  skipped files ({len(report['files_skipped'])}):")
        lines += [f"    {src}: {why}" for src, why in sorted(report["files_skipped"].items())]
    if dropped:
        lines.append("  dropped scenes / segments:")
        lines += [f"    {n} x {why}" for why, n in sorted(dropped.items())]
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    return report
