"""Every command answers --help; bad flags fail with a clear message."""
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
