"""The legacy FTP backend: the organisation's existing FTP server, reached with ftplib."""
