"""mpsctl: operate a local PyTorch model-serving service (MPS, CUDA or CPU) safely."""

__version__ = "0.1.0"
