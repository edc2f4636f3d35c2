"""edgekit's own architectures (build side: needs torch), created by name from a registry."""

from edgekit.build.models import nets  # noqa: F401  (registers the built-in architectures)
from edgekit.build.models.registry import create, list_models, model_task  # noqa: F401
