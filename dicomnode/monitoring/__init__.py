"""Monitoring: how well a pipeline does at this site.

:mod:`dicomnode.monitoring.evaluate` runs a labelled set (DICOM studies plus
reference SEGs, or a CSV of labels per study) through the same pipeline code
the node runs and scores it; :mod:`dicomnode.monitoring.report` writes the
numbers (``metrics.json``) and a self-contained HTML report. Nothing here
changes a result or stands in the way of delivery: the stages never import it.
"""
