"""Start-up recovery: every spool file has a job-store row.

A crash between the spool's fsync and the job store's commit (or a power loss
that takes the last commits with it) leaves a file with no row. The sender was
not told Success for it, but the file is complete and durable, so it is
recorded rather than thrown away.
"""

from __future__ import annotations

import logging
import os

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicomnode.errors import InvalidUIDError
from dicomnode.ingress.handler import instance_uids
from dicomnode.jobs.models import InstanceRecord
from dicomnode.jobs.ports import IngressStore
from dicomnode.spool import Spool

LOGGER = logging.getLogger(__name__)


def recover_spool(spool: Spool, store: IngressStore) -> int:
    """Remove partial writes and record spool files the job store lacks.

    Parameters
    ----------
    spool : Spool
        The instance store.
    store : IngressStore
        The job store.

    Returns
    -------
    int
        How many files were recorded.
    """
    removed = spool.clean_tmp()
    if removed:
        LOGGER.info("removed %d partial write(s) left by an earlier run", removed)
    recorded = 0
    for path in spool.iter_instances():
        if store.has_instance(path.stem):
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            uids = instance_uids(ds)
        except (InvalidDicomError, InvalidUIDError, OSError, ValueError) as exc:
            LOGGER.error("spool file %s is unreadable, left in place: %s", path, exc)
            continue
        store.record_instance(
            InstanceRecord(
                sop_instance_uid=uids.sop,
                series_instance_uid=uids.series,
                study_instance_uid=uids.study,
                sop_class_uid=uids.sop_class,
                transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
                modality=uids.modality,
                path=str(path),
                size=path.stat().st_size,
                calling_ae=str(ds.file_meta.get("SourceApplicationEntityTitle", "")).strip(),
                received_at=os.stat(path).st_mtime,
            )
        )
        recorded += 1
    if recorded:
        LOGGER.warning("recorded %d spool file(s) that had no job-store row", recorded)
    return recorded
