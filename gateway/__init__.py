"""ftp-sftp-gateway: legacy FTP/FTPS clients in front, SFTP servers behind."""

__version__ = "0.1.0"
