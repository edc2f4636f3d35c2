"""edgekit: from a trained PyTorch vision model to a measured real-time stream on NVIDIA Jetson."""

__version__ = "0.1.0"
