"""Dependencies point one way: edge/ never imports TensorFlow, Keras, mtcnn, training or export."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"tensorflow", "keras", "tf_keras", "tensorflow_hub", "mtcnn", "training", "export"}


def test_edge_sources_do_not_import_forbidden_packages():
    hits = []
    for f in sorted((REPO / "edge").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            hits += [f"{f.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not hits, hits


def test_importing_every_edge_module_loads_no_tensorflow():
    mods = sorted(".".join(f.relative_to(REPO).with_suffix("").parts) for f in (REPO / "edge").rglob("*.py")
                  if f.name != "__main__.py")
    mods = [m.removesuffix(".__init__") for m in mods]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in "
            f"{sorted(FORBIDDEN)!r})\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
