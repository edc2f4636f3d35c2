"""Handing a built model to serving systems: a Triton Inference Server model repository (export-triton), Triton
as run-stream's backend (triton://HOST:PORT/MODEL) and a DeepStream nvinfer configuration (export-deepstream).
Runtime side: NumPy, OpenCV and, for Triton, the `triton` extra (tritonclient)."""
