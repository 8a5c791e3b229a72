"""The released artifacts are the ones the model cards and manifest.json name (sha256), within budget."""
import hashlib
import json
import re
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "edge" / "models"
BUDGET_BYTES = 3_000_000


def test_mtcnn_card_hashes_match_the_files():
    card = (MODELS / "README.md").read_text()
    rows = re.findall(r"\| (\S+\.tflite) \| ([\d,]+) \| ([0-9a-f]{64}) \|", card)
    assert {r[0] for r in rows} >= {"mtcnn_pnet.tflite", "mtcnn_rnet.tflite", "mtcnn_onet.tflite"}
    for name, size, digest in rows:
        data = (MODELS / name).read_bytes()
        assert len(data) == int(size.replace(",", "")), name
        assert hashlib.sha256(data).hexdigest() == digest, name


def test_manifest_lists_every_shipped_model_with_its_hash():
    man = json.loads((MODELS / "manifest.json").read_text())
    assert set(man["files"]) == {f.name for f in MODELS.glob("*.tflite")}, "every shipped model is in the manifest"
    for name, v in man["files"].items():
        data = (MODELS / name).read_bytes()
        assert len(data) == v["bytes"] and hashlib.sha256(data).hexdigest() == v["sha256"], name
    assert man["model"] in man["files"] and len(man["logmel_prior_mean"]) == 64 and len(man["emotions"]) == 8


def test_release_fits_the_budget():
    total = sum(f.stat().st_size for f in MODELS.iterdir() if f.is_file() and f.suffix in (".tflite", ".json", ".md"))
    assert total <= BUDGET_BYTES, f"release artifacts {total:,} bytes > {BUDGET_BYTES:,}"


def test_model_card_is_generated_from_reports():
    from training.model_card import main
    assert main(["--check"]) == 0, "run: python -m training.model_card"
