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


def test_module_names_and_log_texts():
    assert compat.ERRNOS_RETRY and compat.ERRNOS_DISCONNECTED
    assert issubclass(compat.RetryError, Exception)
    handlers = inspect.getsource(importlib.import_module("pyftpdlib.handlers.ftp.control"))
    assert f'"{compat.SESSION_OPENED}"' in handlers
    assert f'"{compat.COMMAND_ECHO}' in handlers or f"'{compat.COMMAND_ECHO}" in handlers


def test_pyopenssl_internals():
    assert hasattr(compat.openssl_lib, "SSL_CTX_new")  # the cffi binding itself
    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD))
    assert getattr(connection, compat.OPENSSL_CONNECTION_ATTRIBUTE) is not None
