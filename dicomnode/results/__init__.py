"""Every outgoing object of a result: DICOM-SEG, TID 1500 SR, overlays, and the HL7
ORU^R01, from a PipelineResult."""
