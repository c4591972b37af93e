"""The HTTP/1.1 protocol prefs is served with: uvicorn's httptools protocol, whose one answer of
its own (a request that cannot be parsed: a malformed request line, header or Content-Length)
is a problem+json like every other answer of the service, not uvicorn's text/plain.

The request never reaches the app, so this answer carries no request id and writes no request
line; uvicorn logs a warning, as before. `prefs serve` and the test suite's servers use it.
"""

from __future__ import annotations

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from prefs.observability import SECURITY_HEADERS
from prefs.problems import PROBLEM_JSON, ProblemBody

UNPARSABLE = msgspec.json.encode(
    ProblemBody(
        type="urn:prefs:problem:bad-request",
        title="Bad request",
        status=400,
        detail="The request is not valid HTTP/1.1 (its request line, a header or its "
        "Content-Length): it was not read, and the connection is closed.",
    )
)


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering a request it cannot parse with a problem+json."""

    def send_400_response(self, msg: str) -> None:
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in [*self.server_state.default_headers, *SECURITY_HEADERS]:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: " + PROBLEM_JSON.encode() + b"\r\n",
            b"content-length: " + str(len(UNPARSABLE)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            UNPARSABLE,
        ]
        self.transport.write(b"".join(content))
        self.transport.close()
