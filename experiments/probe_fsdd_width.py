"""Probe: FSDD with another denoiser width / depth, trained and scored like stage `generators` + `fid_tables`.

Trains FSDD (the `train_generator` section of params.yaml) on the training tokens of the pipeline's set tokenizer
(data/checkpoints/tokenizer/set, cached tokens in data/tokens/set.pt; run `make repro` first), then samples
eval.num_samples images per seed and scores them against the validation split with the pipeline's extractor.
Used to size the `small` denoiser preset (tokenset/config_sections.py, DenoiserConfig.PRESETS; docs/experiments.md).
The FSDD checkpoint goes under data/probes/ (not committed); the record (command, training, gFID per seed) to
results/probes/fsdd_width/<width>x<depth>.json (committed). Public API only.

    .venv/bin/python experiments/probe_fsdd_width.py --width 64 --depth 3 --samples 128
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tokenset import data, generators, metrics
from tokenset.config import load_params
from tokenset.report import write_json
from tokenset.tokenizer import SetTokenizer
from tokenset.generators import fit_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--out", default=None, help="FSDD checkpoint and log (default: data/probes/fsdd_width/WxD)")
    parser.add_argument("--json", default=None, help="record (default: results/probes/fsdd_width/WxD.json)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--samples", type=int, default=0, help="images per seed (0: eval.num_samples)")
    args = parser.parse_args()
    tag = f"{args.width}x{args.depth}"
    out = Path(args.out or f"data/probes/fsdd_width/{tag}")
    record_path = Path(args.json or f"results/probes/fsdd_width/{tag}.json")
    p = args.params
    data_cfg, fsdd_cfg, eval_cfg = (load_params(p, s) for s in ("data", "fsdd", "eval"))
    train_cfg = load_params(p, "train_generator")
    train_images, train_labels = data.load_arrays(data_cfg, "train")
    val_images, _ = data.load_arrays(data_cfg, "val")
    ckpt = Path("data/checkpoints/tokenizer/set/checkpoint.pt")
    tokenizer = SetTokenizer.from_checkpoint(ckpt)
    tokens = generators.encode_cached(ckpt, train_images, Path("data/tokens/set.pt"), "cpu", model=tokenizer)
    den_cfg = load_params(p, "denoiser", codebook_size=tokenizer.cfg.codebook_size, total=tokenizer.cfg.num_tokens,
                          num_classes=len(data.class_names(data_cfg)), width=args.width, depth=args.depth)
    t0 = time.perf_counter()
    fit = fit_generator("fsdd", den_cfg, fsdd_cfg, train_cfg, tokens, train_labels, out, progress=False)
    train_s = time.perf_counter() - t0
    print(f"FSDD {tag}: {fit['steps']} steps in {train_s:.1f} s, final loss {fit['loss']:.4f}", flush=True)
    samples = args.samples or eval_cfg.num_samples
    options = metrics.fid_kid_options(eval_cfg)
    record = {"command": " ".join(["python", *sys.argv]), "tokenizer_checkpoint": str(ckpt), "width": args.width,
              "depth": args.depth, "steps": fit["steps"], "train_s": round(train_s, 1), "final_loss": fit["loss"],
              "samples_per_seed": samples, "seeds": []}
    for seed in eval_cfg.seeds:
        t0 = time.perf_counter()
        fake = generators.sample_images("fsdd", fit["model"], tokenizer, train_labels, samples, fsdd_cfg, seed)
        seconds = time.perf_counter() - t0
        r = metrics.fid_kid(val_images, fake, real_split=f"{data_cfg.name}-val", seed=seed, **options)
        print(f"seed {seed}: {samples} samples in {seconds:.1f} s, gFID {r['fid']:.1f}", flush=True)
        record["seeds"].append({"seed": seed, "sample_s": round(seconds, 1), **r})
        write_json(record, record_path)
    print(json.dumps({k: v for k, v in record.items() if k != "seeds"}))


if __name__ == "__main__":
    main()
