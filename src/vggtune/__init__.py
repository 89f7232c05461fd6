"""vggtune: fine-tune ImageNet-pretrained VGG networks on your own class folders."""

__version__ = "0.2.0"
