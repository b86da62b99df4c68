#!/usr/bin/env python3
"""make_tb_fixture.py - a TensorBoard event file written by TensorBoard's own code, for anvil's tests.

Writes tests/fixtures/tb/ (or --out):
  events.out.tfevents.golden   framed by tensorboard.summary.writer.record_writer.RecordWriter
                               (TFRecord with masked CRC-32C), each record an Event serialized
                               by the protobuf library from tensorboard.compat.proto.event_pb2
  golden.tsv                   the same records as text, one per line, for the C test to feed
                               anvil's writer:  kind <TAB> step <TAB> wall_time <TAB> tag <TAB> value
                               kind: version (file_version "brain.Event:2"), scalar, start
                               (a SessionLog START); numbers as Python repr (round-trip exact)
  expected.tsv                 what EventAccumulator (tensorboard's reader, purging on START)
                               returns for those records: tag <TAB> step <TAB> wall_time <TAB> value

tests/test_report.c writes golden.tsv with anvil's writer and compares the bytes with
events.out.tfevents.golden, and reads events.out.tfevents.golden with anvil's reader and
compares it with expected.tsv. Deterministic: the same tensorboard/protobuf give the same bytes.
    python3 -m venv /tmp/tbvenv && /tmp/tbvenv/bin/pip install tensorboard
    /tmp/tbvenv/bin/python tools/make_tb_fixture.py
"""
import argparse
import os
import struct
import tempfile

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

T0 = 1700000000.25  # the file_version event's wall time

# (kind, step, wall_time, tag, value): edge cases of the encoding - step 0 (a proto3 default,
# not serialized), a large step, value 0.0 (set inside a oneof, so serialized), negative, tiny
# and huge values, values float32 cannot hold exactly, a UTF-8 tag, and a restart at step 3
# that rewrites steps 3 and 4.
RECORDS = [
    ("version", 0, T0, "", 0.0),
    ("scalar", 0, T0 + 0.5, "train/loss", 10.837712),
    ("scalar", 1, T0 + 1.0, "train/loss", 9.5),
    ("scalar", 1, T0 + 1.0, "train/lr", 1.5e-4),
    ("scalar", 1, T0 + 1.0, "train/grad_norm", 0.0),
    ("scalar", 2, T0 + 2.0, "train/loss", -3.25),
    ("scalar", 2, T0 + 2.0, "train/tokens_per_s", 594679.4),
    ("scalar", 3, T0 + 3.0, "train/loss", 8.1),
    ("scalar", 4, T0 + 4.0, "train/loss", 7.9),
    ("scalar", 4, T0 + 4.0, "val/loss", 7.5229),
    ("start", 3, T0 + 10.0, "", 0.0),
    ("scalar", 3, T0 + 11.0, "train/loss", 8.0999999),
    ("scalar", 4, T0 + 12.0, "train/loss", 7.8999999),
    ("scalar", 5, T0 + 13.0, "mcq/acc_\u00fc", 0.1),
    ("scalar", 6, T0 + 14.0, "train/tiny", 1e-30),
    ("scalar", 7, T0 + 15.0, "train/huge", 3.0e38),
    ("scalar", 2**40, T0 + 16.0, "train/tokens_seen", 2.0**33 + 1),
]


def event_for(kind, step, wall, tag, value):
    if kind == "version":
        return event_pb2.Event(wall_time=wall, step=step, file_version="brain.Event:2")
    if kind == "start":
        return event_pb2.Event(wall_time=wall, step=step,
                               session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
    v = summary_pb2.Summary.Value(tag=tag, simple_value=value)
    return event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(value=[v]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/tb")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "events.out.tfevents.golden")
    w = RecordWriter(open(path, "wb"))
    for r in RECORDS:
        w.write(event_for(*r).SerializeToString())
    w.close()
    with open(os.path.join(args.out, "golden.tsv"), "w", encoding="utf-8") as f:
        for kind, step, wall, tag, value in RECORDS:
            f.write(f"{kind}\t{step}\t{wall!r}\t{tag}\t{value!r}\n")

    # TensorBoard's reader over a copy in its own directory (it loads every file of a directory).
    with tempfile.TemporaryDirectory() as d:
        with open(path, "rb") as src, open(os.path.join(d, "events.out.tfevents.golden"), "wb") as dst:
            dst.write(src.read())
        acc = event_accumulator.EventAccumulator(d, size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        rows = []
        for tag in sorted(acc.Tags()["scalars"]):
            for e in acc.Scalars(tag):
                rows.append((tag, e.step, e.wall_time, e.value))
    with open(os.path.join(args.out, "expected.tsv"), "w", encoding="utf-8") as f:
        for tag, step, wall, value in rows:
            # value: the float32 TensorBoard read, printed exactly (as a float32 bit pattern too)
            bits = struct.unpack("<I", struct.pack("<f", value))[0]
            f.write(f"{tag}\t{step}\t{wall!r}\t{value!r}\t{bits:08x}\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes), {len(RECORDS)} records, {len(rows)} scalars read back")


if __name__ == "__main__":
    main()
