"""Every command answers --help; bad flags fail with a clear message."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "training.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args", [["--help"], ["speech", "--help"]])
def test_help(args):
    r = run(*args)
    assert r.returncode == 0 and "usage: edge-train" in r.stdout


def test_unknown_recipe_field():
    r = run("speech", "--set", "epochz=3")
    assert r.returncode != 0 and "unknown recipe field 'epochz'" in r.stderr


def test_missing_data_folder(tmp_path):
    r = run("speech", "--data", str(tmp_path / "nowhere"), "--quiet", "--no-cache")
    assert r.returncode == 2 and "edge-train: error:" in r.stderr and "nowhere" in r.stderr
    assert "Traceback" not in r.stderr


def test_ablation_rows_are_checked_before_any_work(tmp_path):
    r = run("speech", "--ablation", "--rows", "recipe,no-such-row", "--out", str(tmp_path), "--no-cache")
    assert r.returncode != 0 and "no ablation row no-such-row" in r.stderr and "test-speeds" in r.stderr
    r = run("speech", "--rows", "recipe", "--out", str(tmp_path))
    assert r.returncode != 0 and "needs --ablation" in r.stderr
    assert not list(tmp_path.iterdir())                                  # nothing written


def test_bad_yamnet_path(tmp_path):
    r = run("speech", "--yamnet", str(tmp_path / "y.tflite"), "--quiet", "--no-cache", "--folds", "0")
    assert r.returncode == 2 and "y.tflite" in r.stderr and "Traceback" not in r.stderr


def test_prequant_report_help_and_missing_folds(tmp_path):
    r = subprocess.run([sys.executable, "-m", "export.prequant_report", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "reports/prequant.json" in r.stdout
    r = subprocess.run([sys.executable, "-m", "export.prequant_report", "--ship-dir", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "fold0.keras" in r.stderr and "Traceback" not in r.stderr


def test_face_widths_flag():
    from training.face import FaceRecipe
    from training.face_cli import paper_layout
    assert paper_layout("16,32,32,64,64,128") == FaceRecipe().layers
    r = run("face", "--widths", "16,32")
    assert r.returncode == 2 and "six positive integers" in r.stderr and "Traceback" not in r.stderr


def test_bench_face_archs_help():
    r = subprocess.run([sys.executable, "-m", "export.bench_face_archs", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "face_arch_bench.json" in r.stdout


def test_face_arch_layouts():
    from export.bench_face_archs import layout
    paper = layout("16,32,32,64,64,128")
    first = layout("pool-first:16,32,32,64,64,128")
    assert paper[:2] == (("conv", 16), ("pool", 2)) and first[:2] == (("pool", 2), ("conv", 16))
    assert first[2:] == paper[2:] and sorted(first) == sorted(paper)        # still 6 conv + 3 pool
    with pytest.raises(argparse.ArgumentTypeError, match="six"):
        layout("pool-first:16,32")


def test_bench_face_archs_bad_input_names_it(tmp_path):
    r = subprocess.run([sys.executable, "-m", "export.bench_face_archs", "--fused", str(tmp_path / "none.keras")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "none.keras" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "export.bench_face_archs", "--widths", "pool-first:16,x"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "16,x" in r.stderr and "Traceback" not in r.stderr


def test_conv_ceiling_help():
    r = subprocess.run([sys.executable, "-m", "export.conv_ceiling", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "conv_ceiling.json" in r.stdout


def test_face_sweep_help_and_unknown_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "training.face_sweep", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "pack" in r.stdout and "report" in r.stdout
    r = subprocess.run([sys.executable, "-m", "training.face_sweep", "run", "--runs", "w99", "--packed",
                        str(tmp_path / "x.npz"), "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "unknown runs ['w99']" in r.stderr


def test_rewrites_help_and_missing_ship_dir(tmp_path):
    r = subprocess.run([sys.executable, "-m", "export.rewrites", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "graph_rewrites.json" in r.stdout
    r = subprocess.run([sys.executable, "-m", "export.rewrites", "--ship-dir", str(tmp_path), "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "shipped.keras not found" in r.stderr and "Traceback" not in r.stderr


def test_face_report_names_epochs_off_the_lr_schedule():
    from training.face_cli import _ranges, face_markdown
    assert _ranges([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10" and _ranges([]) == ""
    r = {"command": "edge-train face", "val_accuracy": 0.6, "val_accuracy_flip_tta": 0.61, "macro_recall": 0.5,
         "params": 1, "epochs": 60, "best_epoch": 59, "train_minutes": 50.0, "machine": {"cpu_count": 2},
         "seconds_per_epoch": 50.0, "quick": False, "complete": True, "planned_epochs": 60, "n_train": 10,
         "n_val": 5, "selection": "best epoch", "emotions": ["neutral"], "per_class_recall": {"neutral": 0.5},
         "predicted_calm": 0, "label_map": {}, "history": [], "recipe": {}, "lr_off_schedule_epochs": [1, 2, 3]}
    assert "Epochs 1-3 ran under the cosine schedule of another total" in face_markdown(r)
    assert "another total" not in face_markdown(r | {"lr_off_schedule_epochs": []})


def test_recipe_overrides_parse_each_field_type():
    from training.cli import _recipe_overrides
    got = _recipe_overrides(["speed_perturb=0.9,1.1", "seeds=0,1,2", "refit=true", "epochs=5", "mixup_alpha=0.3",
                             "logmel_norm=clip"])
    assert got == {"speed_perturb": (0.9, 1.1), "seeds": (0, 1, 2), "refit": True, "epochs": 5,
                   "mixup_alpha": 0.3, "logmel_norm": "clip"}
    assert type(got["seeds"][0]) is int and type(got["speed_perturb"][0]) is float
    with pytest.raises(SystemExit, match="key=value"):
        _recipe_overrides(["epochs"])
    assert _recipe_overrides(["speaker_bn=no", "snapshots=3"]) == {"speaker_bn": False, "snapshots": 3}
    with pytest.raises(SystemExit, match="speaker_bn='ture': expected true or false"):
        _recipe_overrides(["speaker_bn=ture"])                            # a typo is not silently False
