"""Probe: does the stage-2 patch discriminator help at small scale?

From one stage-1 tokenizer checkpoint, fine-tune the decoder for N steps with L2 only (disc_weight 0) and with
L2 + hinge PatchGAN loss (disc_weight w), with the same data order, and report val PSNR and rFID (Inception) of the
EMA weights of each arm against the starting point. Public API only: ``tokenset.train.DecoderGanTrainer`` (the
trainer ``fit_tokenizer`` runs as stage 2) and ``image_batches``. Checkpoints go under data/probes/ (not
committed); the record to results/probes/tune_discriminator.json (committed; rewritten after every arm).

    python experiments/tune_discriminator.py --checkpoint data/checkpoints/tokenizer/set/checkpoint.pt \
        --steps 300 --weights 0,0.1
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch

from tokenset import data as data_mod
from tokenset import metrics
from tokenset.analysis import reconstruct
from tokenset.config import load_params
from tokenset.report import write_json
from tokenset.tokenizer import SetTokenizer
from tokenset.train import DecoderGanTrainer, image_batches


def scores(model: SetTokenizer, val: torch.Tensor, split: str) -> dict[str, float]:
    recon = reconstruct(model, val)  # uint8
    r = metrics.fid_kid(val, recon, extractor="inception", real_split=split, prc=False, kid_subset_size=200,
                        kid_subsets=20)
    return {"val_psnr": float(metrics.psnr(recon, val)), "rfid": r["fid"], "kid": r["kid_mean"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=None, help="default: the params file's train.lr (as fit_tokenizer)")
    parser.add_argument("--weights", default="0,0.1", help="comma-separated disc_weight values (0: L2 only)")
    parser.add_argument("--out", default="data/probes/tune_discriminator", help="checkpoint folders")
    parser.add_argument("--json", default="results/probes/tune_discriminator.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_cfg = load_params(args.params, "data")
    train = data_mod.load_arrays(data_cfg, "train")[0]
    val = data_mod.load_arrays(data_cfg, "val")[0]
    split = f"{data_cfg.name}-val"
    base = SetTokenizer.from_checkpoint(args.checkpoint)
    result: dict[str, dict[str, float]] = {"stage1": scores(base, val, split)}
    record = {"command": " ".join(["python", *sys.argv]), "checkpoint": args.checkpoint, "steps": args.steps,
              "arms": result}
    write_json(record, args.json)
    print(json.dumps(result), flush=True)
    for weight in (float(w) for w in args.weights.split(",")):
        model = copy.deepcopy(base).train()
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("decoder."))
        cfg = load_params(args.params, "train")
        cfg = cfg.replace(steps=args.steps, lr=args.lr or cfg.lr, warmup_steps=min(cfg.warmup_steps, args.steps),
                          log_every=args.steps, ckpt_every=10**9, disc_steps=args.steps, disc_weight=weight,
                          max_minutes=0.0)
        start = time.time()
        trainer = DecoderGanTrainer(model, cfg, f"{args.out}/w{weight}", config={}, total_steps=args.steps,
                                    first_step=0, stage=2, progress=False)
        trainer.fit(image_batches(train, cfg.batch_size, seed=1, flip=cfg.flip), resume=False)
        result[f"disc_weight={weight}"] = {**scores(trainer.ema.eval(), val, split),
                                           "seconds": round(time.time() - start, 1)}
        write_json(record, args.json)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
