"""zq.protocol: the records pack as the lists they replaced, the checkers refuse what is
malformed with ProtocolError, one table holds every command, one every error code."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest

from zq import protocol as P
from zq.envelope import ErrorInfo, TaskState
from zq.errors import ProtocolError
from zq.protocol import commands as commands_module
from zq.serialize import ArgFrames

DIGEST = bytes(range(16))
LINK = ["next.fn", DIGEST, b"fn-bytes", b"arg-bytes", None]
TASK = ["t-1", "mod.fn", "default", DIGEST, "client-1", None, 2, 5.0, 1700000000.5, 1, [],
        {"prio": 3, "then": [LINK]}]
ERROR = ["ValueError", "builtins", "bad value", "Traceback ..."]
RESULT = ["t-1", "mod.fn", "FAILED", ERROR, 1, "w-1", "host", 1234, "default", 1.0, 2.0, 3.0, 1.0,
          "client-1", True, ["attempt 1: lost"], 60.0]
CONT = ["next.fn", DIGEST, b"fn-bytes", b"arg-bytes", "q2", [LINK]]
COMPLETION = ["t-1", "SUCCESS", None, b"value", 1.0, 2.0, 1.0, 4321, CONT, 1]
PROGRESS = ["t-1", 3.0, 10.0, "working", 1700000001.0]
REPORT = [3.0, 10.0, "working", 1700000001.0, 7.5]

#: record -> the list it replaced (a sample of every field)
SAMPLES: dict[type, list] = {
    P.TaskRow: TASK,
    P.ErrorRow: ERROR,
    P.ResultFields: RESULT,
    P.ChainLink: LINK,
    P.Continuation: CONT,
    P.Completion: COMPLETION,
    P.ProgressRow: PROGRESS,
    P.ProgressReport: REPORT,
    P.ProgressEvent: ["progress", *PROGRESS],
    P.SpawnEvent: ["spawn", TASK, b"fn-bytes", b"arg-bytes"],
}


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_every_record_has_a_sample() -> None:
    assert set(SAMPLES) == set(P.RECORDS)
    for record, sample in SAMPLES.items():
        assert len(record._fields) == len(sample), record.__name__


@pytest.mark.parametrize("record", P.RECORDS, ids=lambda r: r.__name__)
def test_record_packs_as_the_list_it_replaced(record: type) -> None:
    sample = SAMPLES[record]
    rec = record(*sample)
    assert packb(rec) == packb(sample)  # the wire bytes do not change
    assert msgpack.unpackb(packb(rec), raw=False) == sample  # a peer reads a list
    assert record._make(sample) == rec and tuple(rec) == tuple(sample)
    assert pickle.loads(pickle.dumps(rec, protocol=5)) == rec  # an executor's pipe


def test_task_spec_row_and_record_agree_on_the_wire() -> None:
    spec = P.TaskSpec.from_row(TASK, b"args")
    assert spec.row() == TASK and type(spec.row()) is list
    rec = spec.record()
    assert type(rec) is P.TaskRow and rec.task_id == "t-1" and rec.opts == TASK[11]
    assert packb(rec) == packb(spec.row())
    assert P.TaskSpec.from_row(rec, b"args").row() == TASK  # a record is accepted too
    frames = P.pack_tasks(P.SUBMIT, [spec], {DIGEST: b"fn"})
    specs, fns = P.unpack_tasks(P.unpack(frames))
    assert specs[0].row() == TASK and specs[0].args == b"args" and fns == {DIGEST: b"fn"}


def test_result_row_from_a_list_or_fields_packs_the_same() -> None:
    from_list = P.ResultRow(list(RESULT), b"v")
    from_fields = P.ResultRow(P.ResultFields(*RESULT), b"v")
    assert type(from_list.row) is P.ResultFields
    assert P.pack_results([from_list]) == P.pack_results([from_fields])
    big = P.ResultRow(list(RESULT), b"x" * (P.INLINE_MAX + 1))
    oob = P.ResultRow(list(RESULT), ArgFrames([b"p", b"buf"]))
    for rows in ([from_list], [big], [from_list, oob]):
        back = P.unpack_results(P.unpack(P.pack_results(rows)))
        assert [r.row for r in back] == [r.row for r in rows]
        assert all(type(r.row) is P.ResultFields for r in back)
    r = back[0]
    assert (r.task_id, r.client, r.retain, r.ttl, r.state) == ("t-1", "client-1", True, 60.0, "FAILED")
    res = r.to_result()
    assert res.state is TaskState.FAILED and res.error == ErrorInfo.from_row(ERROR)
    assert res.lost == ("attempt 1: lost",) and res.pid == 1234


# ------------------------------------------------------------------------- checkers

def _set(sample: list, i: int, value: Any) -> list:
    out = list(sample)
    out[i] = value
    return out


#: checker, a valid sample, and wrong values by field index
CHECKERS: dict[str, tuple[Callable, list, dict[int, list]]] = {
    "error": (P.check_error_row, ERROR, {0: [1, None], 2: [b"x"], 3: [[]]}),
    "chain link": (P.check_chain_link, LINK, {0: [1], 1: [b"short", "x" * 16], 2: ["s"], 3: [None],
                                              4: [1, b"q"]}),
    "task": (lambda row: P.TaskSpec.from_row(row, b""), TASK,
             {0: [1, ""], 1: [None], 2: [""], 3: [b"short"], 4: [1], 5: [1, "yes"], 6: [-1, "3", True],
              7: [0, -1.0, "5"], 8: ["now"], 9: [0, "1"], 10: [None, [1]], 11: ["x", {"nope": 1}]}),
    "result": (P.check_result_row, RESULT,
               {0: [1], 1: [None], 2: ["NOT_A_STATE", 1], 3: ["boom", ["a", "b"]], 4: ["1", True],
                5: [1], 6: [None], 7: [None, 1.5], 8: [b"q"], 9: ["t", float("nan")], 10: [float("inf")],
                11: [float("-inf")], 12: [None, float("nan")], 13: [1], 14: [1, "yes"], 15: [None],
                16: [0, -1, "60", float("nan"), float("inf")]}),  # a NaN ttl once wedged the sink's expiry heap
    "progress": (P.check_progress_row, PROGRESS, {0: [1, None, b"t-1"]}),
    "continuation": (P.check_continuation, CONT, {0: [1], 1: [b"short"], 4: [1], 5: [None, [["bad"]]]}),
    "completion": (P.check_completion, COMPLETION,
                   {0: [1], 1: [None], 2: ["boom", ["a"]], 4: ["t"], 8: [["x"]], 9: ["1", None]}),
}


@pytest.mark.parametrize("name", CHECKERS)
def test_checker_accepts_a_valid_row_and_refuses_wrong_length_and_type(name: str) -> None:
    check, sample, wrong = CHECKERS[name]
    check(list(sample))  # a peer's list passes
    for bad in (sample[:-1], sample + [None], [], None, "row", 7, {"0": sample[0]}):
        if bad is None and name == "error":  # nil: no error
            continue
        with pytest.raises(ProtocolError):
            check(bad)
    for i, values in wrong.items():
        for v in values:
            with pytest.raises(ProtocolError):
                check(_set(sample, i, v))


def test_checkers_build_records() -> None:
    assert P.check_error_row(None) is None and P.check_error_row(ERROR) == P.ErrorRow(*ERROR)
    assert type(P.check_result_row(RESULT)) is P.ResultFields
    assert P.check_progress_row(PROGRESS).at == PROGRESS[4]
    cont = P.check_continuation(CONT)
    assert type(cont.then[0]) is P.ChainLink and cont.queue == "q2"
    comp = P.check_completion(tuple(COMPLETION))
    assert type(comp) is P.Completion and type(comp.continuation) is P.Continuation
    assert comp.attempt == 1 and comp[P.Completion._fields.index("attempt")] == 1


def test_progress_rows_of_a_header() -> None:
    assert P.progress_rows({"p": [PROGRESS, PROGRESS]}) == [P.ProgressRow(*PROGRESS)] * 2
    for bad in ({}, {"p": "x"}, {"p": [PROGRESS[:4]]}, {"p": [[1, 2, 3, 4, 5]]}):
        with pytest.raises(ProtocolError):
            P.progress_rows(bad)


def test_progress_report_takes_an_old_ventilators_row_without_eta() -> None:
    assert P.check_progress_report(None) is None
    assert P.check_progress_report(REPORT) == P.ProgressReport(*REPORT)
    assert P.check_progress_report(REPORT[:4]).eta is None
    assert P.check_progress_report([*REPORT[:4], "soon"]).eta is None
    for bad in ("x", [1, 2, 3], [1, 2, 3, 4, 5, 6]):
        with pytest.raises(ProtocolError):
            P.check_progress_report(bad)


def test_events_are_checked() -> None:
    assert type(P.check_event(("progress", *PROGRESS))) is P.ProgressEvent
    assert P.check_event(("spawn", TASK, b"fn", b"args")).row == TASK
    for bad in ((), ("progress", "t"), ("spawn",), ["progress", *PROGRESS], ("explode", 1), None):
        with pytest.raises(ProtocolError):
            P.check_event(bad)


def test_a_malformed_row_in_a_message_is_a_protocol_error() -> None:
    bad_results = P.pack(P.RESULT, {"r": [RESULT[:5]], "v": [b"v"]})
    with pytest.raises(ProtocolError):
        P.unpack_results(P.unpack(bad_results))
    bad_tasks = P.pack(P.SUBMIT, {"t": [TASK[:3]], "f": [], "a": [b""]})
    with pytest.raises(ProtocolError):
        P.unpack_tasks(P.unpack(bad_tasks))


# ------------------------------------------------------------------ commands and codes

def test_the_command_table_covers_every_command() -> None:
    constants = {v for k, v in vars(commands_module).items()
                 if k.isupper() and isinstance(v, bytes) and k != "PROTOCOL"}
    assert constants == set(P.COMMAND_TABLE) == P.COMMANDS
    for name, cmd in P.COMMAND_TABLE.items():
        assert cmd.name == name and getattr(P, name.decode()) == name
        assert cmd.direction and cmd.header
        assert re.search(rf"^{name.decode()}\s", P.__doc__, re.M), f"{name!r} missing from the docstring"


def test_error_codes_are_unique_and_tabled() -> None:
    codes = {k: v for k, v in vars(P).items() if k.startswith("ERR_")}
    assert len(set(codes.values())) == len(codes) == len(P.ERROR_CODES)
    assert set(codes.values()) == set(P.ERROR_CODES)
    assert P.UNREACHABLE == P.ERR_UNREACHABLE


def test_error_helpers_format_the_messages_nodes_send() -> None:
    m = P.unpack(P.protocol_error(ProtocolError("bad header")))
    assert (m.command, m.header) == (P.ERROR, {"code": P.ERR_PROTOCOL, "msg": "bad header"})
    assert P.protocol_error(ProtocolError("x")) == P.error_message("protocol", "x")
    m = P.unpack(P.gone_message("t-1"))
    assert m.header == {"code": "gone", "ids": ["t-1"], "msg": "the result of t-1 was not retained"}
    m = P.unpack(P.unknown_function_message(["a", "b"]))
    assert m.command == P.REJECT and m.header["code"] == "unknown-function" and m.header["ids"] == ["a", "b"]
    m = P.unpack(P.unreachable_message(["a"], "sink", "tcp://h:1", 3.0, "down"))
    assert m.header == {"code": "unreachable", "ids": ["a"], "node": "sink", "endpoint": "tcp://h:1",
                        "down_for": 3.0, "msg": "down"}


# ---------------------------------------------------------- rows are read by name

ROOT = Path(__file__).resolve().parent.parent
#: every module outside zq/protocol/ reads rows by name only (issue 9)
BY_NAME_ONLY = sorted(str(p.relative_to(ROOT)) for d in ("zq", "nodes") for p in (ROOT / d).rglob("*.py")
                      if "protocol" not in p.parts)
ROW_INDEX = re.compile(r"\b(comp|row|r\.row|row\.row|event|cont|link|err|p|e)\[[0-9]+\]")


@pytest.mark.parametrize("path", BY_NAME_ONLY)
def test_no_row_read_by_position(path: str) -> None:
    text = (Path(__file__).resolve().parent.parent / path).read_text()
    assert not ROW_INDEX.findall(text), f"{path} indexes a row by number"


def test_task_options_refuse_an_argument_repr_over_its_limit() -> None:
    P.check_opts("t1", {"argrepr": "x" * P.ARGS_REPR_MAX})
    with pytest.raises(ProtocolError, match="argrepr"):
        P.check_opts("t1", {"argrepr": "x" * (P.ARGS_REPR_MAX + 1)})
    with pytest.raises(ProtocolError, match="argrepr"):
        P.check_opts("t1", {"argrepr": 5})


def test_done_started_is_a_map_of_finite_times() -> None:
    assert P.check_done_started({"ids": []}) == {}
    assert P.check_done_started({"started": {"a": 1.5, "b": 2}}) == {"a": 1.5, "b": 2}
    for bad in ([1.0], {"a": "soon"}, {"a": float("nan")}, {1: 1.0}):
        with pytest.raises(ProtocolError, match="started"):
            P.check_done_started({"started": bad})
