"""The node's YAML configuration: schema, loading and checking."""

from dicomnode.config.loader import load_config, parse_config
from dicomnode.config.monitoring import MonitoringConfig
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
from dicomnode.config.tls import ClientTLSConfig, ServerTLSConfig

__all__ = [
    "AssemblyConfig",
    "ClientTLSConfig",
    "DatabaseConfig",
    "IngressConfig",
    "LoggingConfig",
    "MonitoringConfig",
    "NodeConfig",
    "SenderConfig",
    "ServerTLSConfig",
    "Settings",
    "StorageConfig",
    "load_config",
    "parse_config",
]
