from appliance.esp import records


def test_round_trip_keeps_payload_and_metadata() -> None:
    payload = b"core: Traceback\n\x00\xffbinary"
    rec = records.decode(records.encode("runtime-log", payload, {"ended": "killed by\nsignal 11"}))
    assert rec.ok, rec.problem
    assert rec.payload == payload
    assert rec.kind == "runtime-log"
    assert rec.meta["ended"] == "killed by signal 11"  # one line per field


def test_torn_record_is_detected_not_trusted() -> None:
    data = records.encode("runtime-log", b"x" * 1000)
    for cut in (len(data) - 1, len(data) - 500, 30, 10):
        rec = records.decode(data[:cut])
        assert not rec.ok
        assert "torn" in rec.problem or "bad magic" in rec.problem or "incomplete" in rec.problem


def test_corruption_is_detected() -> None:
    data = bytearray(records.encode("runtime-log", b"hello world"))
    data[-3] ^= 0x20
    assert "checksum" in records.decode(bytes(data)).problem
    assert "beyond" in records.decode(records.encode("x", b"ab") + b"zz").problem
    assert "bad magic" in records.decode(b"random bytes").problem
