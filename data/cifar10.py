"""CIFAR-10 (32x32 colour, 10 classes), from torchvision's files under `root`."""

from data._torchvision_images import TorchvisionImages


class CIFAR10(TorchvisionImages):
    __doc__ = TorchvisionImages.__doc__
    source = "CIFAR10"
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
