"""Every registered model builds from (name, classes, input shape), seeded."""
import pytest
import torch

from training.errors import UserError
from training.sparsity.masks import output_name
from training.models import MODELS, build_model

SHAPES = {"mnist1d_mlp": (1, 40), "mnist1d_cnn": (1, 40), "mnist1d_cnn_bn": (1, 40), "lenet_300_100": (1, 28, 28), "lenet5": (1, 28, 28),
          "resnet18_imagenet": (3, 64, 64)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_builds_runs_and_is_seeded(name):
    shape = SHAPES.get(name, (3, 32, 32))
    a, b, c = (build_model(name, 7, shape, seed) for seed in (0, 0, 1))
    a.eval()
    assert a(torch.randn(2, *shape)).shape == (2, 7)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert dict(a.named_parameters())[output_name(a)].shape[0] == 7


def test_seeding_leaves_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("conv2", 10, (3, 32, 32), 5)
    assert torch.equal(torch.rand(3), expected)


def test_known_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_model("resnet20", 10, (3, 32, 32), 0)) == 269_722  # He et al.: 0.27M
    assert count(build_model("lenet_300_100", 10, (1, 28, 28), 0)) == 266_610


def test_image_model_on_1d_data_and_unknown_name():
    with pytest.raises(UserError, match="needs image input"):
        build_model("resnet20", 10, (1, 40), 0)
    with pytest.raises(UserError, match="unknown model 'resnet21'.*resnet20"):
        build_model("resnet21", 10, (3, 32, 32), 0)
