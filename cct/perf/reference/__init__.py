"""Reference pipelines written the usual way (timm/torchvision style, per-sample Pillow ops,
a DataLoader, explicit attention): what the suite compares ours against, and the tests'
oracles for our batched device implementations. Ships with the package, so the GPU check can
use them on a bare box."""
