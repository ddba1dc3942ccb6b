"""Probe: FSDD with another denoiser width / depth, trained and scored like stage `generators` + `fid_tables`.

Trains FSDD (the `train_generator` section of params.yaml) on the training tokens of the pipeline's set tokenizer
(data/checkpoints/tokenizer/set, cached tokens in data/tokens/set.pt; run `make repro` first), then samples
eval.num_samples images per seed and scores them against the validation split with the pipeline's extractor.
Used to size the `small` denoiser preset (tokenset/config.py, DenoiserConfig.PRESETS; README "Denoiser width").

    .venv/bin/python benchmarks/probe_fsdd_width.py --width 64 --depth 3 --samples 128 --out /tmp/fsdd_64x3
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from tokenset import data, generators, metrics
from tokenset.config import load_params
from tokenset.tokenizer import SetTokenizer
from tokenset.generators import fit_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--out", required=True, help="folder for the FSDD checkpoint and log")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--samples", type=int, default=0, help="images per seed (0: eval.num_samples)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", metrics.KIDSubsetClamped)
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
    fit = fit_generator("fsdd", den_cfg, fsdd_cfg, train_cfg, tokens, train_labels, args.out, progress=False)
    print(f"FSDD {args.width}x{args.depth}: {fit['steps']} steps in {time.perf_counter() - t0:.1f} s, "
          f"final loss {fit['loss']:.4f}", flush=True)
    samples = args.samples or eval_cfg.num_samples
    options = metrics.fid_kid_options(eval_cfg)
    for seed in eval_cfg.seeds:
        t0 = time.perf_counter()
        fake = generators.sample_images("fsdd", fit["model"], tokenizer, train_labels, samples, fsdd_cfg, seed)
        seconds = time.perf_counter() - t0
        r = metrics.fid_kid(val_images, fake, real_split=f"{data_cfg.name}-val", seed=seed, **options)
        print(f"seed {seed}: {samples} samples in {seconds:.1f} s, gFID {r['fid']:.1f}", flush=True)


if __name__ == "__main__":
    main()
