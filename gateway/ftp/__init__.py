"""FTP front end (adapter around pyftpdlib): server, handler, filesystem, authorizer."""
