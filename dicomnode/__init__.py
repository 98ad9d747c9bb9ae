"""dicomnode: a DICOM AI node that sits beside the PACS."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
