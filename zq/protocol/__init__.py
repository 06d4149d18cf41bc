"""The zq wire protocol: the only module that knows frame layout.

Every message, after the ROUTER identity frame where there is one, is::

    [PROTOCOL, COMMAND, HEADER, *PAYLOAD]

* ``PROTOCOL`` is ``b"ZQ02"``: a node answers any other version with ``ERROR``.
  (ZQ02: arguments and values inline in batch headers, out-of-band frames, READY's
  done ids, SYNC/HELD; ZQ01 nodes are refused, not misread.)
* ``COMMAND`` is one of the byte strings below.
* ``HEADER`` is a msgpack map.  Routers read only this frame.
* ``PAYLOAD`` frames carry pickled bytes (functions, arguments, values); no
  node that merely routes a message unpickles them.

Tasks and results travel in batches: one ``SUBMIT``/``TASKS`` message holds any
number of tasks (rows in the header, one argument frame each, preceded by the
frames of the functions the receiver has not seen yet), one ``RESULT`` message
any number of results.  When every argument (value) in a batch is small
(``INLINE_MAX`` bytes or less) they ride in the header instead ("a": [bytes],
"v": [bytes]) and the message has no frame per task: a frame costs each hop a
send and a receive call, more than the bytes it carries.  Batching is
opportunistic: a sender packs whatever is ready, it never waits to fill a batch.

Who sends what (C client, V ventilator, W worker, S sink):

==========  ==========  =====================================================
command     direction   header / payload
==========  ==========  =====================================================
SUBMIT      C -> V      {"t": [task rows], "f": [digests], "req"?: int, "n"?: [ints], "a"?: [bytes]};
                        fn frames,
                        arg frames (with "req" the ventilator REPLYs the id each task goes by;
                        "n": how many argument frames each task has, when one has more than
                        one: a pickle and its out-of-band buffers, see zq.serialize)
REJECT      V -> C      {"ids": [...], "code": str, "msg": str}
REQUEST     C -> V/S    {"req": int, "op": str, ...}
REPLY       V/S -> C    {"req": int, "ok": bool, "data"|"error": ...} (V -> W: a SPAWN with "req"
                        was accepted)
READY       W -> V      {"id", "queues", "credit", "host", "pid", "executor", "concurrency", "tasks",
                        "done"?: [ids], "states"?: [...]} (finished here, DONE not sent yet)
TASKS       V -> W      like SUBMIT, rows carry attempt and lost causes
SYNC        V -> W      {"upto": int} (to a worker registering again) say what you hold now
HELD        W -> V      {"upto", "held": [ids], "done": [ids], "states": [...]}: the answer; the
                        ventilator queues again what it sent before that SYNC and is not held
STARTED     W -> V      {"ids": [...], "busy"?: int} these started; busy: its executor slots running
                        a task now (0..slots; not a batch's waiting tasks, not async ones), sent
                        with ids, or alone ("ids": []) when it changed, and after READY; status
                        only, may be lost
DONE        W -> V      {"ids": [...], "states": [...], "credit": int,
                        "errors"?: {task id: [type, message, traceback]}} (failed ones),
                        "started"?: {task id: time}} (those whose STARTED was not sent)
RETRY       W -> V      {"id": str, "delay": float, "lost"?: cause}
CANCEL      V -> W      {"ids": [...], "unstarted"?: bool} stop these tasks if they run (with
                        "unstarted": drop them only if they have not started)
RECLAIM     V -> W      {"ids"?: [...], "queues"?: [...], "names"?: [...], "n"?: int} give back
                        the tasks you hold and have not started that match (at most n)
RETURN      W -> V      {"ids": [...]} the answer: tasks given back, never started
BYE         W -> V      {"ids": [...], "final"?: bool} tasks handed back (graceful stop)
UNKNOWN     V -> W      {"instance"} you are not registered: send READY again
RESULT      W/V -> S, S -> C  {"r": [result rows], "v"?: [bytes]}; one value frame per row (or
                        every value in "v")
ACK         S -> W/V, C -> S  {"ids": [...]} results safe / received: forget them
HELLO       C -> S      {"client": id} route my results to this socket
HEARTBEAT   any         {"id": node id, "instance": random id of this run, "max": max message}
ERROR       any         {"code": str, "msg": str} your message was refused; V -> C with code
                        "unreachable": {"ids", "node", "endpoint", "down_for", "msg"} the results
                        of these tasks cannot reach that node from the ventilator
PROGRESS    W -> V -> C {"p": [[task id, done, total, message, time], ...]}
SPAWN       W -> V      like SUBMIT: follow-up tasks queued by a running task
CONTINUE    W -> V      {"id", "name", "digest", "queue", "then"}; fn frame?, arg frame:
                        the task goes on as another call (trampoline, chain link)
WATCH       C -> S      {"ids": [...]} send me these results too (retained or future)
==========  ==========  =====================================================

The package: ``commands`` (the table above, as data), ``codes`` (ERROR/REJECT codes and their
messages), ``rows`` (every row as a named record, and the checkers that build them from a
peer's lists), ``wire`` (frames and header fields), ``tasks`` and ``results`` (batches).
No module outside this package reads a row by position.
"""

from .codes import (ERR_GONE, ERR_PROTOCOL, ERR_UNKNOWN_FUNCTION, ERR_UNREACHABLE, ERROR_CODES,
                    UNREACHABLE, error_message, gone_message, protocol_error, unknown_function_message,
                    unreachable_message)
from .commands import (ACK, BYE, CANCEL, COMMAND_TABLE, COMMANDS, CONTINUE, DONE, ERROR,
                       HEARTBEAT, HELD, HELLO, PROGRESS, PROTOCOL, READY, RECLAIM, REJECT, REPLY,
                       REQUEST, RESULT, RETRY, RETURN, SPAWN, STARTED, SUBMIT, SYNC, TASKS, UNKNOWN,
                       WATCH, Command)
from .results import ResultRow, _check_result_row, pack_results, unpack_results
from .rows import (DONE_ERROR_MAX, PROGRESS_EVENT, RECORDS, SPAWN_EVENT, ChainLink, Completion, Continuation,
                   DoneError, ErrorRow, ProgressEvent, ProgressReport, ProgressRow, ResultFields, SpawnEvent,
                   TaskRow, check_chain_link, check_completion, check_continuation, check_done_errors,
                   check_done_started, check_error_row, check_event, check_progress_report, check_progress_row, check_result_row,
                   check_task_row, progress_rows)
from .tasks import ARGS_REPR_MAX, OPTS, TaskSpec, check_opts, pack_tasks, unpack_tasks
from .wire import (BY_NAME, DEFAULT_MAX_MESSAGE, INLINE_MAX, WATCH_RENEW, Message, batch_limit, field,
                   new_instance_id, pack, str_list, take_batch, unpack)

__all__ = [name for name in dir() if not name.startswith("__") and name not in ("codes", "commands",
           "results", "rows", "tasks", "wire")]
