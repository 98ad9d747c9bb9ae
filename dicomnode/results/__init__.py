"""Result writers: DICOM-SEG, TID 1500 SR, and overlays, from a PipelineResult."""
