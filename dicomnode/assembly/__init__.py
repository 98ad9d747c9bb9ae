"""Study assembly: when a study counts as complete."""

from dicomnode.assembly.completion import Assembler

__all__ = ["Assembler"]
