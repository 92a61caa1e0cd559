"""Bytes on disk and on the Hub cache: safetensors reading and streamed writing, atomic output,
checkpoints in any format, ``hf://`` references. Imports nothing above ``rws.io``."""
