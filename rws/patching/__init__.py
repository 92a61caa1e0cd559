"""Patches as data: the file format, codecs, delta arithmetic, tensor selection, the immutable
:class:`~rws.patching.patch.Patch`, live-module ops and streamed file apply/remove."""
