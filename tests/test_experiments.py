"""experiments/: probes use the public API only and write their records under results/probes/, never /tmp (read
from the source with ast; the probes themselves train for minutes and are not run here)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBES = sorted((ROOT / "experiments").glob("*.py"))


def test_the_probes_are_there():
    assert {p.name for p in PROBES} >= {"tune_tokenizer.py", "tune_discriminator.py", "probe_fsdd_width.py"}
    assert not any((ROOT / "benchmarks" / p.name).exists() for p in PROBES), "a probe left a copy in benchmarks/"


@pytest.mark.parametrize("path", PROBES, ids=lambda p: p.name)
def test_probe_uses_public_names_only(path):
    tree = ast.parse(path.read_text())
    tokenset_aliases = set()
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tokenset"):
            private += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            tokenset_aliases |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            tokenset_aliases |= {a.asname or a.name for a in node.names if a.name.startswith("tokenset")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in tokenset_aliases \
                and node.attr.startswith("_"):
            private.append(f"{node.value.id}.{node.attr}")
    assert not private, f"{path.name} uses private tokenset names: {private}"


@pytest.mark.parametrize("path", PROBES, ids=lambda p: p.name)
def test_probe_records_go_to_results_probes(path):
    source = path.read_text()
    assert "/tmp" not in source, f"{path.name} mentions /tmp"
    assert "results/probes/" in source and "write_json" in source, \
        f"{path.name}: expected a JSON record under results/probes/"
