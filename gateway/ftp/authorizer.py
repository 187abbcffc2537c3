"""Per-session pyftpdlib authorizer: logs in through the core ``Authenticate`` callable.

pyftpdlib's authorizers keep users in a shared table and check home directories on the
local disk; ours is created per FTP session, holds that session's backend ``Login``, and
never touches the local file system.
"""

from __future__ import annotations

from typing import Any

from pyftpdlib.authorizers import AuthenticationFailed

from gateway.core.errors import LoginRefused
from gateway.core.storage import Authenticate, Login, Storage

#: pyftpdlib permission letters: read (e l r) and write (a d f m w M T).
FULL_PERMS = "elradfmwMT"
READ_PERMS = "elr"


class SessionAuthorizer:
    """Duck-typed pyftpdlib authorizer bound to one control connection."""

    def __init__(self, authenticate: Authenticate) -> None:
        self._authenticate = authenticate
        self.login: Login | None = None
        self.refusal: LoginRefused | None = None  # why the last login was refused

    def validate_authentication(self, username: str, password: str, handler: Any) -> None:
        """Log in on the backend; AuthenticationFailed (530 after a delay) if refused."""
        self.refusal = None
        try:
            self.login = self._authenticate(
                username, password, handler.remote_ip, handler.secure, refused=handler.login_refused
            )
        except LoginRefused as err:
            self.refusal = err
            raise AuthenticationFailed(err.text) from None

    def storage(self) -> Storage:
        """The logged-in backend session."""
        if self.login is None:
            raise LoginRefused("Log in with USER and PASS first.")
        return self.login.storage

    def detach(self) -> Login | None:
        """Forget the current login without closing it; returns it."""
        login, self.login = self.login, None
        return login

    def logout(self) -> None:
        """Close the backend session, if any."""
        login = self.detach()
        if login is not None:
            login.storage.close()

    def get_home_dir(self, username: str) -> str:
        """The backend root that is "/" for this session."""
        assert self.login is not None
        return self.login.root

    def get_msg_login(self, username: str) -> str:
        """The 230 reply text (the route's banner when it has one)."""
        if self.login is not None and self.login.banner:
            return self.login.banner
        return "Login successful."

    def get_msg_quit(self, username: str) -> str:
        """The 221 reply text."""
        return "Goodbye."

    def has_user(self, username: str) -> bool:
        return True

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        """What the backend account may do, within the route's permissions."""
        return perm in self.get_perms(username)

    def get_perms(self, username: str) -> str:
        """pyftpdlib permission letters: read-only routes get the read ones only."""
        return READ_PERMS if self.login is not None and self.login.read_only else FULL_PERMS

    def impersonate_user(self, username: str, password: str) -> None:
        """Nothing to do: the backend account is the identity."""

    def terminate_impersonation(self, username: str) -> None:
        """Nothing to do."""
