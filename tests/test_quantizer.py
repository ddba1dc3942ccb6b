"""The cosine quantizer: nearest code, straight-through gradient, losses, statistics, fp32, dead-code restart."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from tokenset.quantizer import CosineQuantizer, code_statistics


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (3, 4)])
def test_nearest_code_and_shapes(shape):
    torch.manual_seed(0)
    q = CosineQuantizer(16, 6, dead_code_restart=False)
    z = torch.randn(*shape, 6) * 3.0
    z_q, idx, out = q(z)
    assert z_q.shape == z.shape and z_q.dtype == torch.float32
    assert idx.shape == shape and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < 16
    # brute force: the code of largest cosine similarity
    cos = F.cosine_similarity(z.unsqueeze(-2), q.codebook.unsqueeze(0), dim=-1)  # (..., C)
    assert torch.equal(idx, cos.argmax(-1))
    # forward value is the unit code itself
    torch.testing.assert_close(z_q, F.normalize(q.codebook, dim=-1)[idx])
    assert torch.equal(q.codes_to_indices(z), idx)
    torch.testing.assert_close(q.indices_to_codes(idx), z_q)
    for key in ("loss", "codebook_loss", "commitment_loss", "usage", "entropy", "perplexity"):
        assert out[key].ndim == 0 and out[key].dtype == torch.float32


def test_scale_invariance():
    torch.manual_seed(1)
    q = CosineQuantizer(32, 4, dead_code_restart=False)
    z = torch.randn(50, 4)
    assert torch.equal(q(z)[1], q(7.5 * z)[1])


def test_straight_through_gradient():
    torch.manual_seed(2)
    q = CosineQuantizer(8, 5, dead_code_restart=False, commitment_weight=0.0, codebook_weight=0.0)
    z = torch.randn(7, 5, requires_grad=True)
    w = torch.randn(7, 5)
    z_q, _, _ = q(z)
    (z_q * w).sum().backward()
    # identical to the gradient through the normalisation alone: the quantisation step passes gradients straight
    z2 = z.detach().clone().requires_grad_(True)
    (F.normalize(z2, dim=-1) * w).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    assert z.grad.abs().sum() > 0
    assert q.codebook.grad is None or q.codebook.grad.abs().sum() == 0  # the output path does not train codes


def test_loss_values_and_who_they_train():
    torch.manual_seed(3)
    q = CosineQuantizer(8, 5, dead_code_restart=False, commitment_weight=0.25, codebook_weight=1.0)
    z = torch.randn(9, 5, requires_grad=True)
    z_q, idx, out = q(z)
    d = (F.normalize(z, dim=-1) - F.normalize(q.codebook, dim=-1)[idx]).pow(2).mean()
    torch.testing.assert_close(out["codebook_loss"], d.detach())
    torch.testing.assert_close(out["commitment_loss"], d.detach())
    torch.testing.assert_close(out["loss"], 1.25 * d)
    out["loss"].backward()
    assert z.grad.abs().sum() > 0 and q.codebook.grad.abs().sum() > 0
    unused = torch.ones(8, dtype=torch.bool)
    unused[idx] = False
    if unused.any():
        assert q.codebook.grad[unused].abs().sum() == 0


def test_statistics():
    stats = code_statistics(torch.tensor([4.0, 4.0, 0.0, 0.0]))
    assert float(stats["usage"]) == 0.5
    assert math.isclose(float(stats["entropy"]), 1.0, abs_tol=1e-6)
    assert math.isclose(float(stats["perplexity"]), 2.0, rel_tol=1e-6)
    uniform = code_statistics(torch.ones(64))
    assert math.isclose(float(uniform["entropy"]), 6.0, abs_tol=1e-5)
    assert float(code_statistics(torch.tensor([0.0, 9.0]))["entropy"]) == 0.0
    # through the quantizer: inputs equal to codes 0 and 1, three and one times
    q = CosineQuantizer(4, 4, dead_code_restart=False)
    with torch.no_grad():
        q.codebook.copy_(torch.eye(4))
    _, idx, out = q(torch.tensor([[1.0, 0, 0, 0]] * 3 + [[0, 2.0, 0, 0]]))
    assert idx.tolist() == [0, 0, 0, 1]
    assert float(out["usage"]) == 0.5
    p = torch.tensor([0.75, 0.25])
    assert math.isclose(float(out["entropy"]), float(-(p * p.log2()).sum()), abs_tol=1e-6)


def test_fp32_under_autocast():
    torch.manual_seed(4)
    q = CosineQuantizer(16, 8, dead_code_restart=False)
    z = torch.randn(3, 4, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, idx, out = q(z)
    assert z_q.dtype == torch.float32 and out["loss"].dtype == torch.float32
    assert torch.equal(idx, q(z.float())[1])


def test_dead_code_restart_revives_codes():
    torch.manual_seed(5)
    q = CosineQuantizer(32, 4, dead_code_restart=True, restart_every=3)
    with torch.no_grad():  # code 0 points at the data, all others away from it: only code 0 gets used
        q.codebook.copy_(F.normalize(torch.tensor([1.0, 0, 0, 0]) + 0.01 * torch.randn(32, 4), dim=-1))
        q.codebook[0] = torch.tensor([0.0, 1.0, 1.0, 1.0])
    data = torch.randn(256, 4).abs() * torch.tensor([0.0, 1.0, 1.0, 1.0])
    q.train()
    first = float(q(data)[2]["usage"])
    for _ in range(3):
        q(data)
    after = float(q(data)[2]["usage"])
    assert first == 1 / 32
    assert int(q.restarted) > 0
    assert after > 0.25  # the restarted codes now sit among the data
    # restarted codes are (noisy copies of) recent encoder outputs
    cos = F.normalize(q.codebook, dim=-1) @ F.normalize(data, dim=-1).t()
    assert (cos.max(dim=1).values > 0.99).float().mean() > 0.5


def test_no_restart_when_off_or_in_eval():
    torch.manual_seed(6)
    q = CosineQuantizer(32, 4, dead_code_restart=False, restart_every=1)
    before = q.codebook.detach().clone()
    for _ in range(3):
        q(torch.randn(8, 4))
    assert torch.equal(before, q.codebook)
    q2 = CosineQuantizer(32, 4, dead_code_restart=True, restart_every=1).eval()
    before = q2.codebook.detach().clone()
    for _ in range(3):
        q2(torch.randn(8, 4))
    assert torch.equal(before, q2.codebook) and int(q2.restarted) == 0


def test_bad_input_dim():
    q = CosineQuantizer(8, 4)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        q(torch.randn(2, 5))


# --------------------------------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial codebook on both ranks
    q = CosineQuantizer(8, 3, dead_code_restart=True, restart_every=2).train()
    with torch.no_grad():
        q.codebook.copy_(torch.eye(3).repeat(3, 1)[:8])
    torch.manual_seed(100 + rank)  # different RNG streams per rank
    z = torch.eye(3)[rank].repeat(4, 1)  # rank 0 uses only code 0, rank 1 only code 1
    _, _, out = q(z)
    q(z)
    q(z + 0.1 * torch.randn_like(z))  # third call restarts dead codes (identically on both ranks)
    torch.save({"usage": out["usage"], "codebook": q.codebook.detach().clone()}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_statistics_all_reduced_and_codebooks_agree_under_ddp(tmp_path):
    import torch.multiprocessing as mp

    # fork: no re-import of torch in the children (seconds on a 2-core machine)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert float(r0["usage"]) == float(r1["usage"]) == 2 / 8  # codes 0 and 1: the global batch, not the local one
    assert torch.equal(r0["codebook"], r1["codebook"])
