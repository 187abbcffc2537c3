"""asyncssh exceptions -> gateway errors (the SFTP half of the reply mapping: docs/user-guide.md)."""

from __future__ import annotations

import asyncio

import asyncssh
from asyncssh import constants as fx

from gateway.core import errors

# SFTP status codes (draft-ietf-secsh-filexfer, v3 codes 0-8 plus the v4-v6 extras) to the
# gateway error that carries the FTP reply. OpenSSH speaks v3 and folds EEXIST, ENOTEMPTY,
# EISDIR, ENOSPC and EIO into FX_FAILURE; the storage layer refines those with a follow-up
# lstat where the command allows it.
_BY_CODE: dict[int, type[errors.StorageError]] = {
    fx.FX_NO_SUCH_FILE: errors.NotFound,
    fx.FX_PERMISSION_DENIED: errors.PermissionDenied,
    fx.FX_FAILURE: errors.BackendFailure,
    fx.FX_BAD_MESSAGE: errors.BadName,
    fx.FX_NO_CONNECTION: errors.ConnectionLost,
    fx.FX_CONNECTION_LOST: errors.ConnectionLost,
    fx.FX_OP_UNSUPPORTED: errors.Unsupported,
    fx.FX_INVALID_HANDLE: errors.BackendFailure,
    fx.FX_NO_SUCH_PATH: errors.NotFound,
    fx.FX_FILE_ALREADY_EXISTS: errors.AlreadyExists,
    fx.FX_WRITE_PROTECT: errors.PermissionDenied,
    fx.FX_NO_SPACE_ON_FILESYSTEM: errors.NoSpace,
    fx.FX_QUOTA_EXCEEDED: errors.QuotaExceeded,
    fx.FX_UNKNOWN_PRINCIPAL: errors.NotFound,
    fx.FX_DIR_NOT_EMPTY: errors.NotEmpty,
    fx.FX_NOT_A_DIRECTORY: errors.NotADirectory,
    fx.FX_INVALID_FILENAME: errors.BadName,
    fx.FX_LINK_LOOP: errors.NotFound,
    fx.FX_CANNOT_DELETE: errors.PermissionDenied,
    fx.FX_INVALID_PARAMETER: errors.BadName,
    fx.FX_FILE_IS_A_DIRECTORY: errors.IsADirectory,
    fx.FX_OWNER_INVALID: errors.PermissionDenied,
    fx.FX_GROUP_INVALID: errors.PermissionDenied,
}


def translate(exc: BaseException) -> errors.GatewayError:
    """The gateway error for an exception raised by an asyncssh call."""
    if isinstance(exc, errors.GatewayError):
        return exc
    if isinstance(exc, asyncssh.SFTPError):
        return _BY_CODE.get(exc.code, errors.BackendFailure)()
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return errors.HostKeyMismatch()
    if isinstance(exc, asyncssh.PermissionDenied):
        return errors.LoginRefused()
    if isinstance(exc, asyncssh.ChannelOpenError):
        return errors.BackendUnavailable()
    if isinstance(
        exc, asyncssh.ConnectionLost | asyncssh.DisconnectError | BrokenPipeError | ConnectionError
    ):
        return errors.ConnectionLost()
    if isinstance(exc, asyncio.TimeoutError):
        return errors.BackendTimeout()
    if isinstance(exc, OSError):
        return errors.BackendUnavailable()
    return errors.BackendFailure()
