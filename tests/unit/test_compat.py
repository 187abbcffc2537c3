"""Every private pyftpdlib and pyOpenSSL name the gateway uses (gateway.ftp.compat) still
exists in the installed versions: an upgrade that renames one fails here, not in a session."""

from __future__ import annotations

import importlib
import inspect
import re

import pyftpdlib
import pytest
from OpenSSL import SSL

from gateway.ftp import compat


def sources(cls: type) -> str:
    """The source of ``cls`` and of every pyftpdlib class it inherits from."""
    return "\n".join(inspect.getsource(k) for k in cls.__mro__ if k.__module__.startswith("pyftpdlib"))


@pytest.mark.parametrize(("where", "names"), compat.PRIVATE_ATTRIBUTES.items())
def test_every_private_attribute_the_gateway_uses_exists(where, names):
    module, _, name = where.rpartition(".")
    text = sources(getattr(importlib.import_module(f"pyftpdlib.{module}"), name))
    missing = [n for n in names if not re.search(rf"(self\.{n}\b|def {n}\b|^\s+{n}\s*=)", text, re.M)]
    assert missing == [], f"pyftpdlib {pyftpdlib.__ver__}: {where} lacks {missing}"


def test_module_names():
    assert compat.ERRNOS_RETRY and compat.ERRNOS_DISCONNECTED
    assert issubclass(compat.RetryError, Exception)


def test_the_log_calls_the_handler_relies_on():
    """GatewayHandler silences pyftpdlib's log calls by where they are made, not by their text:
    __init__ logs once (the session's opening) and pre_process_command echoes the line through
    logline on every path, the first of its calls to the handler."""
    from pyftpdlib.handlers import FTPHandler

    init = inspect.getsource(FTPHandler.__init__)
    assert len(re.findall(r"self\.log\(", init)) == 1
    assert "self.logline(" not in init
    body = inspect.getsource(FTPHandler.pre_process_command)
    first_call = re.search(r"self\.(\w+)\(", body)
    assert first_call is not None and first_call.group(1) == "logline"
    assert len(re.findall(r"self\.logline\(", body)) == 2  # the line, or PASS masked


def test_pyopenssl_internals():
    assert hasattr(compat.openssl_lib, "SSL_CTX_new")  # the cffi binding itself
    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD))
    assert getattr(connection, compat.OPENSSL_CONNECTION_ATTRIBUTE) is not None
