"""SFTP backend on asyncssh: one background event loop, sessions, streaming file objects."""
