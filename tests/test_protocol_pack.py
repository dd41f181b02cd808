"""Packed tensors (client_app.messages.pack): what a message carries arrives bit for bit, in the sender's order,
as one Flower Array; a record that is not a valid pack is a BadReply that says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from client_app import messages
from client_app.messages import BadReply, pack, unpack, unpack_torch


def raw(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and raw(a) == raw(b)


def torch_payload() -> dict[str, torch.Tensor]:
    """Every kind a payload may hold: bfloat16 and float32 with NaN/-0/inf, a scalar, an empty tensor, a
    non-contiguous view and two views of one storage (safetensors refuses those as they are)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    special = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf"), 1e-45])
    return {"z.last": torch.randn(3, 5, generator=g).to(torch.bfloat16), "a.special": special,
            "m.bf16_special": special.to(torch.bfloat16), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 7),
            "view.t": base.t(), "view.row0": base[0], "view.row1": base[1], "int": torch.arange(5)}


def test_torch_tensors_round_trip_bit_identically_in_order() -> None:
    sent = torch_payload()
    record = pack(sent)
    assert list(record) == [messages.PACKED] and len(record) == 1  # one Array, not one per tensor
    got = unpack_torch(record)
    assert list(got) == list(sent)
    for k, v in sent.items():
        assert same_bits(got[k], v), k


def test_numpy_arrays_round_trip_bit_identically_and_writable() -> None:
    rng = np.random.default_rng(0)
    sent = {"b": rng.standard_normal((4, 3)).astype(np.float32), "a": np.float64(3.0),
            "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2], "half": np.array([1, -0.0], np.float16),
            "empty": np.zeros((0, 2), np.int64), "flags": np.array([True, False])}
    got = unpack(pack(sent))
    assert list(got) == list(sent)
    for k, v in sent.items():
        v = np.asarray(v)
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and got[k].tobytes() == v.tobytes(), k
        assert got[k].flags.writeable, k
    # The ClientApp's numpy side and the server's torch side read the same bytes.
    as_torch = unpack_torch(pack(sent))
    assert all(same_bits(as_torch[k], torch.from_numpy(np.asarray(v))) for k, v in sent.items())


def test_nothing_packs_to_an_empty_record() -> None:
    """A client that uploads nothing (local-only training) sends no bytes and no Array."""
    record = pack({})
    assert len(record) == 0 and record.count_bytes() == 0
    assert unpack(record) == {} and unpack_torch(record) == {}


def test_a_train_reply_carries_its_tensors_in_two_arrays() -> None:
    """The message the ClientApp sends back, read as the server reads it."""
    adapters = {"m.router": np.ones((4, 6), np.float32), "m.experts.1.A": np.full((4, 6), 0.5, np.float32)}
    result = messages.ClientResult({"score": 1.0, "train_loss": 0.5, "experts_mean": 1.0, "num_examples": 3,
                                    "seconds": 0.1}, adapters, {"m.router_stat": np.zeros(4, np.float32)},
                                   {"task": "t", "metric": "accuracy"})
    content = messages.train_reply("0", result)
    assert sum(len(r) for r in content.array_records.values()) == 2
    reply = messages.read_train_reply(content)
    assert list(reply.adapters) == list(adapters) and torch.equal(reply.adapters["m.router"], torch.ones(4, 6))
    assert reply.metrics["bytes_up"] == content["adapters"].count_bytes() + content["stats"].count_bytes()


def bad(data: bytes, stype: str = messages.PACKED_STYPE) -> ArrayRecord:
    return ArrayRecord({messages.PACKED: Array(dtype="uint8", shape=(len(data),), stype=stype, data=data)})


def valid_bytes() -> bytes:
    return bytes(pack({"x": np.ones(3, np.float32)})[messages.PACKED].data)


@pytest.mark.parametrize(("record", "says"), [
    (bad(b"not safetensors"), "not a readable safetensors buffer"),
    (bad(valid_bytes()[:-4]), "not a readable safetensors buffer"),  # truncated data
    (bad(valid_bytes(), stype="numpy.ndarray"), "serialization 'numpy.ndarray'"),
    (ArrayRecord({"x": Array(np.ones(3, np.float32))}), "expected one packed array 'packed', got ['x']"),
    (ConfigRecord({"x": 1}), "got ConfigRecord"),
])
def test_a_malformed_pack_is_a_bad_reply(record, says: str) -> None:
    for read in (unpack, unpack_torch):
        with pytest.raises(BadReply, match="malformed adapters") as err:
            read(record, "adapters")
        assert says in str(err.value)


def test_a_pack_whose_order_does_not_match_its_tensors_is_a_bad_reply() -> None:
    from safetensors.numpy import save

    tensors = {"x": np.ones(2, np.float32)}
    for metadata in (None, {messages.ORDER: '["x", "y"]'}, {messages.ORDER: '["x", "x"]'}, {messages.ORDER: "{}"}):
        with pytest.raises(BadReply, match="tensor order does not name exactly its 1 tensors"):
            unpack(bad(save(tensors, metadata=metadata)), "statistics")


def test_numpy_cannot_hold_bfloat16_and_says_so() -> None:
    with pytest.raises(BadReply, match="BF16.*unpack_torch"):
        unpack(pack({"x": torch.ones(2, dtype=torch.bfloat16)}), "request's adapters")


def test_a_malformed_train_reply_names_the_record() -> None:
    content = RecordDict({"adapters": bad(b"junk"), "stats": pack({}), "metrics": ConfigRecord({}),
                          "info": ConfigRecord({})})
    with pytest.raises(BadReply, match="malformed train reply's adapters: not a readable"):
        messages.read_train_reply(content)
