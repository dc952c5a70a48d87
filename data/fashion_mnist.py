"""Fashion-MNIST clothing images (28x28 grey), from torchvision's files under `root`."""

from data._torchvision_images import TorchvisionImages


class FashionMNIST(TorchvisionImages):
    __doc__ = TorchvisionImages.__doc__
    source = "FashionMNIST"
    mean, std = (0.2860,), (0.3530,)
