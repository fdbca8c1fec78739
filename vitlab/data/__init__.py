"""Datasets as plain uint8 tensors, and a batched, on-device transform that turns them into ViT inputs.

The notebook pushed every image through PIL transforms in a DataLoader, one image at a time, on the CPU. vitlab keeps
each dataset as one uint8 tensor and does resize, flip, rotation and ImageNet normalisation on a whole batch at once,
on whatever device the batch is on:

    splits = load_dataset("cifar100")          # or "cifar10", "shapes", "fashion" (offline), "fashion_mnist", "folder"
    transform = BatchTransform(image_size=224, train=True)
    for images, labels in batches(splits.train, 64, shuffle=True, device="cuda"):
        x = transform(images)                              # (64, 3, 32, 32) uint8 -> (64, 3, 224, 224) float

One concept a module:

    dataset     ImageDataset (one split in memory), DataSplits (train/val/test), batches, seeded_generator
    transforms  BatchTransform (uint8 -> normalised ViT input), IMAGENET_MEAN/STD, denormalize
    cifar       CIFAR-10/100 through torchvision, with errors that say what to do
    folder      your own images, one subfolder per class
    shapes      the synthetic, offline shapes with exact object masks (a generated dataset)
    fashion     Fashion-MNIST's real photos: a subset shipped inside vitlab, or all 70,000 from idx files
    load        load_dataset(name) and DATASETS: picks the loader above for a name

Loaders import only `dataset`; `load` imports the loaders; nothing here imports `load` but this file.
"""

from vitlab.data.dataset import DataSplits, ImageDataset, batches, seeded_generator
from vitlab.data.load import DATASETS, load_dataset
from vitlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, denormalize

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchTransform",
    "DataSplits",
    "ImageDataset",
    "batches",
    "denormalize",
    "load_dataset",
    "seeded_generator",
]
