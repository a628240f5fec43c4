"""Model zoo: CIFAR ResNets, VGG-16-bn, MobileNetV2, tiny test variants, torchvision models."""

from . import cifar_resnet, mobilenetv2, vgg  # noqa: F401  (registration side effects)
from .registry import check_resolution, create_model, get_entry, list_models, register_model

__all__ = ["check_resolution", "create_model", "get_entry", "list_models", "register_model"]
