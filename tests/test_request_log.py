"""The service log holds one line per request: method, route template, status, duration and
request id, and nothing the caller sent; PREFS_REQUEST_LOG=off turns it off."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import uuid
from typing import Any

import httpx
import pytest

from prefs import credentials
from prefs.observability import LoopBatchedHandler
from tests.support.customer import bearer
from tests.support.servers import prefs_serve
from tests.support.stores import in_directory

CARD = "4000 1234 5678 9010"


def serve_environment(settings: Any, database_url: str, **more: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PREFS_") and k != "XDG_RUNTIME_DIR"
    }
    return {
        **env,
        "PREFS_DATA_DIR": str(settings.data_dir),
        "PREFS_DATABASE_URL": database_url,
        "PREFS_MASTER_KEYS": settings.master_keys,
        "PREFS_INDEX_KEY": settings.index_keys,
        **more,
    }


async def a_customer_and_a_till(url: str, conn: Any, issuer: Any) -> dict[str, Any]:
    """A customer reads a preference that is not there (with a query string), and a till looks
    up an unknown card; returns what was sent and the answers."""
    _, till = await credentials.create(conn, "pos", "Till 9", store=await in_directory(conn))
    subject = f"request-log-{uuid.uuid4()}@example.test"
    token = issuer.mint(subject)
    preference = uuid.uuid4()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        enrolled = await http.post("/v1/me", headers=bearer(token), json=None)
        assert enrolled.status_code == 201, enrolled.text
        read = await http.get(
            f"/v1/me/preferences/{preference}",
            params={"q": "MKquery-value"},
            headers=bearer(token),
        )
        lookup = await http.post("/v1/pos/lookup", headers=bearer(till), json={"card": CARD})
    return {
        "read": read,
        "lookup": lookup,
        "sent": [
            str(preference),
            "MKquery-value",
            CARD,
            CARD.replace(" ", ""),
            till,
            token,
            subject,
        ],
    }


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_each_request_is_one_line_naming_its_route_template_not_what_was_sent(
    conn, issuer, settings, database, log_format
):
    env = serve_environment(settings, database.url, PREFS_LOG_FORMAT=log_format)
    with prefs_serve(env) as (url, output):
        run = await a_customer_and_a_till(url, conn, issuer)
    read, lookup = run["read"], run["lookup"]
    assert (read.status_code, lookup.status_code) == (404, 404)
    if log_format == "json":
        entries = [json.loads(line) for line in output["stderr"].splitlines()]
        by_request = {e["request_id"]: e for e in entries if e["logger"] == "prefs.requests"}
        line = by_request[read.headers["x-request-id"]]
        assert line["level"] == "info"
        assert (line["method"], line["route"], line["status"]) == (
            "GET",
            "/v1/me/preferences/{preference_id}",
            404,
        )
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert (
            line["msg"] == f"GET /v1/me/preferences/{{preference_id}} 404 {line['duration_ms']} ms"
        )
        line = by_request[lookup.headers["x-request-id"]]
        assert (line["method"], line["route"], line["status"]) == ("POST", "/v1/pos/lookup", 404)
    else:
        lines = output["stderr"].splitlines()
        for answer, said in (
            (read, r"GET /v1/me/preferences/\{preference_id\} 404"),
            (lookup, r"POST /v1/pos/lookup 404"),
        ):
            rid = answer.headers["x-request-id"]
            expected = re.compile(rf"INFO prefs\.requests {said} \d+\.\d ms request_id={rid}")
            assert any(expected.fullmatch(line) for line in lines), lines
    leaked = [value for value in run["sent"] if value in output["stderr"]]
    assert not leaked, f"the service log holds what the callers sent: {leaked}"


async def test_prefs_request_log_off_leaves_the_other_logs_on(conn, issuer, settings, database):
    env = serve_environment(settings, database.url, PREFS_REQUEST_LOG="off")
    with prefs_serve(env) as (url, output):
        await a_customer_and_a_till(url, conn, issuer)
    entries = [json.loads(line) for line in output["stderr"].splitlines()]
    assert not [e for e in entries if e["logger"] == "prefs.requests"]
    assert any(e["msg"] == "Application startup complete." for e in entries), entries


class CountingStream(io.StringIO):
    """A real text stream that counts the writes it is given."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def batched_logger(stream: CountingStream) -> logging.Logger:
    """A logger of its own whose lines the handler batches, as it does the request log's."""
    name = f"prefs.test-batched-{uuid.uuid4()}"
    handler = LoopBatchedHandler(batched=frozenset({name}))
    handler.setStream(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger


async def test_the_lines_of_one_event_loop_turn_go_to_stderr_in_one_write_on_the_next_turn():
    """A line per request would cost the hot path a write to stderr each: the lines one turn
    of the loop logs are written together, in order, one turn later."""
    stream = CountingStream()
    logger = batched_logger(stream)
    for n in range(3):
        logger.info("request %d", n)
    assert (stream.getvalue(), stream.writes) == ("", 0)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert (stream.getvalue(), stream.writes) == ("request 0\nrequest 1\nrequest 2\n", 1)
    logger.info("request 3")
    logger.handlers[0].flush()  # as logging.shutdown does at exit: nothing pending is lost
    assert (stream.getvalue().splitlines()[-1], stream.writes) == ("request 3", 2)


def test_lines_logged_outside_an_event_loop_are_written_at_once_after_any_pending():
    stream = CountingStream()
    logger = batched_logger(stream)
    logger.info("no loop here")
    assert (stream.getvalue(), stream.writes) == ("no loop here\n", 1)

    async def logs_then_returns() -> None:
        logger.info("in the loop")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(logs_then_returns())  # its flush is left scheduled, never run
    loop.close()
    logger.info("after the loop")
    assert stream.getvalue().splitlines() == ["no loop here", "in the loop", "after the loop"]


async def test_each_worker_of_prefs_serve_writes_its_last_lines_when_stopped(settings, database):
    """With --workers, SIGTERM stops each worker gracefully and uvicorn then re-raises the
    signal in it, which ends the process at once: its last lines ("Application shutdown
    complete.", "Finished server process [pid]") must already be written by then."""
    with prefs_serve(serve_environment(settings, database.url), workers=2) as (_, output):
        pass
    messages = [json.loads(line)["msg"] for line in output["stderr"].splitlines()]

    def workers(said: str) -> set[str]:
        return {
            m[1]
            for m in map(re.compile(rf"{said} server process \[(\d+)\]").fullmatch, messages)
            if m
        }

    assert workers("Started") and workers("Finished") == workers("Started"), messages


def test_a_loop_closed_with_a_line_pending_leaves_the_next_loops_lines_written_on_its_turns():
    """A loop stopped and closed in the turn a line was logged never runs that line's flush (the
    line waits for the next write). Every later loop's lines must still go out on its own next
    turn, not pile up until the process exits."""
    stream = CountingStream()
    logger = batched_logger(stream)
    loop = asyncio.new_event_loop()
    loop.call_soon(logger.info, "in the first loop")
    loop.call_soon(loop.stop)  # the same turn: the flush the line scheduled never runs
    loop.run_forever()
    loop.close()
    assert stream.getvalue() == ""

    async def logs_then_looks() -> list[str]:
        logger.info("in the second loop")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return stream.getvalue().splitlines()

    assert asyncio.run(logs_then_looks()) == ["in the first loop", "in the second loop"]


async def test_a_line_of_another_logger_in_a_loop_is_written_at_once_after_the_pending_ones():
    """Only the request log's lines wait for the next turn: uvicorn's last lines in a worker are
    logged in the turn that ends the process."""
    stream = CountingStream()
    requests = batched_logger(stream)
    handler = requests.handlers[0]
    other = logging.getLogger(f"prefs.test-unbatched-{uuid.uuid4()}")
    other.propagate = False
    other.handlers[:] = [handler]
    other.setLevel(logging.INFO)
    requests.info("request 0")
    other.info("Finished server process")
    assert (stream.getvalue(), stream.writes) == ("request 0\nFinished server process\n", 1)
