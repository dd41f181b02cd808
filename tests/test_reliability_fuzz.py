"""The message unpacker, fuzzed: on random bytes and on mutated valid packs it either returns exactly what was
packed or raises the project's BadReply, never anything else (no crash, no other exception, no wrong tensor)."""

from __future__ import annotations

import contextlib

import numpy as np
from flwr.app import Array, ArrayRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_app.messages import PACKED, PACKED_STYPE, BadReply, pack, unpack, unpack_torch

DTYPES = (np.float32, np.float64, np.int64, np.uint8, np.float16)


@st.composite
def named_arrays(draw) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.text("abcdefgh.0123", min_size=1, max_size=12), min_size=1, max_size=4, unique=True))
    out = {}
    for name in names:
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
        n = int(np.prod(shape)) if shape else 1
        raw = draw(st.binary(min_size=n * np.dtype(dtype).itemsize, max_size=n * np.dtype(dtype).itemsize))
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return out


def _record(data: bytes) -> ArrayRecord:
    return ArrayRecord({PACKED: Array(dtype="uint8", shape=(len(data),), stype=PACKED_STYPE, data=data)})


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and
                                      a[k].tobytes() == b[k].tobytes() for k in a)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(named_arrays())
def test_reliability_fuzz_a_valid_pack_round_trips_exactly(arrays) -> None:
    assert _same(unpack(pack(arrays)), arrays)
    assert list(unpack_torch(pack(arrays))) == list(arrays)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_reliability_fuzz_random_bytes_are_a_bad_reply_or_nothing(data) -> None:
    for reader in (unpack, unpack_torch):
        with contextlib.suppress(BadReply):  # anything but BadReply fails the test
            reader(_record(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(named_arrays(), st.data())
def test_reliability_fuzz_a_mutated_pack_is_exact_or_a_bad_reply(arrays, data) -> None:
    buf = bytearray(bytes(pack(arrays)[PACKED].data))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "header"]))
    if how == "flip":
        for i in data.draw(st.lists(st.integers(0, len(buf) - 1), min_size=1, max_size=4)):
            buf[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        buf = buf[: data.draw(st.integers(0, len(buf) - 1))]
    elif how == "extend":
        buf += data.draw(st.binary(min_size=1, max_size=64))
    else:  # a header that claims more bytes than there are, or fewer
        buf[:8] = data.draw(st.integers(0, 2**40)).to_bytes(8, "little")
    for reader in (unpack, unpack_torch):
        try:
            got = reader(_record(bytes(buf)))
        except BadReply:
            continue
        if reader is unpack:  # a mutation safetensors cannot see (e.g. in tensor bytes) changes only values
            assert list(got) == list(arrays) and all(got[k].shape == arrays[k].shape for k in arrays)
