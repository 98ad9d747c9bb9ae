"""The DICOM listener: association policy, C-ECHO and C-STORE."""

from dicomnode.ingress.handler import StoreHandler, instance_uids
from dicomnode.ingress.policy import SenderPolicy
from dicomnode.ingress.recovery import recover_spool
from dicomnode.ingress.server import IngressServer

__all__ = ["IngressServer", "SenderPolicy", "StoreHandler", "instance_uids", "recover_spool"]
