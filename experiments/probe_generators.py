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
import torch.nn.functional as F

from tokenset import data, generators, metrics
from tokenset.bijection import counts_to_set
from tokenset.config import load_params
from tokenset.dataset_extractor import load_dataset_extractor, train_dataset_extractor
from tokenset.fsdd import FSDD, fixed_sum_noise
from tokenset.generators import fit_generator
from tokenset.report import write_json
from tokenset.tokenizer import SetTokenizer


@torch.no_grad()
def diagnose(model, fsdd_cfg, tokens, token_labels, tok, cnn, labels, seed, n=512) -> dict:
    """Does FSDD's denoiser use the class? Cross-entropy to the clean counts of ``n`` training token sets with their
    labels, shuffled labels and the null label, at four t; and the class accuracy (by ``cnn``) of images decoded
    from the expected counts E[x1 | z_0, class] at t = 0, rounded to sum M (largest remainders)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    counts = generators.model_input("fsdd", tokens[:n], cfg.codebook_size)
    y = token_labels[:n]
    process = FSDD.from_config(fsdd_cfg, cfg.codebook_size, cfg.total, num_classes=cfg.num_classes)
    out = {"cross_entropy": []}
    for t in (0.0, 0.3, 0.6, 0.9):
        tt = torch.full((n,), t)
        z = process.q_sample(counts, fixed_sum_noise(n, cfg.codebook_size, cfg.total, g), tt, g)
        ce = {what: float(F.cross_entropy(model(z, tt, lab).flatten(0, 1), counts.flatten()))
              for what, lab in (("true", y), ("shuffled", y[torch.randperm(n, generator=g)]),
                                ("null", torch.full((n,), cfg.num_classes)))}
        out["cross_entropy"].append(dict(t=t, **ce))
    z = fixed_sum_noise(len(labels), cfg.codebook_size, cfg.total, g)
    probs = model(z, torch.zeros(len(labels)), labels).softmax(-1)
    mean = (probs * torch.arange(cfg.total + 1)).sum(-1)
    scaled = mean / mean.sum(1, keepdim=True) * cfg.total
    rounded = scaled.floor().long()
    short = cfg.total - rounded.sum(1)  # largest remainders get the missing units
    order = (scaled - rounded).argsort(1, descending=True)
    rounded.scatter_add_(1, order, (torch.arange(cfg.codebook_size)[None] < short[:, None]).long())
    images = data.to_uint8(tok.decode(counts_to_set(rounded)))
    out["expected_counts_class_accuracy"] = float(cnn(images).argmax(1).eq(labels).float().mean())
    return out


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
    parser.add_argument("--diagnose", action="store_true",
                        help="FSDD only: validation cross-entropy with true / shuffled / null labels at t = 0, 0.3, "
                             "0.6, 0.9, and the class accuracy of the decoded expected counts at t = 0")
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
        if args.diagnose and name == "fsdd":
            record.setdefault("diagnostics", []).append(
                dict(steps=fit["steps"], patch=den.patch, **diagnose(fit["model"], fsdd_cfg, tokens, train_y, tok, cnn,
                                                                     labels, args.seed)))
            print(record["diagnostics"][-1], flush=True)
            write_json(record, record_path)
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
            row = dict(generator=name, patch=den.patch, top_p=fsdd_cfg.top_p, steps=fit["steps"],
                       train_s=fit["wall_time_s"],
                       loss=fit["loss"], guidance=guidance, sample_s=round(sample_s, 1), class_accuracy=acc,
                       fid_cnn=r["fid"], precision=r["precision"], recall=r["recall"])
            print(row, flush=True)
            record["runs"].append(row)
            write_json(record, record_path)


if __name__ == "__main__":
    main()
