"""Small test networks shared by several test files."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def pooled_cnn(channels: tuple[int, int, int], flat: int, hidden: int, out: int) -> nn.Sequential:
    """conv1 3×3 → relu1 → pool1 (max 2) → conv2 3×3 → relu2 → pool2 → flatten → fc1 → tanh →
    fc2, float64, seeded (``torch.manual_seed(0)``). channels: (in, conv1, conv2); flat: the
    flattened size after pool2 (conv2 channels × the pooled map)."""
    c_in, c1, c2 = channels
    f64 = torch.float64
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(c_in, c1, 3, padding=1, dtype=f64), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(c1, c2, 3, padding=1, dtype=f64), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(), fc1=nn.Linear(flat, hidden, dtype=f64), tanh=nn.Tanh(),
        fc2=nn.Linear(hidden, out, dtype=f64)))


def batch_norm_statistics(model: nn.Module) -> None:
    """Eval-mode statistics and affine parameters that are not the identity."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)


class BasicBlock(nn.Module):
    """torchvision's ResNet block: one ReLU module called twice, ``out += identity`` in place,
    a projection ``downsample`` (1×1 stride-2 conv and batch norm) where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block: 1×1, 3×3 (stride), 1×1 convolutions with batch norms, a
    projection where the stride changes the map, the ReLU module run three times."""

    def __init__(self, c: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 else nn.Sequential(nn.Conv2d(c, c, 1, stride, bias=False),
                                                                 nn.BatchNorm2d(c))

    def forward(self, x):
        out = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class TorchvisionResNet(nn.Module):
    """Stem, ``layer1`` (default: a block and a downsampling block), pool, Linear: torchvision's
    ResNet in small; ``blocks`` builds layer1's blocks (after the seed is set), ``width`` is
    the stem's channels and ``out`` layer1's."""

    def __init__(self, blocks=lambda: [BasicBlock(3, 3), BasicBlock(3, 4, 2)], width: int = 3, out: int = 4):
        super().__init__()
        torch.manual_seed(6)
        self.conv1, self.bn1 = nn.Conv2d(2, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(*blocks())
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(out, 3)
        batch_norm_statistics(self)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
