"""Quality filters: one concern per module, plain Python over records."""
