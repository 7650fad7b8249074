"""Serialized tf.Examples of scalar features, byte for byte as protobuf writes them.

The preprocess stage writes 10^5-10^7 raw examples; building a tf.train.Example per row and
serializing it (or tf.Transform's ExampleProtoCoder) cost more than the rest of the stage.
ExampleEncoder writes the wire format directly, and checks itself against protobuf's
deterministic serialization when it is built (tests/test_artifacts.py checks it on random data).
"""
from __future__ import annotations

import itertools
import operator
import struct

import tensorflow as tf


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint; a negative int64 as its 64-bit two's complement."""
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [_varint(n) for n in range(1 << 14)]  # the lengths an example's parts have (two bytes at most)


def _delimited(payload: bytes) -> bytes:
    return _varint(len(payload)) + payload


# tf.train.Feature holding one value: int64_list (field 3), float_list (2) or bytes_list (1).
def _int64_feature(value) -> bytes:
    return b"\x1a" + _delimited(b"\x0a" + _delimited(_varint(operator.index(value))))


def _bytes_feature(value) -> bytes:
    return b"\x0a" + _delimited(b"\x0a" + _delimited(value if isinstance(value, bytes) else value.encode("utf-8")))


_FLOAT = struct.Struct("<f")


class ExampleEncoder:
    """Columns of scalar features -> serialized tf.Examples, equal to protobuf's deterministic
    serialization (map keys in its order), so the bytes do not depend on the process.

    tf.Transform's ExampleProtoCoder is pure Python per feature, and the deterministic
    re-serialization its varying map order needed cost as much again. A feature's bytes
    depend only on its name and value: each (column, value) is encoded once and an example
    is the concatenation of its columns' pieces, behind a length prefix.
    """
    MEMO_SIZE = 1 << 16  # encoded values kept per column

    def __init__(self, feature_spec: dict):
        self.heads, self.encoders, sample = {}, {}, {}
        for name, spec in feature_spec.items():
            key = b"\x0a" + _delimited(name.encode()) + b"\x12"  # map entry: the key (field 1), the Feature (2)
            if spec.dtype == tf.float32:  # fixed size: one head for every value, then the float's 4 bytes
                entry = key + b"\x08\x12\x06\x0a\x04"  # Feature of 8 bytes: float_list of 6: packed value
                self.heads[name] = b"\x0a" + _varint(len(entry) + 4) + entry
                sample[name] = 1.0
            else:
                self.heads[name] = key
                self.encoders[name] = _int64_feature if spec.dtype == tf.int64 else _bytes_feature
                sample[name] = 1 if spec.dtype == tf.int64 else "x"
        self.memo = {name: {} for name in self.encoders}
        # Protobuf's deterministic key order is its own (not plain sorting): read it off a sample.
        reference = _protobuf_example(feature_spec, sample)
        self.order = sorted(feature_spec, key=lambda name: reference.index(self._column(name, [sample[name]])[0]))
        if self.encode({name: [value] for name, value in sample.items()}) != [reference]:
            raise RuntimeError("ExampleEncoder disagrees with protobuf's serialization of tf.Example")

    def _column(self, name, values) -> list[bytes]:
        """Each value's map entry (tag, length, entry) of feature `name`."""
        head, encode = self.heads[name], self.encoders.get(name)
        if encode is None:
            return [head + _FLOAT.pack(value) for value in values]
        memo = self.memo[name]
        if len(memo) > self.MEMO_SIZE:
            memo.clear()
        out = []
        for value in values:
            piece = memo.get(value)
            if piece is None:
                piece = memo[value] = b"\x0a" + _delimited(head + _delimited(encode(value)))
            out.append(piece)
        return out

    def encode(self, columns: dict, constants: dict | None = None) -> list[bytes]:
        """{feature: [value per example]} -> [tf.Example bytes per example].

        constants: {feature: value} of features that have one value in every example (e.g. a
        user's columns in the user's examples), encoded once instead of once per example;
        neighbours in the wire order are joined into one piece, so an example joins fewer."""
        constants = constants or {}
        n = len(next(iter(columns.values()))) if columns else 0
        pieces, run = [], []
        for name in self.order:
            if name in constants:
                run.append(self._column(name, [constants[name]])[0])
                continue
            if run:
                pieces.append(itertools.repeat(b"".join(run), n))
                run = []
            pieces.append(self._column(name, columns[name]))
        if run:
            pieces.append(itertools.repeat(b"".join(run), n))
        bodies = list(map(b"".join, zip(*pieces))) if pieces else [b""] * n
        return [b"\x0a" + (_VARINTS[n] if n < len(_VARINTS) else _varint(n)) + body
                for n, body in zip(map(len, bodies), bodies)]


def _protobuf_example(feature_spec, values) -> bytes:
    """One example through protobuf itself: the reference ExampleEncoder checks itself against."""
    example = tf.train.Example()
    for name, value in values.items():
        feature = example.features.feature[name]
        dtype = feature_spec[name].dtype
        if dtype == tf.int64:
            feature.int64_list.value.append(value)
        elif dtype == tf.float32:
            feature.float_list.value.append(value)
        else:
            feature.bytes_list.value.append(value.encode("utf-8"))
    return example.SerializeToString(deterministic=True)

