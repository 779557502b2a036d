"""The one error type of the input pipeline: a bad input record, named by file and record.

Readers raise `CorruptRecord`; preparation catches it, skips the record, counts it under its
`kind` and lists it in the report; nothing bad is ever written to the output.
"""

from __future__ import annotations


class CorruptRecord(ValueError):
    """A record of an input file that cannot be used.

    source: the file (tar, mp4, json, png) it came from; record: the record inside it (tar
    member, image id, video id, frame); kind: a short machine-readable category used for the
    counts of the preparation report (e.g. "bad_jpeg", "rle_size_mismatch").
    """

    def __init__(self, source: str, record: str, kind: str, reason: str):
        self.source, self.record, self.kind, self.reason = str(source), str(record), kind, reason
        super().__init__(f"{self.source} [{self.record}]: {kind}: {reason}")

    def as_dict(self) -> dict:
        return {"source": self.source, "record": self.record, "kind": self.kind,
                "reason": self.reason}
