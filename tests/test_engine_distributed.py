"""DDP helpers: evaluation sharding without duplicates, and BatchNorm synchronised over gloo on CPU."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch
from torch import nn

from densepred.engine.distributed import GlooSyncBatchNorm, convert_sync_batchnorm, shard_range, unwrap


@pytest.mark.parametrize("n", [0, 1, 5, 12, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_index_exactly_once(n, world):
    parts = [list(shard_range(n, r, world)) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shard_rank_outside_world_is_an_error():
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        shard_range(4, 2, 2)


def test_conversion_keeps_state_and_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[1].weight
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], GlooSyncBatchNorm) and isinstance(converted[2][0], GlooSyncBatchNorm)
    assert converted[1].weight is weight
    assert all(torch.equal(before[k], v) for k, v in converted.state_dict().items())
    x = torch.randn(4, 4, 3, 3)
    ref = nn.BatchNorm2d(4)
    ref.load_state_dict(model[1].state_dict())
    assert torch.allclose(converted[1](x), ref(x), atol=1e-6)  # no process group: plain BatchNorm


def test_unwrap_compiled_like_wrappers():
    inner = nn.Linear(2, 2)

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._orig_mod = inner

    assert unwrap(Wrapper()) is inner and unwrap(inner) is inner


def _sync_bn_rank(rank: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 5) * 3 + 1
    weights = torch.randn(6, 3, 4, 5)
    bn = convert_sync_batchnorm(nn.BatchNorm2d(3), torch.device("cpu"))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    local = x[3 * rank : 3 * rank + 3].clone().requires_grad_(True)
    y = bn(local)
    (y * weights[3 * rank : 3 * rank + 3]).sum().backward()
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)  # what DDP does (up to its 1/world scaling)
    torch.save(
        {"y": y.detach(), "xgrad": local.grad, "pgrad": grads, "rm": bn.running_mean, "rv": bn.running_var},
        out_file,
    )
    dist.destroy_process_group()


def test_gloo_sync_batchnorm_matches_one_process_on_the_whole_batch(tmp_path):
    ctx = mp.get_context("spawn")
    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    procs = [ctx.Process(target=_sync_bn_rank, args=(r, str(tmp_path / "init"), outs[r])) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    got = [torch.load(o) for o in outs]

    torch.manual_seed(0)
    x = (torch.randn(6, 3, 4, 5) * 3 + 1).requires_grad_(True)
    weights = torch.randn(6, 3, 4, 5)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    y = bn(x)
    (y * weights).sum().backward()
    tol = {"atol": 1e-5, "rtol": 1e-5}
    assert torch.allclose(torch.cat([g["y"] for g in got]), y.detach(), **tol)
    assert torch.allclose(torch.cat([g["xgrad"] for g in got]), x.grad, **tol)
    assert torch.allclose(got[0]["pgrad"], torch.cat([bn.weight.grad, bn.bias.grad]), **tol)
    for g in got:
        assert torch.allclose(g["rm"], bn.running_mean, **tol) and torch.allclose(
            g["rv"], bn.running_var, **tol
        )
