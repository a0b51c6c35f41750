# -*- test-case-name: tests.test_status -*-
"""Asking a running relay's control API from the command line: where it listens, and a blocking HTTP client for it."""

from __future__ import annotations

import http.client
import json
import re
import socket
import urllib.parse

from urelay.ops.settings import Config


class ControlError(Exception):
    """
    The control API could not be asked, or refused the request; C{str()}
    is one line for the operator.
    """


def control_target(config: Config) -> str | None:
    """
    Where the first C{[control] listen} endpoint of C{config} is reached:
    an C{http://HOST:PORT} URL for a TCP listener (a wildcard address is
    reached on loopback), C{unix:PATH} for a Unix socket; L{None} when
    there is neither.
    """
    for description in config.control.listen:
        match = re.fullmatch(r"tcp6?:(\d+)(?::interface=((?:\\.|[^:\\])*))?", description)
        if match:
            host = re.sub(r"\\(.)", r"\1", match.group(2) or "127.0.0.1")
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1" if host != "::" else "::1"
            return f"http://[{host}]:{match.group(1)}" if ":" in host else f"http://{host}:{match.group(1)}"
        if description.startswith("unix:"):
            fields = re.findall(r"(?:\\.|[^:\\])+", description[len("unix:"):])
            paths = [f for f in fields if "=" not in f] + [f[len("address="):] for f in fields if f.startswith("address=")]
            if paths:
                return "unix:" + re.sub(r"\\(.)", r"\1", paths[0])
    return None


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix stream socket."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class ControlClient:
    """
    A blocking client of the control API at C{target}: an C{http://HOST:PORT}
    base URL or C{unix:PATH}, sending C{headers} (the token) with every
    request.  For commands, not for the reactor.
    """

    def __init__(self, target: str, timeout: float = 10.0, headers: dict[str, str] | None = None):
        self.target = target
        self._timeout = timeout
        self._headers = {"accept": "application/json", **(headers or {})}
        if target.startswith("unix:"):
            self._path = target[len("unix:"):]
            self._base = ""
            return
        url = urllib.parse.urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            raise ControlError(f"{target!r} is not an http://HOST:PORT URL or unix:PATH")
        self._path = None
        self._host, self._port = url.hostname, url.port or 80
        self._base = url.path.rstrip("/")

    def get(self, path: str, **query: str):
        """
        The JSON that C{GET path?query} answers.  Raises L{ControlError} when
        nothing answers, the answer is not JSON, or its status is not 200
        (with the API's own C{error} text when it gives one).
        """
        if query:
            path += "?" + urllib.parse.urlencode(query)
        if self._path is not None:
            connection = _UnixConnection(self._path, self._timeout)
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            connection.request("GET", self._base + path, headers=self._headers)
            response = connection.getresponse()
            body = response.read()
        except (ConnectionRefusedError, FileNotFoundError):
            raise ControlError(f"nothing answers at {self.target}: is urelay running, with this [control] listen?") from None
        except TimeoutError:
            raise ControlError(f"no answer from {self.target} within {self._timeout:g} s") from None
        except (OSError, http.client.HTTPException) as e:
            raise ControlError(f"cannot ask {self.target}: {e}") from None
        finally:
            connection.close()
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if response.status != 200:
            why = answer.get("error") if isinstance(answer, dict) else None
            raise ControlError(f"{self.target}{path}: {response.status} {why or response.reason}")
        if answer is None:
            raise ControlError(f"{self.target}{path}: the answer is not JSON")
        return answer
