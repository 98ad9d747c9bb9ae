"""Monitoring: how well a pipeline does at this site, and whether what it sees moves.

:mod:`dicomnode.monitoring.evaluate` runs a labelled set (DICOM studies plus
reference SEGs, or a CSV of labels per study) through the same pipeline code
the node runs and scores it; :mod:`dicomnode.monitoring.report` writes the
numbers (``metrics.json``) and a self-contained HTML report.
:mod:`dicomnode.monitoring.descriptors` describes each run's input and output,
and :mod:`dicomnode.monitoring.drift` compares recent runs with reference runs
per pipeline and raises an alert when a descriptor moved. Nothing here changes
a result or stands in the way of delivery.
"""

__all__: list[str] = []
