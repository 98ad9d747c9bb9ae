"""The node's YAML configuration: schema, loading and checking."""

from dicomnode.config.loader import load_config, parse_config
from dicomnode.config.schema import (
    AssemblyConfig,
    DatabaseConfig,
    IngressConfig,
    LoggingConfig,
    NodeConfig,
    SenderConfig,
    Settings,
    StorageConfig,
)

__all__ = [
    "AssemblyConfig",
    "DatabaseConfig",
    "IngressConfig",
    "LoggingConfig",
    "NodeConfig",
    "SenderConfig",
    "Settings",
    "StorageConfig",
    "load_config",
    "parse_config",
]
