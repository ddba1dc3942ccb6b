"""Token orders, batched encode/decode and the permutation spread; result writers."""

import json

import pandas as pd
import pytest
import torch

from tokenset import analysis
from tokenset.config import TokenizerConfig
from tokenset.report import write_json, write_table
from tokenset.tokenizer import SetTokenizer
from tests.helpers import randomized


def test_reorder_orders():
    tokens = torch.tensor([[4, 1, 3, 1]])
    assert analysis.reorder(tokens, "original").tolist() == [[4, 1, 3, 1]]
    assert analysis.reorder(tokens, "reversed").tolist() == [[1, 3, 1, 4]]
    assert analysis.reorder(tokens, "ascending").tolist() == [[1, 1, 3, 4]]
    assert analysis.reorder(tokens, "descending").tolist() == [[4, 3, 1, 1]]
    shuffled = analysis.reorder(tokens, "shuffled", torch.Generator().manual_seed(0))
    assert sorted(shuffled[0].tolist()) == [1, 1, 3, 4]
    with pytest.raises(ValueError, match="unknown token order 'random'"):
        analysis.reorder(tokens, "random")


def test_permutation_spread_separates_set_from_ordered():
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    spreads = {}
    for ordered in (False, True):
        torch.manual_seed(0)
        model = SetTokenizer(TokenizerConfig.preset("tiny", ordered=ordered)).eval()
        tokens = analysis.encode_images(model, images, batch_size=2)
        assert tokens.shape == (5, model.cfg.num_tokens)
        recon = analysis.reconstruct(model, images, batch_size=3)
        assert recon.dtype == torch.uint8 and recon.shape == images.shape
        spreads[ordered] = analysis.permutation_spread(model, tokens, num_perms=4, batch_size=2)
        assert spreads[ordered].shape == (5, 4)
    assert float(spreads[False].max()) < 1e-5  # float rounding only
    # at initialisation the latent positions are small, but they still move the ordered control's decode
    assert float(spreads[True].max()) > 10 * (float(spreads[False].max()) + 1e-7)


def test_permutation_effects_give_the_spread_and_the_psnr_each_order_costs():
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    drops = {}
    for ordered in (False, True):
        torch.manual_seed(0)
        model = randomized(SetTokenizer(TokenizerConfig.preset("tiny", ordered=ordered))).eval()
        tokens = analysis.encode_images(model, images, batch_size=2)
        effects = analysis.permutation_effects(model, tokens, images, num_perms=3, seed=1, batch_size=2)
        # the same permutations as permutation_spread with the same seed
        assert torch.equal(effects["spread"], analysis.permutation_spread(model, tokens, 3, seed=1, batch_size=2))
        assert effects["psnr_drop"].shape == (5, 3) and effects["psnr_drop"].dtype == torch.float64
        drops[ordered] = effects["psnr_drop"]
    assert float(drops[False].abs().max()) < 1e-6  # a set decoder loses nothing
    assert float(drops[True].abs().max()) > 1e-3  # the ordered control's decode moves with the order
    with pytest.raises(ValueError, match="images: expected uint8 images, one per token row"):
        analysis.permutation_effects(model, tokens, images[:2], num_perms=1)


def test_encode_images_rejects_float():
    model = SetTokenizer(TokenizerConfig.preset("tiny")).eval()
    with pytest.raises(ValueError, match="expected uint8"):
        analysis.encode_images(model, torch.zeros(2, 3, 16, 16))


def test_write_table_and_json(tmp_path):
    csv, md = write_table(pd.DataFrame({"a": [1.0, 2.5], "b": ["x", "y"]}), tmp_path / "t" / "table", note="Note.")
    assert pd.read_csv(csv).shape == (2, 2)
    text = md.read_text()
    assert text.startswith("Note.") and "|   a | b   |" in text
    path = write_json({"x": torch.tensor(1.5), "inf": float("inf")}, tmp_path / "m.json")
    assert json.loads(path.read_text()) == {"x": 1.5, "inf": "inf"}


# --------------------------------------------------------------------------------------------- scoring


def test_score_tokenizer_matches_its_parts():
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = SetTokenizer(TokenizerConfig.preset("tiny")).eval()
    score = analysis.score_tokenizer(model, images, batch_size=4)
    recon = analysis.reconstruct(model, images)
    assert torch.equal(score.recon, recon) and score.tokens.shape == (6, model.cfg.num_tokens)
    assert score.psnr.shape == (6,) and score.ssim.shape == (6,)
    row = score.row()
    assert row["val_psnr"] == pytest.approx(float(analysis.metrics.psnr(recon, images)))
    assert row["images"] == 6 and 0 < row["codebook_usage"] <= 1
    assert 1 <= row["distinct_per_image"] <= model.cfg.num_tokens
    baseline = analysis.score_reconstruction(images, images).row()
    assert baseline["val_ssim"] == pytest.approx(1.0) and "codebook_usage" not in baseline


def test_reference_subset_is_fixed_and_without_repeats():
    images = torch.arange(50).view(50, 1, 1, 1).expand(50, 3, 2, 2).to(torch.uint8)
    sub, index = analysis.reference_subset(images, 20, seed=0)
    assert sub.shape[0] == 20 and len(set(index.tolist())) == 20 and torch.equal(sub, images[index])
    assert torch.equal(index, analysis.reference_subset(images, 20, seed=0)[1])
    assert torch.equal(analysis.reference_subset(images, 0)[0], images)  # 0: all
    assert torch.equal(analysis.reference_subset(images, 80)[0], images)
    with pytest.raises(ValueError, match="non-negative integer"):
        analysis.reference_subset(images, -1)


def test_one_per_class_takes_the_first_of_each():
    labels = torch.tensor([2, 0, 2, 1, 0])
    assert analysis.one_per_class(labels, 3).tolist() == [1, 3, 0]
    assert analysis.one_per_class(labels, 4).tolist() == [1, 3, 0]  # class 3 has no image


def test_image_rows_writes_a_png(tmp_path):
    from tokenset.report import image_rows

    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out = image_rows({"a": x, "b": x}, tmp_path / "rows.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="one shape per row"):
        image_rows({"a": x, "b": x[:2]}, tmp_path / "bad.png")


# --------------------------------------------------------------------------------------------- training logs


def _log(psnr):
    return pd.DataFrame({"step": [10 * (i + 1) for i in range(len(psnr))],
                         "elapsed_s": [1.5 * (i + 1) for i in range(len(psnr))], "val_psnr": psnr})


def test_first_reaching_takes_the_first_row_at_or_above():
    log = _log([10.0, 14.9, 15.0, 13.0, 16.0])
    step, seconds = analysis.first_reaching(log, 15.0)
    assert (step, seconds) == (30, 4.5) and type(step) is int and type(seconds) is float  # 15.0 reaches 15.0
    assert analysis.first_reaching(log, 15.5) == (50, 7.5)  # later than a dip back to 13
    assert analysis.first_reaching(log, 5) == (10, 1.5)
    assert analysis.first_reaching(log, 16.01) == (None, None)
    # an empty val_psnr (a row without validation) never counts; another column can be read
    assert analysis.first_reaching(_log([float("nan"), 12.0]), 11.0) == (20, 3.0)
    assert analysis.first_reaching(log.assign(usage=[0.1, 0.2, 0.9, 0.95, 1.0]), 0.9, column="usage") == (30, 4.5)


def test_first_reaching_rejects_bad_input():
    log = _log([10.0, 20.0])
    with pytest.raises(ValueError, match="log has no column 'elapsed_s'.*'step', 'elapsed_s' and 'val_psnr'"):
        analysis.first_reaching(log.drop(columns="elapsed_s"), 15.0)
    with pytest.raises(ValueError, match="log has no column 'val_ssim'"):
        analysis.first_reaching(log, 0.5, column="val_ssim")
    with pytest.raises(ValueError, match="expected a pandas DataFrame"):
        analysis.first_reaching(log.to_dict("list"), 15.0)
    with pytest.raises(ValueError, match="threshold: expected a number"):
        analysis.first_reaching(log, float("nan"))
    with pytest.raises(ValueError, match="threshold: expected a number"):
        analysis.first_reaching(log, "15")
    with pytest.raises(ValueError, match="log column 'val_psnr': expected numbers"):
        analysis.first_reaching(log.assign(val_psnr=["a", "b"]), 15.0)


def test_seed_run_names_the_tokenizer_stage_folders():
    assert analysis.seed_run("set", 0, (0, 1, 2)) == "set"
    assert analysis.seed_run("ordered", 2, (0, 1, 2)) == "ordered_seed2"
    with pytest.raises(ValueError, match="not one of the seeds"):
        analysis.seed_run("set", 5, (0, 1))


def test_fid_log_records_floor_and_find(monkeypatch):
    calls = []

    def fake_fid_kid(real, fake, *, real_split, seed, **options):
        calls.append((len(real), len(fake), real_split, seed, options))
        return {"fid": float(fake.float().mean()), "seed": seed}

    monkeypatch.setattr(analysis.metrics, "fid_kid", fake_fid_kid)
    reference = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    log = analysis.FidLog(reference, "ref6", {"extractor": "dataset"})
    images = torch.arange(10, dtype=torch.uint8)[:, None, None, None].expand(10, 3, 8, 8)
    floor = log.floor(images, 4, seeds=(0, 1))
    assert set(floor) == {0, 1} and floor[0]["fid"] != floor[1]["fid"]  # different draws per seed
    log.score(images[:2], 3, what="gFID", generator="fsdd")
    assert calls[-1] == (6, 2, "ref6", 3, {"extractor": "dataset"})
    assert log.find(generator="fsdd", what="gFID")["seed"] == 3
    assert [r["what"] for r in log.records] == ["real-vs-real floor", "real-vs-real floor", "gFID"]
    with pytest.raises(KeyError, match="no FID record"):
        log.find(generator="ar")
    with pytest.raises(ValueError, match="only 10 given"):
        log.floor(images, 11, seeds=(0,))
