"""Probe: train one tokenizer configuration on the prepared data and record its metrics as JSON.

Used to choose the `small` preset's recipe and the studies' model; every number quoted in
tokenset/config_sections.py, tokenset/config_studies.py or params.yaml about a recipe choice names the command line
of this script that produced it. The checkpoint goes under data/probes/ (not committed), the
record (command, overrides, metrics) to results/probes/tune_tokenizer/<name>.json (committed).

    python experiments/tune_tokenizer.py --name m64 --threads 1 tokenizer.num_tokens=64 train.steps=1500
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
import yaml

from tokenset import data as data_mod
from tokenset.config import load_params
from tokenset.report import write_json
from tokenset.train import fit_tokenizer


def _name(overrides: list[str]) -> str:
    """A file name from the overrides, e.g. 'tokenizer.num_tokens=64 train.steps=1500' -> 'num_tokens-64_steps-1500'."""
    parts = [re.sub(r"[^A-Za-z0-9.]+", "-", o.partition(".")[2].replace("=", "-")) for o in overrides]
    return "_".join(parts) or "defaults"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="section.key=value (value parsed as YAML)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--name", default=None, help="record name (default: from the overrides)")
    parser.add_argument("--out", default=None, help="checkpoint folder (default: data/probes/tune_tokenizer/<name>)")
    parser.add_argument("--json", default=None, help="record (default: results/probes/tune_tokenizer/<name>.json)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections: dict[str, dict] = {"tokenizer": {}, "train": {}}
    for item in args.overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if section not in sections or not field or not _:
            raise SystemExit(f"override {item!r}: expected tokenizer.KEY=VALUE or train.KEY=VALUE")
        sections[section][field] = yaml.safe_load(value)
    name = args.name or _name(args.overrides)
    out = Path(args.out or f"data/probes/tune_tokenizer/{name}")
    record_path = Path(args.json or f"results/probes/tune_tokenizer/{name}.json")
    data_cfg = load_params(args.params, "data")
    tok_cfg = load_params(args.params, "tokenizer").replace(**sections["tokenizer"])
    train_cfg = load_params(args.params, "train").replace(**sections["train"])
    train = data_mod.load_arrays(data_cfg, "train")[0]
    val = data_mod.load_arrays(data_cfg, "val")[0]
    start = time.time()
    metrics = fit_tokenizer(tok_cfg, train_cfg, train, val, out, progress=False, plot=False)
    config = metrics.pop("config", None)
    record = {"command": " ".join(["python", *sys.argv]), "overrides": args.overrides, "params": args.params,
              "total_s": round(time.time() - start, 1), **metrics, "config": config}
    write_json(record, record_path)
    print(json.dumps({k: v for k, v in record.items() if k != "config"}))


if __name__ == "__main__":
    main()
