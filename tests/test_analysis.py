"""Token orders, batched encode/decode and the permutation spread; result writers."""

import json

import pandas as pd
import pytest
import torch

from tokenset import analysis
from tokenset.config import TokenizerConfig
from tokenset.report import write_json, write_table
from tokenset.tokenizer import SetTokenizer


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
