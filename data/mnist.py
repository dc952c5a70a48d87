"""MNIST handwritten digits (28x28 grey), from torchvision's files under `root`."""

from data._torchvision_images import TorchvisionImages


class MNIST(TorchvisionImages):
    __doc__ = TorchvisionImages.__doc__
    source = "MNIST"
    mean, std = (0.1307,), (0.3081,)
