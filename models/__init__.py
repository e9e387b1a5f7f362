"""monodyn's tensor-level library: cameras, fields, rendering, RAFT and the four methods.

No CLI, no printing, no workspace: functions take tensors / paths they are handed and return results.
"""
