"""Probe: generators trained longer (and FSDD with patches), scored by a Fashion-MNIST CNN: class accuracy of
conditional samples and FID of its features against the 10k validation images.

Trains the named generators of `tokenset.generators.GENERATORS` on the training tokens of the pipeline's set /
ordered tokenizers (data/checkpoints/tokenizer/, cached tokens in data/tokens/; run `make repro` first) with the
params.yaml sections `denoiser` / `fsdd` / `train_generator`, overridden by the flags; samples `--per-class` images
per class; scores them with a SmallCNN trained on the training images (data/probes/extractor.pt). Checkpoints go
under data/probes/generators/ (not committed), the record to results/probes/generators/<tag>.json (committed).

    .venv/bin/python experiments/probe_generators.py --tag p8_s1500 --patch 8 --steps 1500 fsdd masked_sorted
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tokenset import data, generators, metrics
from tokenset.config import load_params
from tokenset.dataset_extractor import load_dataset_extractor, train_dataset_extractor
from tokenset.generators import fit_generator
from tokenset.report import write_json
from tokenset.tokenizer import SetTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=list(generators.GENERATORS))
    parser.add_argument("--tag", required=True)
    parser.add_argument("--patch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    parser.add_argument("--top-p", type=float, default=None, help="FSDD's x1 draws (default: params.yaml fsdd)")
    parser.add_argument("--extractor-steps", type=int, default=3000)
    args = parser.parse_args()
    p = "params.yaml"
    data_cfg = load_params(p, "data")
    fsdd_cfg = load_params(p, "fsdd", **({} if args.top_p is None else {"top_p": args.top_p}))
    train_cfg = load_params(p, "train_generator", steps=args.steps, batch_size=args.batch, lr=args.lr,
                            seed=args.seed, ckpt_every=max(100, args.steps // 4))
    train_x, train_y = data.load_arrays(data_cfg, "train")
    val_x, val_y = data.load_arrays(data_cfg, "val")
    cnn_path = Path("data/probes/extractor.pt")
    if not cnn_path.is_file():
        train_dataset_extractor(train_x, train_y, cnn_path, steps=args.extractor_steps)
    cnn = load_dataset_extractor(cnn_path)
    with torch.no_grad():
        val_acc = float(torch.cat([cnn(val_x[i:i + 500]).argmax(1) for i in range(0, len(val_x), 500)]).eq(val_y)
                        .float().mean())
    print(f"extractor: val accuracy {val_acc:.3f}", flush=True)
    options = dict(extractor="dataset", weights=cnn_path, kid_subset_size=500, batch_size=500)
    record_path = Path("results/probes/generators") / f"{args.tag}.json"
    old = json.loads(record_path.read_text()) if record_path.is_file() else {"commands": [], "runs": []}
    record = {"commands": old["commands"] + [" ".join(sys.argv)], "extractor_val_accuracy": val_acc,
              "runs": old["runs"]}  # a tag's runs accumulate over invocations
    ckpts = Path("data/checkpoints/tokenizer")
    for name in args.names:
        arm = generators.GENERATORS[name].tokenizer
        tok = SetTokenizer.from_checkpoint(ckpts / arm / "checkpoint.pt")
        tokens = generators.encode_cached(ckpts / arm / "checkpoint.pt", train_x, Path("data/tokens") / f"{arm}.pt")
        den = load_params(p, "denoiser", codebook_size=tok.cfg.codebook_size, total=tok.cfg.num_tokens,
                          num_classes=10, **({"patch": args.patch} if name == "fsdd" else {}))
        fit = fit_generator(name, den, fsdd_cfg, train_cfg, tokens, train_y,
                            Path("data/probes/generators") / args.tag / name)
        labels = torch.arange(10).repeat_interleave(args.per_class)
        for guidance in args.guidance:
            start = time.perf_counter()
            g = torch.Generator().manual_seed(args.seed)
            toks = torch.cat([generators.generate(name, fit["model"], labels[i:i + 250], fsdd_cfg, guidance=guidance,
                                                  generator=g) for i in range(0, len(labels), 250)])
            images = data.to_uint8(tok.decode(toks))
            sample_s = time.perf_counter() - start
            with torch.no_grad():
                acc = float(cnn(images).argmax(1).eq(labels).float().mean())
            r = metrics.fid_kid(val_x, images, real_split="fashion-val-all", seed=args.seed, **options)
            row = dict(generator=name, patch=den.patch, top_p=fsdd_cfg.top_p, steps=fit["steps"], train_s=fit["wall_time_s"],
                       loss=fit["loss"], guidance=guidance, sample_s=round(sample_s, 1), class_accuracy=acc,
                       fid_cnn=r["fid"], precision=r["precision"], recall=r["recall"])
            print(row, flush=True)
            record["runs"].append(row)
            write_json(record, record_path)


if __name__ == "__main__":
    main()
