"""Built-in pipelines, one sub-package each (registered through entry points)."""
