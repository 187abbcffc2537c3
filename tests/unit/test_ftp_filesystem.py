"""What the FTP side asks of the storage for one transfer's commands (gateway.ftp.filesystem):
lftp's SIZE, MDTM, PASV, RETR look the file up once and RETR opens with that answer; any
other command in between makes the next look go to the storage again."""

from __future__ import annotations

from types import SimpleNamespace

from gateway.core.memory_storage import MemoryStorage
from gateway.core.storage import Attrs
from gateway.ftp.filesystem import GatewayFS


class Counting(MemoryStorage):
    """MemoryStorage that records the lookups and opens the FTP side asks for."""

    def __init__(self) -> None:
        super().__init__("/home/u")
        self.calls: list[str] = []

    def stat(self, path: str) -> Attrs:
        self.calls.append("stat")
        return super().stat(path)

    def open_read(self, path: str, known: Attrs | None = None):  # type: ignore[no-untyped-def]
        self.calls.append("open with attrs" if known is not None else "open")
        return super().open_read(path, known)


def filesystem() -> tuple[GatewayFS, Counting]:
    storage = Counting()
    stream = storage.open_write("/home/u/f.bin", "w")
    stream.write(b"data")
    stream.close()
    channel = SimpleNamespace(storage=storage, _current_type="i")
    return GatewayFS("/home/u", channel), storage


def test_size_mdtm_pasv_retr_look_the_file_up_once():
    fs, storage = filesystem()
    for cmd in ("TYPE", "SIZE"):
        fs.forget(cmd)
    assert fs.partial_size("/home/u/f.bin") is None and fs.getsize("/home/u/f.bin") == 4
    fs.forget("MDTM")
    fs.getmtime("/home/u/f.bin")
    for cmd in ("PASV", "RETR"):
        fs.forget(cmd)
    assert fs.open("/home/u/f.bin", "rb").read() == b"data"
    assert storage.calls == ["stat", "open with attrs"]


def test_another_command_in_between_or_a_second_retr_looks_again():
    fs, storage = filesystem()
    fs.forget("SIZE")
    fs.partial_size("/home/u/f.bin")
    fs.forget("NOOP")
    fs.forget("RETR")
    fs.open("/home/u/f.bin", "rb").close()
    fs.forget("RETR")  # the same file again: the first RETR used the answer up
    fs.open("/home/u/f.bin", "rb").close()
    fs.forget("MDTM")
    fs.getmtime("/home/u/f.bin")
    assert storage.calls == ["stat", "open", "open", "stat"]
