"""ShotStream: streaming multi-shot video generation for interactive storytelling."""

__version__ = "0.1.0"
