"""edgekit's own architectures (build side: needs torch), created by name from a registry."""

from .registry import create, list_models, model_task  # noqa: F401
