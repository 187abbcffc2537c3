import calendar

from hypothesis import given
from hypothesis import strategies as st

from gateway.core import listing
from gateway.core.storage import Attrs, Entry, Kind

NOW = calendar.timegm((2026, 11, 25, 12, 0, 0))
RECENT = calendar.timegm((2026, 10, 1, 8, 5, 0))
OLD = calendar.timegm((2019, 3, 9, 8, 5, 0))


def entry(name, kind=Kind.FILE, size=12, mtime=RECENT, mode=0o644, target=None):
    return Entry(name, Attrs(kind, size, mtime, mode, 1000, 1000, 1), target)


def test_list_line_recent_file():
    line = listing.list_line(entry("report.csv"), NOW)
    assert line == "-rw-r--r--   1 1000     1000               12 Oct  1 08:05 report.csv"


def test_list_line_old_file_shows_year_and_big_size():
    line = listing.list_line(entry("big.iso", size=5 * 2**30 + 7, mtime=OLD), NOW)
    assert line.split() == [
        "-rw-r--r--",
        "1",
        "1000",
        "1000",
        str(5 * 2**30 + 7),
        "Mar",
        "9",
        "2019",
        "big.iso",
    ]


def test_list_line_directory_symlink_and_special_bits():
    assert listing.list_line(entry("d", Kind.DIR, mode=0o755), NOW).startswith("drwxr-xr-x ")
    assert listing.list_line(entry("t", Kind.DIR, mode=0o1777), NOW).startswith("drwxrwxrwt ")
    assert listing.list_line(entry("s", mode=0o4755), NOW).startswith("-rwsr-xr-x ")
    line = listing.list_line(entry("ln", Kind.SYMLINK, mode=0o777, target="../x"), NOW)
    assert line.startswith("lrwxrwxrwx ") and line.endswith(" ln -> ../x")


def test_future_times_show_the_year_and_every_file_type_its_letter():
    tomorrow = listing.list_line(entry("f", mtime=NOW + 2 * 86400), NOW)
    assert tomorrow.split()[5:8] == ["Nov", "27", "2026"]  # as vsftpd and GNU ls
    letters = {kind: listing.list_line(entry("x", kind), NOW)[0] for kind in Kind}
    assert letters == {
        Kind.FILE: "-", Kind.DIR: "d", Kind.SYMLINK: "l", Kind.FIFO: "p", Kind.SOCKET: "s",
        Kind.CHAR_DEVICE: "c", Kind.BLOCK_DEVICE: "b", Kind.OTHER: "?",
    }  # fmt: skip


def test_dotfiles_need_a_pattern_of_their_own():
    entries = [entry(".keep"), entry("a.csv"), entry(".config.csv")]
    assert [e.name for e in listing.glob_filter(entries, "*", dotfiles=False)] == ["a.csv"]
    assert [e.name for e in listing.glob_filter(entries, ".*", dotfiles=False)] == [".keep", ".config.csv"]
    assert [e.name for e in listing.glob_filter(entries, "*.csv", dotfiles=True)] == ["a.csv", ".config.csv"]


def test_names_with_spaces_and_utf8_survive():
    lines = list(listing.list_lines([entry("my file.txt"), entry("prüfung é.txt")], NOW))
    assert lines[0].endswith(" my file.txt")
    assert lines[1].endswith(" prüfung é.txt")


def test_unsafe_names_are_skipped_everywhere():
    unsafe = ["evil\r\n226 fake", "a\nb", "tab\tname", "esc\x1b[2J", "c1\x85", "sep\u2028x", "del\x7f"]
    entries = [entry("ok"), *(entry(name) for name in unsafe)]
    assert [line.split()[-1] for line in listing.list_lines(entries, NOW)] == ["ok"]
    assert list(listing.nlst_names(entries)) == ["ok"]
    assert [line.split(" ", 1)[1] for line in listing.mlsd_lines(entries, "elr", listing.FACTS)] == ["ok"]


def test_names_are_bytes_raw_bytes_and_unusual_characters_are_listed():
    # r\xe9sum\xe9 in Latin-1, as surrogateescape decoding carries it; a no-break space, a joiner
    names = ["r\udce9sum\udce9.txt", "a\xa0b", "x\u200dy", "\u202eevil"]
    entries = [entry(name) for name in names]
    assert list(listing.nlst_names(entries)) == names
    assert listing.printable("r\udce9") == "r\\xe9"  # logs: escaped
    assert listing.wire_text('257 "/r\udce9\x1b"') == '257 "/r\udce9\\x1b"'  # replies: bytes kept, ESC not


def test_mlsx_facts():
    facts = listing.mlsx_facts(entry("f", mtime=OLD, mode=0o640), "elradfmwMT", listing.FACTS)
    assert (
        facts
        == "type=file;size=12;modify=20190309080500;perm=adfrw;unix.mode=0640;unix.uid=1000;unix.gid=1000;"
    )
    dfacts = listing.mlsx_facts(entry("d", Kind.DIR), "elr", ["type", "perm"])
    assert dfacts == "type=dir;perm=el;"
    assert listing.mlsx_facts(entry("l", Kind.SYMLINK), "elr", ["type"]) == "type=OS.unix=symlink;"


def test_small_listings_are_sorted_large_ones_stream_in_backend_order():
    assert [e.name for e in listing.sorted_if_small([entry("b"), entry("a"), entry("C")])] == ["C", "a", "b"]
    many = [entry(f"n{i:03d}") for i in range(100, 0, -1)]
    streamed = listing.sorted_if_small(iter(many), limit=10)
    assert [e.name for e in streamed] == [e.name for e in many]


def test_sorted_if_small_reads_the_first_batch_at_once():
    pulled = []

    def source():
        for i in range(50):
            pulled.append(i)
            yield entry(f"n{i}")

    stream = listing.sorted_if_small(source(), limit=10)
    assert len(pulled) == 11  # before anything is consumed: errors surface before the 150 reply
    assert len(list(stream)) == 50


@given(st.text())
def test_printable_is_one_line_and_reversible_enough(text):
    out = listing.printable(text)
    assert "\n" not in out and "\r" not in out and "\0" not in out
    if text.isprintable():
        assert out == text


@given(st.text(min_size=1))
def test_every_emitted_line_is_one_line(name):
    for line in listing.list_lines([entry(name)], NOW):
        assert "\n" not in line and "\r" not in line


def test_glob_filter_and_prefix():
    entries = [entry("a.csv"), entry("b.CSV"), entry("c.txt"), entry("[x]")]
    assert listing.has_glob("*.csv") and listing.has_glob("a?") and not listing.has_glob("plain.txt")
    assert [e.name for e in listing.glob_filter(entries, "*.csv")] == ["a.csv"]
    assert [e.name for e in listing.glob_filter(entries, "[ab].*")] == ["a.csv", "b.CSV"]
    assert list(listing.nlst_names(listing.glob_filter(entries, "*.csv"), "sub/")) == ["sub/a.csv"]
    (line,) = listing.list_lines([entry("c.txt")], NOW, prefix="sub/")
    assert line.endswith(" sub/c.txt")


def test_glob_filter_is_not_exponential():
    evil = "*a" * 50 + "b"
    assert list(listing.glob_filter([entry("a" * 200)], evil)) == []
