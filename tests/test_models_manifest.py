"""The released artifacts are the ones the model card names (sha256)."""
import hashlib
import re
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "edge" / "models"


def test_model_card_hashes_match_the_files():
    card = (MODELS / "README.md").read_text()
    rows = re.findall(r"\| (\S+\.tflite) \| ([\d,]+) \| ([0-9a-f]{64}) \|", card)
    assert rows, "model card lists no artifact"
    for name, size, digest in rows:
        data = (MODELS / name).read_bytes()
        assert len(data) == int(size.replace(",", "")), name
        assert hashlib.sha256(data).hexdigest() == digest, name
    listed = {r[0] for r in rows}
    assert listed == {f.name for f in MODELS.glob("*.tflite")}, "every shipped model is on the card"
