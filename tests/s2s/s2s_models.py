"""Small models for the sparse-to-sparse tests."""

import torch
from torch import nn


class ConvNet(nn.Module):
    """Conv + linear layers of several sizes, so ERK gives them different densities."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class GRUNet(nn.Module):
    """A bidirectional two-layer GRU and a linear head (ChiroDiff-like, tiny)."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.rnn = nn.GRU(5, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def conv_batch(seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, 4, generator=g), torch.randn(n, 10, generator=g)
