import asyncssh
import pytest

from gateway.backends.sftp.errors import translate
from gateway.core import errors


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (asyncssh.SFTPNoSuchFile("x"), 550),
        (asyncssh.SFTPPermissionDenied("x"), 550),
        (asyncssh.SFTPFailure("x"), 451),
        (asyncssh.SFTPOpUnsupported("x"), 502),
        (asyncssh.SFTPNoSpaceOnFilesystem("x"), 552),
        (asyncssh.SFTPQuotaExceeded("x"), 552),
        (asyncssh.SFTPConnectionLost("x"), 451),
        (asyncssh.SFTPFileAlreadyExists("x"), 550),
        (asyncssh.SFTPInvalidFilename("x"), 553),
        (asyncssh.ConnectionLost("x"), 451),
        (ConnectionResetError(), 451),
        (TimeoutError(), 451),
        (RuntimeError("boom"), 451),
    ],
)
def test_sftp_outcomes_map_to_ftp_replies(exc, code):
    assert translate(exc).code == code


def test_transfer_context_codes():
    assert errors.NoSpace().transfer_reply(receiving=True).startswith("452 ")
    assert errors.QuotaExceeded().transfer_reply(receiving=True).startswith("552 ")
    assert errors.ConnectionLost().transfer_reply(receiving=False).startswith("426 ")
    assert errors.BackendFailure().transfer_reply(receiving=True).startswith("451 ")


def test_replies_never_carry_backend_text():
    err = translate(asyncssh.SFTPFailure("disk /dev/sda3 on host db7.internal failed"))
    assert "db7" not in err.reply()
    err = translate(OSError(111, "Connection refused to 10.0.0.7"))
    assert "10.0.0.7" not in err.reply()
    assert err.code == 451 and not err.fatal  # mid-session: the next command reconnects
