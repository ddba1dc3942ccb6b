"""Train one tokenizer configuration on the prepared default data and print its metrics as one JSON line.

Used to choose the `small` preset's recipe; every number quoted in config.py / params.yaml about a recipe choice
names the command line of this script that produced it.

    python benchmarks/tune_tokenizer.py --out /tmp/tune/m64 --threads 1 tokenizer.num_tokens=64 train.steps=1500
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import yaml

from tokenset import data as data_mod
from tokenset.config import load_params
from tokenset.train import fit_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="section.key=value (value parsed as YAML)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True)
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
    data_cfg = load_params(args.params, "data")
    tok_cfg = load_params(args.params, "tokenizer").replace(**sections["tokenizer"])
    train_cfg = load_params(args.params, "train").replace(**sections["train"])
    train = data_mod.load_arrays(data_cfg, "train")[0]
    val = data_mod.load_arrays(data_cfg, "val")[0]
    start = time.time()
    metrics = fit_tokenizer(tok_cfg, train_cfg, train, val, args.out, progress=False, plot=False)
    metrics.pop("config", None)
    print(json.dumps({"overrides": args.overrides, "total_s": round(time.time() - start, 1), **metrics}))


if __name__ == "__main__":
    main()
