"""st_raw.py - the stored bytes of every tensor of a safetensors file, by name: what the CLI tests compare
when two runs must hold the same integer state (imported from the repository root)."""
import json
import struct


def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}
