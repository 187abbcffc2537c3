"""pyftpdlib's and pyOpenSSL's internals the gateway relies on, named in one place.

pyftpdlib has no public hooks for what the gateway changes in it (when an upload counts as
complete, how sessions are admitted and threads started, the pending transfer of a 150, the
TLS state of a data connection), so its subclasses in ``gateway.ftp`` use private names of
pyftpdlib's classes and modules. Every such name is listed here:

* module-level names are imported here and only here, and re-exported without the underscore;
* attributes of pyftpdlib's classes that the gateway's subclasses read or set are listed in
  ``PRIVATE_ATTRIBUTES``;
* what the handler knows of pyftpdlib's own log calls, without reading their text: its
  ``__init__`` logs only the session's opening, and ``pre_process_command`` echoes the
  command line through ``logline`` before anything else (``GatewayHandler.log``/``logline``).

``tests/unit/test_compat.py`` checks each of them against the installed pyftpdlib, and
``pyproject.toml`` pins pyftpdlib to the minor version they were checked against. To
upgrade: raise the pin, run that test, and read pyftpdlib's changes to these names.
"""

from __future__ import annotations

from OpenSSL._util import lib as openssl_lib  # SSL_session_reused: pyOpenSSL does not wrap it
from pyftpdlib.exceptions import _RetryError as RetryError
from pyftpdlib.ioloop import _ERRNOS_DISCONNECTED as ERRNOS_DISCONNECTED
from pyftpdlib.ioloop import _ERRNOS_RETRY as ERRNOS_RETRY

#: The private attributes of pyftpdlib's classes the gateway's subclasses use, by class.
PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "handlers.FTPHandler": (
        "_available_facts",
        "_closed",
        "_closing",
        "_current_facts",
        "_current_type",
        "_epsvall",
        "_extra_feats",
        "_in_buffer",
        "_in_buffer_len",
        "_in_dtp_queue",
        "_log_debug",
        "_on_dtp_close",
        "_out_dtp_queue",
        "_restart_position",
    ),
    "handlers.DTPHandler": ("_closed", "_had_cr", "_posix_ascii_data_wrapper", "_resp"),
    "handlers.TLS_FTPHandler": ("_prot", "_ssl_established", "_ssl_requested"),
    "handlers.TLS_DTPHandler": ("_ssl_established", "_ssl_want_read", "_ssl_want_write"),
    "servers.ThreadedFTPServer": (
        "_accept_new_cons",
        "_active_tasks",
        "_exit",
        "_lock",
        "_loop",
        "_start_task",
    ),
}
#: pyOpenSSL's: the OpenSSL SSL* of a connection (for SSL_session_reused).
OPENSSL_CONNECTION_ATTRIBUTE = "_ssl"

__all__ = [
    "ERRNOS_DISCONNECTED",
    "ERRNOS_RETRY",
    "OPENSSL_CONNECTION_ATTRIBUTE",
    "PRIVATE_ATTRIBUTES",
    "RetryError",
    "openssl_lib",
]
