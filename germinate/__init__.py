"""germinate: grow instruction-tuning datasets from seed tasks."""

__version__ = "0.1.0"
