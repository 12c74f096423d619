"""eval-fast: the fast mode's work savers measured on the demo model (a short run)."""

from __future__ import annotations

import pytest
from conftest import ROOT

DEMO = ROOT / "emo_model" / "demo_assets" / "emo-tiny-demo.safetensors"


@pytest.mark.skipif(not DEMO.is_file(), reason="the demo model is not built")
def test_eval_fast_counts_denoiser_work_and_measures_quality(capsys):
    import torch

    from emo_model.app.commands.eval_fast import evaluate, print_table

    torch.set_num_threads(2)
    results = evaluate(clips=1, seconds=0.6, only=["dpmpp_2m 1/2 steps", "deep cache 2", "fast"], log=lambda *a: None)
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["default", "dpmpp_2m 1/2 steps", "deep cache 2", "fast"]
    # half the steps with the same branches and clips: exactly half the denoiser FLOPs
    assert rows["dpmpp_2m 1/2 steps"]["gflop"] == pytest.approx(rows["default"]["gflop"] / 2, rel=1e-9)
    # a reusing step runs only the outer levels: cheaper than a whole step, not free
    assert 1.05 < rows["deep cache 2"]["work_speedup"] < 2.0
    assert rows["fast"]["steps"] == 8 and rows["fast"]["deep_cache_interval"] == 2
    assert rows["fast"]["work_speedup"] > 2.5
    for row in rows.values():  # each clip's r, the mean of which is the row's
        assert len(row["r_clips"]) == 1 and row["r"] == pytest.approx(sum(row["r_clips"]) / len(row["r_clips"]))
    for name in ("dpmpp_2m 1/2 steps", "deep cache 2", "fast"):
        assert rows[name]["psnr"] > 20 and 0.5 < rows[name]["ssim"] <= 1.0
    print_table(results)
    assert "work x" in capsys.readouterr().out
