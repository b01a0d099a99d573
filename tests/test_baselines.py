"""Single- and multi-task baselines: head choice, exact sizes, the paper's HRNet-18 sizes, errors."""

from __future__ import annotations

import pytest
import torch

from densepred.models import create_model
from densepred.models.baselines import default_head
from densepred.models.heads import count_parameters

TASKS = ["semseg", "depth", "normals", "edge"]
BACKBONE = "test_convnext"  # stage channels 24/32/48/64, 168 concatenated
OUTS = {"semseg": 40, "depth": 1, "normals": 3, "edge": 1}


def conv_head(cin: int, hidden: int, out: int) -> int:
    return 9 * cin * hidden + 2 * hidden + hidden * out + out


def test_fcn_heads_match_atrc_fcnhead_size():
    model = create_model("mtl_baseline", tasks=TASKS, backbone=BACKBONE, head="fcn")
    heads = count_parameters(model) - count_parameters(model.backbone)
    assert heads == sum(conv_head(168, 168 // 4, OUTS[t]) for t in TASKS)


def test_project_heads_are_mqtransformer_without_transformer():
    model = create_model("mtl_baseline", tasks=TASKS, backbone=BACKBONE, head="project", width_mult=0.25)
    heads = count_parameters(model) - count_parameters(model.backbone)
    fusion = 64 * 168 + 4 * 64  # "add": one 1x1 conv per scale to 64 channels
    assert heads == sum(fusion + conv_head(64, 16, OUTS[t]) for t in TASKS)


@pytest.mark.parametrize("head", ["fcn", "project"])
def test_output_contract(head):
    model = create_model("mtl_baseline", tasks=TASKS, backbone=BACKBONE, head=head, width_mult=0.25).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 36, 44))
    assert {t: tuple(v.shape) for t, v in out.items()} == {
        "semseg": (2, 40, 36, 44),
        "depth": (2, 1, 36, 44),
        "normals": (2, 3, 36, 44),
        "edge": (2, 1, 36, 44),
    }
    assert bool((out["depth"] > 0).all())
    torch.testing.assert_close(out["normals"].norm(dim=1), torch.ones(2, 36, 44))


def test_stl_baseline_is_the_mtl_network_with_one_task():
    torch.manual_seed(0)
    stl = create_model("stl_baseline", tasks=["depth"], backbone=BACKBONE, width_mult=0.25)
    torch.manual_seed(0)
    mtl = create_model("mtl_baseline", tasks=["depth"], backbone=BACKBONE, width_mult=0.25)
    assert count_parameters(stl) == count_parameters(mtl)
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(stl.eval()(image)["depth"], mtl.eval()(image)["depth"])


def test_stl_baseline_rejects_several_tasks():
    with pytest.raises(ValueError, match="exactly one task"):
        create_model("stl_baseline", tasks=["semseg", "depth"], backbone=BACKBONE)


def test_default_head_follows_the_paper():
    assert default_head("hrnet_w18_small_v2") == "fcn"
    assert default_head("resnet50") == "fcn"
    assert default_head("swin_tiny_patch4_window7_224") == "project"


@pytest.mark.parametrize("overrides", [{"head": "mlp"}, {"fusion": "sum"}, {"tasks": "semseg"}])
def test_bad_options_raise_value_error(overrides):
    kwargs = dict(tasks=TASKS, backbone=BACKBONE) | overrides
    with pytest.raises(ValueError):
        create_model("mtl_baseline", **kwargs)


def test_hrnet18_sizes_match_table_ii():
    """Table II: HRNet-18 multi-task baseline 4.52 M, single-task baselines 16.09 M (4 models)."""
    with torch.device("meta"):
        mtl = create_model("mtl_baseline", tasks=TASKS, backbone="hrnet_w18_small_v2")
        stl = [create_model("stl_baseline", tasks=[t], backbone="hrnet_w18_small_v2") for t in TASKS]
    assert mtl.backbone.channels == [18, 36, 72, 144]  # raw HRNet branches, not timm's incre modules
    assert count_parameters(mtl) / 1e6 == pytest.approx(4.52, rel=0.01)
    assert sum(count_parameters(m) for m in stl) / 1e6 == pytest.approx(16.09, rel=0.01)
