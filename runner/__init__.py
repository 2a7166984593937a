"""runner: a GitOps pipeline runner."""

__version__ = "0.1.0"
