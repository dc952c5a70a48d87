"""The model files: shapes, layer structure, pretrained loading and freezing, weight initialisation."""

import math

import pytest
import torch
import torchvision
from torch import nn

from data_contract import data_dims, size_defaults, sized_net_args
from model._weight_init import SCHEMES, detect_nonlinearity, init_weights
from model.cnn import CNN
from model.linear import LinearRegressionModel
from model.mlp import MLP
from model.torchvision_model import TorchvisionModel
from utils import ConfigError, available, find_class


@pytest.mark.parametrize(("name", "cls"), [("mlp", MLP), ("cnn", CNN), ("torchvision_model", TorchvisionModel)])
def test_files_define_one_selectable_model(name: str, cls: type) -> None:
    assert find_class("model", name, nn.Module) is cls
    assert "_weight_init" not in available("model")


# --- Sizes from the data ------------------------------------------------------------------------------------------


def test_the_command_line_leaves_each_models_size_arguments_for_the_data() -> None:
    assert size_defaults(MLP) == {"model.net_args.input_size": None, "model.net_args.output_size": None}
    assert size_defaults(CNN) == {"model.net_args.num_classes": None, "model.net_args.in_channels": None}
    assert size_defaults(TorchvisionModel) == {"model.net_args.num_classes": None, "model.net_args.in_channels": None}
    assert size_defaults(LinearRegressionModel) == {}


def test_the_data_describes_itself_and_fills_in_the_sizes_left_unset() -> None:
    images = data_dims((torch.zeros(3, 8, 6), 2), ["cat", "dog", "frog"])
    assert images == {"input_size": 144, "output_size": 3, "num_classes": 3, "in_channels": 3, "image_size": [8, 6]}
    assert data_dims((torch.zeros(1), torch.zeros(1)), None) == {"input_size": 1, "output_size": 1}
    sized = sized_net_args(CNN, {"channels": [4], "in_channels": None}, images, net="cnn", data="folder")
    assert sized == {"channels": [4], "in_channels": 3, "num_classes": 3}
    assert sized_net_args(CNN, {"num_classes": 3}, images, net="cnn", data="folder")["in_channels"] == 3
    with pytest.raises(ConfigError, match=r"^model.net_args.num_classes is 5 but the data \(folder\) has 3: remove"):
        sized_net_args(CNN, {"num_classes": 5}, images, net="cnn", data="folder")
    with pytest.raises(ConfigError, match="^model 'cnn' needs num_classes, in_channels, which the data does not give"):
        sized_net_args(CNN, {}, {}, net="cnn", data="folder")


# --- MLP ---------------------------------------------------------------------------------------------------------


def test_mlp_flattens_images() -> None:
    assert MLP(input_size=784, output_size=10)(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert MLP(input_size=1, output_size=1, hidden_sizes=())(torch.randn(4)).shape == (4, 1)


def test_mlp_layers_as_configured() -> None:
    net = MLP(input_size=784, output_size=10, hidden_sizes=[64, 32], activation="GELU", dropout=0.5)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 64), (64, 32), (32, 10)]
    assert sum(isinstance(m, nn.GELU) for m in net.modules()) == 2
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert not any(isinstance(m, nn.Dropout) for m in MLP().modules())
    assert [(m.in_features, m.out_features) for m in MLP().modules() if isinstance(m, nn.Linear)] == [
        (20, 256),
        (256, 10),
    ]


def test_mlp_unknown_activation_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"'Relu'.*did you mean ReLU"):
        MLP(activation="Relu")
    with pytest.raises(ConfigError, match="Choose a class name from torch.nn"):
        MLP(activation="Softmax")


@pytest.mark.parametrize("kwargs", [{"input_size": 0}, {"hidden_sizes": [8, 0]}, {"dropout": 1.0}])
def test_mlp_bad_sizes(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="MLP"):
        MLP(**kwargs)


# --- CNN ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 13, 17), (1, 1, 1)])
def test_cnn_any_image_size(shape: tuple[int, int, int]) -> None:
    net = CNN(in_channels=shape[0], num_classes=5, channels=(8, 16, 16))
    assert net(torch.randn(2, *shape)).shape == (2, 5)


def test_cnn_layers_as_configured() -> None:
    net = CNN(in_channels=3, channels=[8, 16], convs_per_block=2, dropout=0.3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(3, 8), (8, 8), (8, 16), (16, 16)]
    assert all(m.bias is None and m.kernel_size == (3, 3) for m in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 2
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.3]
    assert len([m for m in CNN().modules() if isinstance(m, nn.Conv2d)]) == 3


def test_cnn_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    net = CNN(in_channels=1, num_classes=2, channels=(8, 16))
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 2, (16,))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(50):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_cnn_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="at least one block"):
        CNN(channels=[])


# --- TorchvisionModel --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, torch.Tensor]]:
    """A random resnet18 state_dict saved as torchvision publishes its weights."""
    state_dict = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state_dict, path)
    return str(path), state_dict


@pytest.mark.parametrize(("arch", "head"), [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")])
def test_torchvision_grayscale_with_new_head(arch: str, head: str) -> None:
    net = TorchvisionModel(arch, num_classes=7, in_channels=1).eval()
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    assert net.head_name == head
    assert net.model.get_submodule(head).out_features == 7


def test_torchvision_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        TorchvisionModel("resnet_18")
    with pytest.raises(ConfigError, match=r"no such file.*get_state_dict"):
        TorchvisionModel("resnet18", weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="no linear classifier head"):
        TorchvisionModel("squeezenet1_1")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(ConfigError, match="not a readable state_dict"):
        TorchvisionModel("resnet18", weights_path=str(junk))


def test_torchvision_weights_of_another_arch(tmp_path) -> None:
    path = tmp_path / "squeezenet.pth"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
    with pytest.raises(ConfigError, match=r"squeezenet.pth.*does not fit torchvision's resnet18"):
        TorchvisionModel("resnet18", weights_path=str(path))


@pytest.mark.parametrize("in_channels", [1, 3, 5])
def test_torchvision_loads_pretrained_weights(resnet18_file, in_channels: int) -> None:
    path, saved = resnet18_file
    net = TorchvisionModel("resnet18", num_classes=4, in_channels=in_channels, weights_path=path)
    loaded = net.model.state_dict()
    conv = saved["conv1.weight"]
    if in_channels == 1:
        expected = conv.sum(dim=1, keepdim=True)
    elif in_channels == 3:
        expected = conv
    else:
        expected = torch.cat([conv, conv[:, :2]], dim=1) * 3 / 5
    torch.testing.assert_close(loaded["conv1.weight"], expected)
    for key, value in saved.items():
        if key != "conv1.weight" and not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert loaded["fc.weight"].shape == (4, 512)


def test_torchvision_freeze_backbone_trains_only_the_head(resnet18_file) -> None:
    net = TorchvisionModel("resnet18", num_classes=3, weights_path=resnet18_file[0], freeze_backbone=True)
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"model.fc.weight", "model.fc.bias"}
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    nn.functional.cross_entropy(net(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2])).backward()
    optimizer.step()
    changed = {name for name, p in net.named_parameters() if not torch.equal(p, before[name])}
    assert changed == trainable


# --- init_weights ------------------------------------------------------------------------------------------------


def _net(activation: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        activation,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 512),
        nn.Linear(512, 512),
    )


def _expected_spread(scheme: str, gain: float, fan: int = 512) -> float:
    """The std (normal schemes) or bound (uniform schemes) of a fan×fan layer's weights."""
    return {
        "xavier_uniform": gain * math.sqrt(6 / (2 * fan)),
        "xavier_normal": gain * math.sqrt(2 / (2 * fan)),
        "kaiming_uniform": gain * math.sqrt(3 / fan),
        "kaiming_normal": gain / math.sqrt(fan),
        "normal": 0.01,
    }[scheme]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_init_weights_schemes(scheme: str) -> None:
    net = _net(nn.ReLU())
    with torch.no_grad():
        for p in net[1].parameters():
            p.uniform_(2, 3)
    init_weights(net, scheme, bias=0.3)
    for layer in (net[0], net[5], net[6]):
        assert torch.all(layer.bias == 0.3)
    assert torch.all(net[1].weight == 1) and torch.all(net[1].bias == 0)
    weight, gain = net[6].weight, math.sqrt(2)
    if scheme == "orthogonal":
        torch.testing.assert_close(weight @ weight.T, gain**2 * torch.eye(512), atol=1e-4, rtol=0)
    elif scheme.endswith("uniform"):
        bound = _expected_spread(scheme, gain)
        assert 0.99 * bound < weight.abs().max() <= bound
    else:
        assert weight.std().item() == pytest.approx(_expected_spread(scheme, gain), rel=0.05)


@pytest.mark.parametrize(
    ("activation", "scheme", "gain"),
    [
        (nn.Tanh(), "xavier_normal", 5 / 3),
        (nn.LeakyReLU(0.2), "kaiming_normal", math.sqrt(2 / (1 + 0.2**2))),
        (nn.GELU(), "kaiming_normal", math.sqrt(2)),
        (nn.Identity(), "xavier_normal", math.sqrt(2)),
    ],
)
def test_init_weights_detects_the_nonlinearity(activation: nn.Module, scheme: str, gain: float) -> None:
    net = _net(activation)
    init_weights(net, scheme)
    assert net[6].weight.std().item() == pytest.approx(_expected_spread(scheme, gain), rel=0.05)
    assert torch.all(net[6].bias == 0)


def test_init_weights_given_nonlinearity_wins() -> None:
    net = _net(nn.ReLU())
    init_weights(net, "kaiming_normal", nonlinearity="linear")
    assert net[6].weight.std().item() == pytest.approx(_expected_spread("kaiming_normal", 1.0), rel=0.05)
    assert detect_nonlinearity(nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.ReLU())) == ("sigmoid", None)


def test_init_weights_errors() -> None:
    with pytest.raises(ConfigError, match=r"did you mean kaiming_normal.*orthogonal"):
        init_weights(_net(nn.ReLU()), "kaiming_norml")
    with pytest.raises(ConfigError, match="did you mean leaky_relu"):
        init_weights(_net(nn.ReLU()), "xavier_normal", nonlinearity="leaky_rel")
