"""Gateway error tree: every error carries the FTP reply it becomes.

Pure core: imports neither pyftpdlib nor asyncssh. Backend adapters translate their own
exceptions into these classes; the FTP adapter turns them into replies. Reply texts are
fixed strings chosen here, never backend messages, so no internal detail (host names,
errno strings, paths outside the user's root) reaches the client.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: an outcome the FTP client must be told about."""

    code: int = 451
    text: str = "Requested action aborted: local error in processing."
    #: True when the FTP session cannot go on and must be closed after the reply.
    fatal: bool = False

    def __init__(self, text: str | None = None, *, code: int | None = None) -> None:
        super().__init__(text or self.text)
        if text is not None:
            self.text = text
        if code is not None:
            self.code = code

    def reply(self) -> str:
        """The FTP reply line (without CRLF) for this error outside a transfer."""
        return f"{self.code} {self.text}"

    def transfer_reply(self, receiving: bool) -> str:
        """The FTP reply line when this error ends a data transfer."""
        return f"{self.transfer_code(receiving)} {self.text}"

    def transfer_code(self, receiving: bool) -> int:
        """Reply code when the error interrupts a transfer (RFC 959: 451 local error)."""
        return 451


class BadArgument(GatewayError):
    """The command argument is malformed (CR, LF, NUL, bad syntax)."""

    code = 501
    text = "Syntax error in parameters or arguments."


class NoPassivePort(GatewayError):
    """Every port of the passive range is in use."""

    code = 425
    text = "No passive port free; try again later."


class LoginRefused(GatewayError):
    """Wrong credentials or no route for this user: 530."""

    code = 530
    text = "Login incorrect."


class Retired(LoginRefused):
    """The user's route is in phase ``retired``: 530 with its notice, not a failed login."""

    def __init__(self, text: str | None = None, *, route: str = "-") -> None:
        super().__init__(text)
        self.route = route  # the retired route's name (for the usage report)


# --- storage outcomes -------------------------------------------------------------------


class Banned(GatewayError):
    """The client's address, or this user from it, is banned by the guard (too many failed
    logins): 421, closed."""

    code = 421
    text = "Too many failed logins from your address; try again later."
    fatal = True


class StorageError(GatewayError):
    """A backend operation failed; subclasses say how."""


class NotFound(StorageError):
    code = 550
    text = "No such file or directory."


class PermissionDenied(StorageError):
    code = 550
    text = "Permission denied."


class AlreadyExists(StorageError):
    code = 550
    text = "File exists."


class NotEmpty(StorageError):
    code = 550
    text = "Directory not empty."


class IsADirectory(StorageError):
    code = 550
    text = "Is a directory."


class NotADirectory(StorageError):
    code = 550
    text = "Not a directory."


class NotRegularFile(StorageError):
    code = 550
    text = "Not a regular file."


class BadName(StorageError):
    """The backend refused the name itself (too long, invalid): RFC 959 553."""

    code = 553
    text = "File name not allowed."


class NoSpace(StorageError):
    """The backend file system is full: 452 while storing (RFC 959), 552 otherwise."""

    code = 552
    text = "Insufficient storage space on the backend."

    def transfer_code(self, receiving: bool) -> int:
        return 452 if receiving else 451


class QuotaExceeded(StorageError):
    code = 552
    text = "Storage quota exceeded."

    def transfer_code(self, receiving: bool) -> int:
        return 552


class ResumeRefused(StorageError):
    """A resumed upload (REST+STOR; APPE with ``code=550``) onto the previous version of a
    file whose atomic replacement just failed: the bytes there are not the client's."""

    code = 554  # RFC 1123 4.1.3.4 / RFC 3659 5: "554 invalid REST parameter"
    text = "Resume refused: the last upload of this file failed and was not kept; send the whole file."


#: ResumeRefused's text when the kept upload is not the one SIZE told the client about.
RESUME_UNKNOWN = "Resume refused: the kept upload of this file has changed since SIZE; ask SIZE again."


class Unsupported(StorageError):
    code = 502
    text = "Operation not supported by the backend."


class BackendFailure(StorageError):
    """Generic backend failure (SFTP FX_FAILURE with no better explanation)."""

    code = 451
    text = "Requested action aborted: backend error."


class BackendTimeout(StorageError):
    code = 451
    text = "Requested action aborted: backend did not answer in time."


class BackendUnavailable(StorageError):
    """The backend cannot be reached or refused us (down, host key mismatch): 421."""

    code = 421
    text = "Service not available, closing control connection."
    fatal = True


class ConnectionLost(StorageError):
    """The backend connection died. The FTP session stays: an SFTP session reconnects for
    its next command (the legacy FTP passthrough ends with 421 then). Mid-transfer: a
    download gets 426, an upload 451."""

    code = 451
    text = "Requested action aborted: backend connection lost, try again."

    def transfer_code(self, receiving: bool) -> int:
        # A download cut off is "426 connection closed; transfer aborted"; an upload the
        # backend could not complete is "451 local error in processing" (RFC 959).
        return 451 if receiving else 426


class BackendDown(StorageError):
    """Reconnecting a logged-in session failed: the backend is still down; try again later."""

    code = 451
    text = "Requested action aborted: backend unavailable, try again later."


class TooManySessions(StorageError):
    """The backend account already holds ``pool.max_connections_per_user`` busy connections."""

    code = 421
    text = "Too many sessions for this account; try again later."
    fatal = True


class HostKeyMismatch(BackendUnavailable):
    """The backend's host key is not the configured one: no credential was sent."""
